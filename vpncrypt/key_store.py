"""The key store: where the keys live, apart from the config files, and move forward.

Version 2 keys change every epoch (core/epochs.py), so they cannot sit in a
config file that nobody rewrites: each daemon keeps its keys in one JSON file
in its state directory, ``STATE_DIRECTORY/NAME.keys.json``, mode 0600:

    {"version": 1, "epoch_seconds": 3600,
     "keys": {"CLIENT_ID": {"epoch": 500000, "key": "BASE64"}}}

A server's store holds every client's key, a client's store its own. Each
key is the oldest one that end still needs; the daemon replaces it by the
next one as epochs pass (atomically, with fsync), so the file never holds
anything from which an erased epoch's key can be derived. vpncrypt-keygen
writes new keys into it; every write is made under a lock (``flock`` on
``NAME.keys.json.lock``), so keygen and a running daemon never lose each
other's changes.

Backing up: a copy of the store opens everything from its epochs on, so do
not keep old copies; to restore a lost store, give the client a new key
(vpncrypt-keygen rotate), which the old store cannot derive.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import files
from .files import replace_durably
from .core.epochs import MAX_EPOCH_SECONDS, MIN_EPOCH_SECONDS, epoch_key
from .core.keys import decode_key, encode_key

FORMAT_VERSION = 1
LOCK_WAIT = 10.0  # seconds to wait for another writer


class KeyStoreError(Exception):
    """The store is missing, unreadable, unsafe or malformed; the message says what to do."""


@dataclass
class KeyTable:
    """``keys``: client ID -> (epoch, 64-byte key of that epoch)."""

    epoch_seconds: int
    keys: dict[int, tuple[int, bytes]] = field(default_factory=dict, repr=False)


def store_path(state_directory: Path, name: str) -> Path:
    """Where the daemon named ``name`` (its config's stem) keeps its keys."""
    return Path(state_directory) / f"{name}.keys.json"


def load(path: Path) -> KeyTable:
    """Read a store after checking that only its owner can read it. Raises
    KeyStoreError with one line naming the file (never a key)."""
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise KeyStoreError(f"{path}: not a regular file")
            if mode & 0o077:
                raise KeyStoreError(f"{path}: holds secret keys but is readable by group or others "
                                    f"(mode {stat.S_IMODE(mode):04o}); fix it with: chmod 600 {path}")
            data = json.loads(file.read())
    except FileNotFoundError:
        raise KeyStoreError(f"{path}: no key store (vpncrypt-keygen writes it; a client's comes from "
                            "its server's operator)") from None
    except OSError as error:
        raise KeyStoreError(f"{path}: {error.strerror}") from None
    except ValueError:
        raise KeyStoreError(f"{path}: not a valid key store (JSON)") from None
    try:
        if data["version"] != FORMAT_VERSION:
            raise KeyStoreError(f"{path}: key store version {data['version']!r}, this vpncrypt reads {FORMAT_VERSION}")
        epoch_seconds = data["epoch_seconds"]
        if not (isinstance(epoch_seconds, int) and MIN_EPOCH_SECONDS <= epoch_seconds <= MAX_EPOCH_SECONDS):
            raise KeyStoreError(f"{path}: epoch_seconds must be from {MIN_EPOCH_SECONDS} to {MAX_EPOCH_SECONDS}")
        keys = {}
        for client_id, entry in data["keys"].items():
            if not isinstance(entry["epoch"], int):
                raise ValueError
            keys[int(client_id)] = (entry["epoch"], decode_key(entry["key"]))
    except KeyStoreError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError):
        raise KeyStoreError(f"{path}: not a valid key store (a field is missing or of the wrong type)") from None
    return KeyTable(epoch_seconds, keys)


def _text(table: KeyTable) -> str:
    return json.dumps({
        "version": FORMAT_VERSION, "epoch_seconds": table.epoch_seconds,
        "keys": {str(cid): {"epoch": epoch, "key": encode_key(key)} for cid, (epoch, key) in sorted(table.keys.items())},
    }, indent=1) + "\n"


def write(path: Path, table: KeyTable) -> None:
    """Replace the store with ``table`` (mode 0600), durably. Raises OSError."""
    replace_durably(path, _text(table).encode())


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the store's lock (another keygen run or the daemon may be writing).
    Raises KeyStoreError if it is not free within LOCK_WAIT seconds."""
    try:
        with files.locked(path, LOCK_WAIT):
            yield
    except files.LockTimeout as error:
        raise KeyStoreError(str(error)) from None


def advance(path: Path, moved: dict[int, tuple[int, bytes]]) -> None:
    """The daemon's keys moved forward: replace each stored key by the newer
    one of the same chain. A key keygen has replaced (a new chain) or removed
    meanwhile stays as keygen left it. Raises KeyStoreError or OSError."""
    with locked(path):
        table = load(path)
        for client_id, (epoch, key) in moved.items():
            stored = table.keys.get(client_id)
            if stored is not None and stored[0] <= epoch and epoch_key(stored[1], stored[0], epoch) == key:
                table.keys[client_id] = (epoch, key)
        write(path, table)
