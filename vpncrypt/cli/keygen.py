"""vpncrypt-keygen: write a server config, and add, remove, re-key and list its clients.

Every change to an existing server.toml is made under a lock (a ``flock`` on
``server.toml.lock`` beside it), so two runs at once cannot lose a client,
and leaves every other line as the operator wrote it: new text is appended,
a removed client's lines are cut out (with the comment lines just above
them), and a re-keyed client's key is replaced in place (tomlkit, which
round-trips comments and layout). The result is checked as the server
would check it before it replaces the file, atomically, keeping its mode
and owner. IDs and addresses of removed clients go into ``[retired]`` and
are handed to no new client until the operator deletes them there.

Keys are not in the config files (protocol version 2): a new or re-keyed
client's key goes into the server's key store (key_store.py, under its own
lock) and into a key file for the client, ``NAME.keys.json`` beside its
config, which the operator copies into the client's state directory.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import ipaddress
import os
import secrets
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Iterator

import tomlkit

from .. import control, key_store
from ..config import (
    DEFAULT_INTERFACE, DEFAULT_KEEPALIVE, DEFAULT_MTU, DEFAULT_STATE_DIRECTORY, ConfigError, ServerConfig,
    default_state_directory,
    load_server_config, parse_endpoint,
)
from ..core.epochs import DEFAULT_EPOCH_SECONDS, MAX_EPOCH_SECONDS, MIN_EPOCH_SECONDS, oldest_needed_epoch
from ..core.keys import new_key
from ..core.server import ClientEntry
from ..core.wire import MAX_CLIENT_ID
from .common import RUNTIME_ERROR, add_version, error_exit, print_all

PROGRAM = "vpncrypt-keygen"
MAX_NAME = 64
LOCK_WAIT = 10.0  # seconds to wait for another keygen run to finish with the file


class ReloadError(Exception):
    """The file was written, but the running server did not take it; ``status`` is the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# --- files --------------------------------------------------------------------------------


def write_private(path: Path, text: str, *, mode: int = 0o600, replace: bool = False,
                  owner: tuple[int, int] | None = None) -> None:
    """Write atomically (temporary file, fsync, rename, fsync of the directory)
    with ``mode`` and ``owner`` (uid, gid); never clobber unless asked."""
    if path.exists() and not replace:
        raise ConfigError(f"{path}: already exists; remove it first or choose another --out")
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as error:
        raise ConfigError(f"{path}: cannot write there: {error.strerror}") from None
    try:
        os.fchmod(fd, mode)
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            with contextlib.suppress(PermissionError):  # only root may give a file away
                os.fchown(fd, *owner)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself made durable
        directory_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``.lock for a read-change-write of ``path``."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise ConfigError(f"{lock_path}: cannot make the lock file: {error.strerror}") from None
    try:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > deadline:
                    raise ConfigError(f"{path}: another vpncrypt-keygen is changing it (waited"
                                      f" {LOCK_WAIT:g} s for {lock_path})") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def rewrite_server_file(path: Path, text: str, before: ServerConfig, clients: list[ClientEntry],
                        keys: key_store.KeyTable) -> ServerConfig:
    """Check ``text`` as the server would with ``keys`` as its key store, and
    that it holds ``before``'s settings with ``clients`` as its clients, then
    put it in place of ``path`` keeping its mode and owner. Returns the config
    it holds."""
    if not text.endswith("\n"):
        text += "\n"
    info = path.stat()
    directory = path.parent if str(path.parent) else Path(".")
    fd, probe = tempfile.mkstemp(prefix=f".{path.name}.check.", suffix=".toml", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        try:
            config = load_server_config(probe, keys)
        except ConfigError as error:  # a bug here, never the operator's: say so, change nothing
            raise ConfigError(f"{path}: the change would not load ({error}); left the file as it was") from None
    finally:
        Path(probe).unlink(missing_ok=True)
    unchanged = ("server_id", "port", "listen_address", "endpoint", "tunnel", "interface", "mtu", "time_window",
                 "client_to_client", "offload")
    if list(config.clients) != clients or any(getattr(config, k) != getattr(before, k) for k in unchanged):
        raise ConfigError(f"{path}: keygen could not make this change without touching other lines;"
                          " left the file as it was (edit it by hand)")
    write_private(path, text, mode=info.st_mode & 0o777, replace=True, owner=(info.st_uid, info.st_gid))
    return config


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror}") from None


