"""Writing the state files so that a crash leaves the old one or the new one, never a mix,
and so that two writers (keygen, a running daemon) take turns."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator


class LockTimeout(Exception):
    """Another writer held the lock longer than we waited; the message names the file."""


def replace_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` by ``data``: a temporary file of ``mode`` beside it,
    fsync, rename over, fsync of the directory. Raises OSError."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextlib.contextmanager
def locked(path: Path, wait: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``.lock for a read-change-write of
    ``path``. Raises LockTimeout after ``wait`` seconds, OSError if the lock
    file cannot be made."""
    lock = path.with_name(f"{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"{path}: another vpncrypt is writing it (waited {wait:g} s for {lock})")
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
