"""Writing the state files so that a crash leaves the old one or the new one, never a mix,
and so that two writers (keygen, a running daemon) take turns."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator


class LockError(Exception):
    """The lock could not be had: another writer held it longer than we waited,
    or the lock file cannot be made. The message names the file."""


def temporary_path(path: Path) -> Path:
    """Where ``replace_durably`` writes before renaming over ``path``."""
    return path.with_name(f".{path.name}.tmp")


def lock_path(path: Path) -> Path:
    """The file ``locked`` holds the lock of ``path`` on."""
    return path.with_name(f"{path.name}.lock")


def replace_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` by ``data``: a temporary file of ``mode`` beside it,
    fsync, rename over, fsync of the directory. The new file keeps the old
    one's owner and group: root (keygen) rewriting a key store or config that
    a daemon's own user owns or reads (privileges.py) must not take it away
    from that user. Raises OSError."""
    temporary = temporary_path(path)
    try:
        old = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            os.fchown(fd, old.st_uid, old.st_gid)
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)  # EBUSY onto a mount point, say: leave nothing behind
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextlib.contextmanager
def locked(path: Path, wait: float, holder: str = "vpncrypt") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``.lock for a read-change-write of
    ``path``. Raises LockError after ``wait`` seconds (naming ``holder``, who
    else would hold it) or if the lock file cannot be made."""
    lock = lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise LockError(f"{lock}: cannot make the lock file: {error.strerror}") from None
    try:
        # Root (keygen) making the lock of a file a daemon's user owns: the user's
        # too, or that daemon could not take turns with keygen (privileges.py).
        owner = os.stat(path, follow_symlinks=False)
        if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (os.fstat(fd).st_uid, os.fstat(fd).st_gid):
            os.fchown(fd, owner.st_uid, owner.st_gid)
    except FileNotFoundError:
        pass
    except OSError as error:
        os.close(fd)
        raise LockError(f"{lock}: cannot give the lock file its file's owner: {error.strerror}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockError(f"{path}: another {holder} is changing it (waited {wait:g} s for {lock})")
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