# --- values -------------------------------------------------------------------------------


def check_name(name: str) -> str:
    """A client name the server will take and a log line can show: text, no
    control or invisible characters, 1 to 64 of them."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError("--name is not valid UTF-8 text (the shell passed other bytes)") from None
    if not name or len(name) > MAX_NAME:
        raise ConfigError(f"--name must be 1 to {MAX_NAME} characters")
    if name != name.strip():
        raise ConfigError(f"--name {name!r}: no spaces at the start or end")
    odd = next((c for c in name if unicodedata.category(c)[0] in "CZ" and c != " "), None)
    if odd is not None:
        raise ConfigError(f"--name {name!r}: no control, invisible or separator characters"
                          f" (U+{ord(odd):04X} {unicodedata.name(odd, '')})".replace(" )", ")"))
    return name


def toml_value(value) -> str:
    """A value as TOML text (tomlkit escapes what needs escaping)."""
    return tomlkit.item(value).as_string()


def free_address(network, taken: list) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The lowest host address of ``network`` inside none of ``taken``: one pass
    over the taken ranges in order, so 65,536 clients cost milliseconds."""
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.num_addresses > 2:  # hosts(): not the network's own address (nor IPv4's broadcast)
        first += 1
        last -= network.version == 4
    spans = sorted((int(used.network_address), int(used.broadcast_address)) for used in taken
                   if used.version == network.version)
    candidate = first
    for start, end in spans:
        if start > candidate:
            break
        candidate = max(candidate, end + 1)
    if candidate > last:
        raise ConfigError(f"no free address left in {network}")
    return (ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address)(candidate)


def taken_networks(server: ServerConfig) -> list:
    """Every address a new client may not have: the server's, the clients', the retired ones."""
    taken = [ipaddress.ip_network(i.ip) for i in server.tunnel]
    for client in server.clients:
        taken.extend(client.addresses)
    taken.extend(server.retired_addresses)
    return taken


def choose_client_id(server: ServerConfig, path: Path, wanted: int | None) -> int:
    """``wanted`` if it is free, else one at random among the free ones, so that
    IDs say nothing about when or in which order clients came."""
    used = {c.client_id: c.name for c in server.clients}
    if wanted is not None:
        if not 0 <= wanted <= MAX_CLIENT_ID:
            raise ConfigError(f"--client-id must be from 0 to {MAX_CLIENT_ID}")
        if wanted in used:
            raise ConfigError(f"--client-id: {wanted} is used by client {used[wanted]!r}")
        if wanted in server.retired_client_ids:
            raise ConfigError(f"--client-id: {wanted} is retired (a removed client had it);"
                              f" delete it from [retired] in {path} to use it again")
        return wanted
    free = [i for i in range(1, MAX_CLIENT_ID + 1) if i not in used and i not in server.retired_client_ids]
    if not free:
        raise ConfigError(f"{path}: all client IDs are used or retired")
    return secrets.choice(free)


def client_file_text(server: ServerConfig, name: str, client_id: int, addresses, state_directory: str | None) -> str:
    lines = [
        "# vpncrypt client configuration. Its key is not here but in its key store,",
        f"# {state_directory or DEFAULT_STATE_DIRECTORY}/NAME.keys.json (NAME: this file's name without .toml).",
        "[client]",
        *([f"state_directory = {toml_value(state_directory)}"] if state_directory else []),
        f"name = {toml_value(name)}",
        f"client_id = {client_id}",
        f"server = {toml_value(server.endpoint)}",
        f"server_id = {server.server_id}",
        f"addresses = {toml_value([str(a) for a in addresses])}",
        "routes = []  # more networks to reach through the tunnel",
        f"interface = {toml_value(DEFAULT_INTERFACE)}",
        f"mtu = {server.mtu}",
        f"keepalive = {DEFAULT_KEEPALIVE}",
        f"time_window = {server.time_window}",
    ]
    return "\n".join(lines) + "\n"


def client_addresses(server: ServerConfig, networks) -> list:
    """A client's own tunnel addresses (with the tunnel's prefix) from its server entry:
    the host addresses inside a tunnel network; networks behind it are not its own."""
    result = []
    for interface in server.tunnel:
        for network in networks:
            if network.version == interface.version and network.num_addresses == 1 and \
                    network.network_address in interface.network:
                result.append(ipaddress.ip_interface(f"{network.network_address}/{interface.network.prefixlen}"))
    return result


