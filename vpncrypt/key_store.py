"""The key store: where the keys live, apart from the config files, and move forward.

Version 2 keys change every epoch (core/epochs.py), so they cannot sit in a
config file that nobody rewrites: each daemon keeps its keys in one JSON file
in its state directory, ``STATE_DIRECTORY/NAME.keys.json``, mode 0600:

    {"version": 1, "epoch_seconds": 3600,
     "keys": {"CLIENT_ID": {"epoch": 500000, "key": "BASE64", "name": "laptop"}}}

A server's store holds every client's key, a client's store its own. In a
server's store each key also names whose it is (the ``name`` of its
``[[client]]``), so that a key left behind when a client's table was deleted
by hand never goes to the next client given that ID (config.py refuses such
a client); ``name`` is optional, for stores written before it was kept, and
is filled in from the config by the next keygen run or server start. Each
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
import errno
import json
import os
import pwd
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

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
    """``keys``: client ID -> (epoch, 64-byte key of that epoch); ``names``:
    client ID -> the name of the client whose key it is, for the keys that
    have one recorded (a server's store; none in a client's); a name whose
    key is gone is not written."""

    epoch_seconds: int
    keys: dict[int, tuple[int, bytes]] = field(default_factory=dict, repr=False)
    names: dict[int, str] = field(default_factory=dict)

    def fill_names(self, names: dict[int, str]) -> list[int]:
        """Record ``names`` (client ID -> the config's name) for the keys that
        have no name yet; a recorded name is never changed here. Returns the
        client IDs named now, sorted."""
        missing = {client_id: name for client_id, name in names.items()
                   if client_id in self.keys and client_id not in self.names}
        self.names.update(missing)
        return sorted(missing)


class UntrustedFile(Exception):
    """A config or key store someone other than root or this user could have written."""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def open_trusted(path: Path, owners: Iterable[int] = ()) -> tuple[BinaryIO, os.stat_result]:
    """Open ``path`` for reading, refusing it unless root or this user could
    have written it: the file itself (never a symbolic link: ``O_NOFOLLOW``)
    and its directory (which decides what the name points to) owned by root,
    the effective user or one of ``owners`` (the uid a daemon runs as after
    start-up, privileges.py, owns its state directory and key store), the
    directory not writable by group or others. The
    checks are made on what was opened (``fstat`` of the directory, then of the
    file opened inside that very directory), so nobody can swap the file
    between check and use. Returns the open file and its ``stat``.

    Raises UntrustedFile with one line that says how to fix it, or OSError
    (FileNotFoundError ...) as ``open`` would."""
    path = Path(path)
    trusted = {0, os.geteuid(), *owners}
    owner = "root" if os.geteuid() == 0 else _user(os.geteuid())
    directory = path.parent
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        info = os.fstat(directory_fd)
        if info.st_uid not in trusted:
            raise UntrustedFile(f"{path}: its directory {directory} is owned by {_user(info.st_uid)}, who could"
                                f" replace the file; fix it with: chown {owner} {directory}")
        if info.st_mode & 0o022:
            raise UntrustedFile(f"{path}: its directory {directory} is writable by group or others (mode"
                                f" {stat.S_IMODE(info.st_mode):04o}), who could replace the file; fix it with:"
                                f" chmod go-w {directory}")
        try:
            # O_NONBLOCK: a FIFO in its place must not hang the start (it is refused below).
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory_fd)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UntrustedFile(f"{path}: is a symbolic link, which vpncrypt does not follow (whoever can change"
                                    " the link could point it elsewhere); fix it: replace the link by the file it"
                                    f" points to, or name that file ({os.path.realpath(path)})") from None
            raise
    finally:
        os.close(directory_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedFile(f"{path}: not a regular file")
        if info.st_uid not in trusted:
            raise UntrustedFile(f"{path}: owned by {_user(info.st_uid)}, not by {owner}, so it may not be what"
                                f" the operator wrote; fix it with: chown {owner} {path}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info
    except BaseException:
        os.close(fd)
        raise


def store_path(state_directory: Path, name: str) -> Path:
    """Where the daemon named ``name`` (its config's stem) keeps its keys."""
    return Path(state_directory) / f"{name}.keys.json"


def load(path: Path, owners: Iterable[int] = ()) -> KeyTable:
    """Read a store after checking that only its owner can read it and that only
    root, this user or one of ``owners`` could have written it (open_trusted).
    Raises KeyStoreError with one line naming the file (never a key)."""
    try:
        file, info = open_trusted(path, owners)
        with file:
            mode = info.st_mode
            if mode & 0o077:
                raise KeyStoreError(f"{path}: holds secret keys but is readable by group or others "
                                    f"(mode {stat.S_IMODE(mode):04o}); fix it with: chmod 600 {path}")
            data = json.loads(file.read())
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise KeyStoreError(f"{path}: no key store: the state directory {path.parent} does not exist"
                                " (set state_directory in the config to where the key store is)") from None
        others = sorted(p.name for p in path.parent.glob("*.keys.json"))
        hint = f"; the key stores there: {', '.join(others)} (NAME.keys.json goes with NAME.toml)" if others else ""
        raise KeyStoreError(f"{path}: no key store (vpncrypt-keygen writes it; a client's comes from "
                            f"its server's operator){hint}") from None
    except UntrustedFile as error:
        raise KeyStoreError(str(error)) from None
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
        keys, names = {}, {}
        for client_id, entry in data["keys"].items():
            if not isinstance(entry["epoch"], int):
                raise ValueError
            keys[int(client_id)] = (entry["epoch"], decode_key(entry["key"]))
            if "name" in entry:
                if not isinstance(entry["name"], str):
                    raise ValueError
                names[int(client_id)] = entry["name"]
    except KeyStoreError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError):
        raise KeyStoreError(f"{path}: not a valid key store (a field is missing or of the wrong type)") from None
    return KeyTable(epoch_seconds, keys, names)


def _text(table: KeyTable) -> str:
    """The store as ``json.dumps(..., indent=1)`` writes it, byte for byte
    (tests/test_key_store.py holds the two to each other), put together
    line by line: json's indenting encoder is pure Python, a quarter of a
    second for 65,536 keys at every keygen run and epoch's end."""
    entries = []
    for client_id in sorted(table.keys):
        epoch, key = table.keys[client_id]
        epoch_text = epoch if type(epoch) is int else json.dumps(epoch)  # a bool is an int to load()
        name = f',\n   "name": {json.dumps(table.names[client_id])}' if client_id in table.names else ""
        entries.append(f'  "{client_id}": {{\n   "epoch": {epoch_text},\n   "key": "{encode_key(key)}"{name}\n  }}')
    keys = "{\n" + ",\n".join(entries) + "\n }" if entries else "{}"
    return f'{{\n "version": {FORMAT_VERSION},\n "epoch_seconds": {table.epoch_seconds},\n "keys": {keys}\n}}\n'


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
    except files.LockError as error:
        raise KeyStoreError(str(error)) from None


def moved_on(older: tuple[int, bytes], newer: tuple[int, bytes]) -> bool:
    """Whether ``newer`` (epoch, key) is ``older``'s key or a later epoch's of
    its chain (one HKDF step an epoch, core/epochs.py): what a daemon's
    ``advance`` makes of a key, as opposed to a new key (keygen rotate)."""
    return older[0] <= newer[0] and epoch_key(older[1], older[0], newer[0]) == newer[1]


def advance(path: Path, moved: dict[int, tuple[int, bytes]]) -> None:
    """The daemon's keys moved forward: replace each stored key by the newer
    one of the same chain. A key keygen has replaced (a new chain) or removed
    meanwhile stays as keygen left it. Raises KeyStoreError or OSError."""
    with locked(path):
        table = load(path)
        for client_id, newer in moved.items():
            stored = table.keys.get(client_id)
            if stored is not None and moved_on(stored, newer):
                table.keys[client_id] = newer
        write(path, table)


def record_names(path: Path, names: dict[int, str], owners: Iterable[int] = ()) -> tuple[KeyTable, list[int]]:
    """Record, under the store's lock, ``names`` (client ID -> the name its
    ``[[client]]`` has) for the keys that have no name yet (a store written
    before names were kept); never changes a recorded name. Writes only if a
    name was missing. Returns the store as it is now and the client IDs named
    now. Raises KeyStoreError or OSError."""
    with locked(path):
        table = load(path, owners)
        named = table.fill_names(names)
        if named:
            write(path, table)
        return table, named
