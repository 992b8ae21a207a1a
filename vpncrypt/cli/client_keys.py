"""The keys keygen makes: into the server's key store (under its lock, which a
running server's writes take too) and into a key file for the client."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

from .. import key_store
from ..config import DEFAULT_STATE_DIRECTORY, ConfigError, ServerConfig
from ..core.epochs import oldest_needed_epoch
from ..core.keys import new_key


# --- keys ---------------------------------------------------------------------------------


def server_store(server: ServerConfig) -> Path:
    return key_store.store_path(server.state_directory, server.path.stem)


def client_key_file(out: Path, given: str | None) -> Path:
    """Where the client's key file goes: ``--key-out``, else NAME.keys.json beside its config."""
    return Path(given) if given else out.with_name(f"{out.stem}.keys.json")


def fresh_key(epoch_seconds: int) -> tuple[int, bytes]:
    """A new random key, labelled with the oldest epoch an end still needs now."""
    return oldest_needed_epoch(time.time(), epoch_seconds), new_key()


def check_client_key_file(path: Path, server: ServerConfig, replaces: int | None = None) -> None:
    """Refuse a client key file path that is the server's config or key store,
    or an existing file that is not ``replaces``'s own key file (none may
    exist when ``replaces`` is None). Raises ConfigError, changing nothing."""
    resolved = path.resolve()
    if resolved in (server.path.resolve(), server_store(server).resolve()):
        raise ConfigError(f"{path}: is the server's own file; choose another --key-out")
    if not path.exists() and not path.is_symlink():
        return
    if replaces is not None:
        with contextlib.suppress(key_store.KeyStoreError):
            if set(key_store.load(path).keys) == {replaces}:
                return
        raise ConfigError(f"{path}: exists and is not the key file of client ID {replaces};"
                          " remove it first or choose another --key-out")
    raise ConfigError(f"{path}: already exists; remove it first or choose another --key-out")


def write_client_keys(path: Path, epoch_seconds: int, client_id: int, epoch: int, key: bytes) -> None:
    """The client's own key store, to be copied into its state directory
    (``check_client_key_file`` has said the path may be written)."""
    try:
        key_store.write(path, key_store.KeyTable(epoch_seconds, {client_id: (epoch, key)}))
    except OSError as error:
        raise ConfigError(f"{path}: cannot write there: {error.strerror}") from None


@contextlib.contextmanager
def locked_store(server: ServerConfig) -> Iterator[tuple[Path, key_store.KeyTable]]:
    """The server's key store, read under its lock (a running server writes it
    too), with the name of each configured client recorded for its key where
    none is yet (a store from before names were kept), so that whatever keygen
    writes names them all."""
    path = server_store(server)
    try:
        with key_store.locked(path):
            table = key_store.load(path, () if server.account is None else (server.account.uid,))
            table.fill_names({client.client_id: client.name for client in server.clients})
            yield path, table
    except key_store.KeyStoreError as error:
        raise ConfigError(str(error)) from None


def copy_instructions(out: Path, keys: Path, state_directory: str | None) -> str:
    return (f"; on the client, put {out.name} in /etc/vpncrypt and {keys.name} in its state directory"
            f" ({state_directory or DEFAULT_STATE_DIRECTORY}) under the config's name ({out.stem}.keys.json),"
            " both mode 0600, then delete them here")