# --- where each [[client]] is in the text ---------------------------------------------------


def _comment_run_start(text: str, end: int) -> int:
    """Where the comment lines that end right at ``end`` (a line start) begin."""
    start = end
    while start > 0:
        line_start = text.rfind("\n", 0, start - 1) + 1
        if not text[line_start:start].lstrip().startswith("#"):
            break
        start = line_start
    return start


def client_spans(text: str) -> list[tuple[int, int, int]]:
    """For each [[client]] table, in order: (where its lines start, counting
    the comment lines just above its header; where its header starts; where
    its lines end, before the comment lines that lead into the next table).
    tomlkit finds the tables (it knows strings and arrays that span lines);
    each table's text is found again in ``text``, which it reproduces exactly."""
    document = tomlkit.parse(text)
    tables = document.get("client") or []
    spans: list[tuple[int, int, int]] = []
    position = 0
    for table in tables:
        body = table.as_string()
        body_start = text.find(body, position)
        if body_start < 0:
            raise ConfigError("cannot find a [[client]] table in the file again; edit it by hand")
        header_start = text.rfind("\n", 0, body_start - 1) + 1
        if not text[header_start:body_start].lstrip().startswith("[["):
            raise ConfigError("a [[client]] table is laid out in a way keygen does not edit; edit it by hand")
        end = body_start + len(body)
        # Comment lines at the end of its text lead into what follows (the
        # next table's, or the file's closing words): they stay.
        spans.append((_comment_run_start(text, header_start), header_start, _comment_run_start(text, end)))
        position = end
    return spans


def client_index(server: ServerConfig, name: str, path: Path) -> int:
    for index, client in enumerate(server.clients):
        if client.name == name:
            return index
    names = ", ".join(repr(c.name) for c in server.clients) or "none"
    raise ConfigError(f"{path}: no client named {name!r} (clients: {names})")


# --- reload ---------------------------------------------------------------------------------


def reload_server(server_path: Path) -> str:
    """Ask the server running from ``server_path`` to reload; raises ReloadError."""
    name = server_path.stem
    try:
        answer = control.request(control.socket_path(name), "reload")
    except control.ControlError as error:
        raise ReloadError(f"cannot reload: {error}; the change takes effect when it starts", RUNTIME_ERROR) from None
    if not answer.get("ok"):
        raise ReloadError(f"the running server refused the reload: {answer.get('error')}",
                          answer.get("status", RUNTIME_ERROR))
    return f"server {name!r} reloaded: {answer.get('message')}"


def finish(args: argparse.Namespace, message: str) -> int:
    print(message)
    if getattr(args, "reload", False):
        try:
            print(reload_server(Path(args.server_config)))
        except ReloadError as error:
            return error_exit(PROGRAM, error, error.status)
    return 0


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
    """The server's key store, read under its lock (a running server writes it too)."""
    path = server_store(server)
    try:
        with key_store.locked(path):
            yield path, key_store.load(path)
    except key_store.KeyStoreError as error:
        raise ConfigError(str(error)) from None


def copy_instructions(out: Path, keys: Path, state_directory: str | None) -> str:
    return (f"; on the client, put {out.name} in /etc/vpncrypt and {keys.name} in its state directory"
            f" ({state_directory or DEFAULT_STATE_DIRECTORY}) under the config's name ({out.stem}.keys.json),"
            " both mode 0600, then delete them here")


# --- commands -------------------------------------------------------------------------------


def make_server(args: argparse.Namespace) -> int:
    try:
        _, port = parse_endpoint(args.endpoint)
    except ValueError as error:
        raise ConfigError(f"--endpoint: {error}") from None
    tunnel = []
    for text in args.tunnel:
        try:
            interface = ipaddress.ip_interface(text)
        except ValueError:
            raise ConfigError(f"--tunnel: {text!r} is not an address with a prefix (like 203.0.113.1/24)") from None
        if interface.network.prefixlen == interface.max_prefixlen:
            raise ConfigError(f"--tunnel: {text!r} leaves no room for clients; give a prefix like /24")
        network = interface.network
        if network.num_addresses > 2 and (interface.ip == network.network_address or (
                network.version == 4 and interface.ip == network.broadcast_address)):
            which = "network" if interface.ip == network.network_address else "broadcast"
            raise ConfigError(f"--tunnel: {text!r} is the {which} address of {interface.network}, not one a host"
                              f" can have; give the server's own, like {next(interface.network.hosts())}/"
                              f"{interface.network.prefixlen}")
        tunnel.append(interface)
    server_id = args.server_id if args.server_id is not None else secrets.randbits(32)
    if not 0 <= server_id < 2**32:
        raise ConfigError("--server-id must be from 0 to 4294967295")
    if not MIN_EPOCH_SECONDS <= args.epoch <= MAX_EPOCH_SECONDS:
        raise ConfigError(f"--epoch must be from {MIN_EPOCH_SECONDS} to {MAX_EPOCH_SECONDS} seconds")
    state_directory = Path(args.state_directory)
    if not state_directory.is_absolute():
        raise ConfigError(f"--state-directory: must be an absolute path, not {args.state_directory!r}")
    store = key_store.store_path(state_directory, Path(args.out).stem)
    if store.exists():
        raise ConfigError(f"{store}: a key store for a server of this name exists already; remove it first")
    text = (
        "# vpncrypt server configuration. The clients' keys are not here but in the key store,\n"
        f"# {store}.\n"
        "[server]\n"
        f"server_id = {server_id}\n"
        f"port = {port}\n"
        f"endpoint = {toml_value(args.endpoint)}  # what clients are told to send to\n"
        f"tunnel = {toml_value([str(t) for t in tunnel])}\n"
        f"interface = {toml_value(DEFAULT_INTERFACE)}\n"
        f"mtu = {DEFAULT_MTU}\n"
        "time_window = 128\n"
        "client_to_client = false\n"
        f"state_directory = {toml_value(str(state_directory))}  # restart state and the key store\n"
    )
    write_private(Path(args.out), text)
    try:
        state_directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_store.write(store, key_store.KeyTable(args.epoch))
    except OSError as error:
        Path(args.out).unlink(missing_ok=True)
        raise ConfigError(f"{store}: cannot write the key store: {error.strerror}") from None
    print(f"wrote {args.out}: server ID {server_id}, port {port}, tunnel {', '.join(map(str, tunnel))};"
          f" key store {store} (epochs of {args.epoch} s)")
    return 0


def make_client(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    server_path = Path(args.server_config)
    out = Path(args.out)
    keys_out = client_key_file(out, args.key_out)
    with locked(server_path):
        server = load_server_config(server_path)
        if not server.endpoint:
            raise ConfigError(f"{server_path}: [server] endpoint is not set; clients need it")
        check_client_key_file(keys_out, server)
        if out.resolve() in (server_path.resolve(), server_store(server).resolve()):
            raise ConfigError(f"{out}: is the server's own file; choose another --out")
        if out.exists():
            raise ConfigError(f"{out}: already exists; remove it first or choose another --out")
        if any(c.name == name for c in server.clients):
            raise ConfigError(f"{server_path}: a client named {name!r} exists already")
        client_id = choose_client_id(server, server_path, args.client_id)
        taken = taken_networks(server)
        requested = {}
        for text in args.address or []:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                raise ConfigError(f"--address: {text!r} is not an IP address") from None
            requested[address.version] = address
        chosen = []
        for interface in server.tunnel:
            address = requested.pop(interface.version, None) or free_address(interface.network, taken)
            if address not in interface.network:
                raise ConfigError(f"--address: {address} is not inside the tunnel network {interface.network}")
            if any(address in network for network in server.retired_addresses):
                raise ConfigError(f"--address: {address} is retired (a removed client had it);"
                                  f" delete it from [retired] in {server_path} to use it again")
            if any(address in network for network in taken):
                raise ConfigError(f"--address: {address} is already used")
            chosen.append(ipaddress.ip_interface(f"{address}/{interface.network.prefixlen}"))
        if requested:
            raise ConfigError(f"--address: the server has no IPv{next(iter(requested))} tunnel network")
        hosts = [str(ipaddress.ip_network(i.ip)) for i in chosen]
        block = (
            "[[client]]\n"
            f"name = {toml_value(name)}\n"
            f"client_id = {client_id}\n"
            f"addresses = {toml_value(hosts)}\n"
        )
        text = read_text(server_path)
        spans = client_spans(text)
        # After the last client (keeping [retired] and anything else below), else at the end.
        at = spans[-1][2] if spans else len(text)
        before = text[:at]
        if before and not before.endswith("\n"):
            before += "\n"
        if before and not before.endswith("\n\n"):
            before += "\n"
        after = text[at:]
        new_text = before + block + ("\n" + after if after.strip() and not after.startswith("\n") else after)
        with locked_store(server) as (store, table):
            epoch, key = fresh_key(table.epoch_seconds)
            table.keys[client_id] = (epoch, key)
            entry = ClientEntry(client_id, key, epoch, tuple(ipaddress.ip_network(h) for h in hosts), name)
            # The client's files first: if they cannot be written, the server's are untouched.
            write_private(out, client_file_text(server, name, client_id, chosen, args.client_state_directory))
            wrote_keys = False
            try:
                write_client_keys(keys_out, table.epoch_seconds, client_id, epoch, key)
                wrote_keys = True
                key_store.write(store, table)  # an unused key, should the next step fail
                rewrite_server_file(server_path, new_text, server, [*server.clients, entry], table)
            except BaseException:
                out.unlink(missing_ok=True)  # both were checked not to exist: ours to take back
                if wrote_keys:
                    keys_out.unlink(missing_ok=True)
                raise
    return finish(args, f"wrote {out} and {keys_out}: client {name!r}, ID {client_id}, addresses"
                        f" {', '.join(map(str, chosen))}; added it to {server_path}"
                        + copy_instructions(out, keys_out, args.client_state_directory))


def remove_client(args: argparse.Namespace) -> int:
    server_path = Path(args.server_config)
    with locked(server_path):
        server = load_server_config(server_path)
        index = client_index(server, args.name, server_path)
        removed = server.clients[index]
        text = read_text(server_path)
        start, _, end = client_spans(text)[index]
        new_text = text[:start] + text[end:]
        if not args.reuse:
            document = tomlkit.parse(new_text)
            if "retired" not in document:
                retired = tomlkit.table()
                retired.add(tomlkit.comment("Removed clients' IDs and addresses: keygen gives them to no new"
                                            " client. Delete entries to allow that."))
                retired.add("client_ids", tomlkit.array())
                retired.add("addresses", tomlkit.array())
                document.add("retired", retired)
            retired = document["retired"]
            for key, values in (("client_ids", [removed.client_id]),
                                ("addresses", [str(n) for n in removed.addresses])):
                if key not in retired:
                    retired.add(key, tomlkit.array())
                for value in values:
                    if value not in retired[key]:
                        retired[key].append(value)
            new_text = tomlkit.dumps(document)
        with locked_store(server) as (store, table):
            table.keys.pop(removed.client_id, None)
            rewrite_server_file(server_path, new_text, server, [c for c in server.clients if c is not removed], table)
            key_store.write(store, table)
    kept = "" if args.reuse else f"; its ID and addresses are retired (see [retired] in {server_path})"
    return finish(args, f"removed client {removed.name!r} (ID {removed.client_id}) from {server_path}{kept}")


def rotate_client(args: argparse.Namespace) -> int:
    """A new key for a client, same ID and addresses: into the server's key store
    and a new key file for the client. The client's config holds no key, so
    ``--out`` is only written if it does not exist yet (else it is checked to
    be this client's)."""
    server_path = Path(args.server_config)
    out = Path(args.out)
    keys_out = client_key_file(out, args.key_out)
    with locked(server_path):
        server = load_server_config(server_path)
        entry = server.clients[client_index(server, args.name, server_path)]
        check_client_key_file(keys_out, server, replaces=entry.client_id)
        if out.resolve() in (server_path.resolve(), server_store(server).resolve()):
            raise ConfigError(f"{out}: is the server's own file; choose another --out")
        if out.exists():
            existing = tomlkit.parse(read_text(out)).get("client", {})
            if existing.get("client_id") != entry.client_id or existing.get("server_id") != server.server_id:
                raise ConfigError(f"{out}: is not the config of client {entry.name!r} (ID {entry.client_id}) of"
                                  " this server; choose another --out")
            wrote_config = False
        else:
            if not server.endpoint:
                raise ConfigError(f"{server_path}: [server] endpoint is not set; clients need it")
            write_private(out, client_file_text(server, entry.name, entry.client_id,
                                                client_addresses(server, entry.addresses), args.client_state_directory))
            wrote_config = True
        with locked_store(server) as (store, table):
            epoch, key = fresh_key(table.epoch_seconds)
            table.keys[entry.client_id] = (epoch, key)
            try:
                key_store.write(store, table)
            except BaseException:
                if wrote_config:
                    out.unlink(missing_ok=True)
                raise
            # The server has the new key; the client's old key file (checked to
            # be this client's) is worthless now and is replaced.
            write_client_keys(keys_out, table.epoch_seconds, entry.client_id, epoch, key)
    return finish(args, f"new key for client {entry.name!r} (ID {entry.client_id}) in {server_store(server)} and"
                        f" {keys_out}; its old key stops working when the server reloads"
                        + copy_instructions(out, keys_out, args.client_state_directory))


def list_clients(args: argparse.Namespace) -> int:
    server_path = Path(args.server_config)
    server = load_server_config(server_path)
    rows = [("NAME", "ID", "ADDRESSES")]
    rows += [(c.name, str(c.client_id), ", ".join(map(str, c.addresses))) for c in server.clients]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]}" for row in rows]
    if server.retired_client_ids or server.retired_addresses:
        lines.append(f"retired (not handed out again): IDs"
                     f" {', '.join(map(str, sorted(server.retired_client_ids))) or '-'};"
                     f" addresses {', '.join(map(str, server.retired_addresses)) or '-'}")
    print_all("\n".join(lines))  # keygen list | head is no error
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n")[0])
    add_version(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="write a new server config with no clients")
    server.add_argument("--endpoint", required=True, metavar="HOST:PORT",
                        help="where clients reach the server; the server listens on PORT")
    server.add_argument("--tunnel", required=True, action="append", metavar="CIDR",
                        help="the server's tunnel address and prefix, e.g. 203.0.113.1/24 (repeat for IPv6)")
    server.add_argument("--out", required=True, metavar="FILE")
    server.add_argument("--server-id", type=int, metavar="N", help="default: random")
    server.add_argument("--state-directory", default=default_state_directory(), metavar="DIR",
                        help="where the server keeps its key store and restart state"
                             f" (default: $STATE_DIRECTORY, else {DEFAULT_STATE_DIRECTORY})")
    server.add_argument("--epoch", type=int, default=DEFAULT_EPOCH_SECONDS, metavar="SECONDS",
                        help=f"how often keys move forward ({MIN_EPOCH_SECONDS} to {MAX_EPOCH_SECONDS};"
                             f" default {DEFAULT_EPOCH_SECONDS})")

    def changes_server(command: argparse.ArgumentParser) -> None:
        command.add_argument("--server-config", required=True, metavar="FILE")
        command.add_argument("--name", required=True)
        command.add_argument("--reload", action="store_true",
                             help="then make the server running from that file take the change (vpncrypt reload)")

    client = commands.add_parser("client", help="add a client to a server config and write its config")
    changes_server(client)
    client.add_argument("--out", required=True, metavar="FILE")
    client.add_argument("--address", action="append", metavar="IP",
                        help="tunnel address to give the client (default: the next free one)")
    client.add_argument("--client-id", type=int, metavar="N", help="default: a free one at random")
    client.add_argument("--key-out", metavar="FILE", help="the client's key file (default: NAME.keys.json beside --out)")
    client.add_argument("--client-state-directory", metavar="DIR",
                        help=f"write state_directory = DIR into the client's config (default: {DEFAULT_STATE_DIRECTORY})")
    remove = commands.add_parser("remove", help="remove a client from a server config")
    changes_server(remove)
    remove.add_argument("--reuse", action="store_true",
                        help="do not retire its ID and addresses: let new clients have them")
    rotate = commands.add_parser("rotate", help="give a client a new key (same ID and addresses)")
    changes_server(rotate)
    rotate.add_argument("--out", required=True, metavar="FILE",
                        help="the client's config: checked if it exists, else written anew")
    rotate.add_argument("--key-out", metavar="FILE", help="the client's new key file (default: beside --out)")
    rotate.add_argument("--client-state-directory", metavar="DIR", help="as for client, if --out is written anew")
    listing = commands.add_parser("list", help="list a server config's clients (never their keys)")
    listing.add_argument("--server-config", required=True, metavar="FILE")
    args = parser.parse_args(argv)
    action = {"server": make_server, "client": make_client, "remove": remove_client, "rotate": rotate_client,
              "list": list_clients}[args.command]
    try:
        return action(args)
    except ConfigError as error:
        return error_exit(PROGRAM, error)


if __name__ == "__main__":
    raise SystemExit(main())
