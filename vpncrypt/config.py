"""Server and client configuration: TOML files, checked strictly, with one-line errors.

Every mistake an operator can make in a file (unknown key, wrong type, bad
address, duplicate ID or address, loose permissions, a client without a key
in the key store or with an ID whose key the store records as another
client's) raises ConfigError with a message naming the file and the field,
never the key. The keys themselves are not in the config files but in
the key store (key_store.py), which the loaders read beside them.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import os
import re
import socket
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config_toml import parse_toml, parse_toml_tables
from .core.inner import Network
from .core.server import ClientEntry
from . import key_store, privileges
from .privileges import Account
from .core.wire import DEFAULT_TIME_WINDOW, MAX_CLIENT_ID, MAX_TIME_WINDOW

DEFAULT_PORT = 51820
DEFAULT_MTU = 1420  # 1500 - 40 (IPv6) - 8 (UDP) - 24 (vpncrypt) - 8 spare
DEFAULT_INTERFACE = "vpncrypt0"
DEFAULT_KEEPALIVE = 25
# Marks the client's own datagrams when the tunnel has the default route, and
# numbers the routing table that route goes into ("vc"; wg-quick uses 51820).
DEFAULT_FWMARK = 0x7663
# Routing tables the system itself uses (ip-rule(8), iproute2's rt_tables); a
# fwmark numbering one of them would put the tunnel's default route into it.
RESERVED_TABLES = {253: "default", 254: "main", 255: "local"}
DEFAULT_RESOLVE_INTERVAL = 60  # seconds between lookups of a server given by name
DEFAULT_STATE_DIRECTORY = "/var/lib/vpncrypt"


def default_state_directory() -> str:
    """Where the restart bounds (restart_state.py) and the key store
    (key_store.py) go unless the config says: systemd's StateDirectory= names
    it in $STATE_DIRECTORY (the first, if several), else DEFAULT_STATE_DIRECTORY."""
    return (os.environ.get("STATE_DIRECTORY") or DEFAULT_STATE_DIRECTORY).split(":")[0]
VERSION_1_KEY = ("keys are no longer in config files (protocol version 2) but in key stores in the state directory:"
                 " on the server, delete the key lines and give each client a new key with: vpncrypt-keygen rotate"
                 " --server-config FILE --name NAME --out NAME.toml (README, 'Setting up')")


class ConfigError(Exception):
    """A configuration problem, worded for the operator."""


@dataclass(frozen=True)
class ServerConfig:
    path: Path
    server_id: int
    port: int
    listen_address: str
    endpoint: str
    tunnel: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    interface: str
    mtu: int
    time_window: int
    client_to_client: bool
    offload: bool
    clients: tuple[ClientEntry, ...]  # as the core takes them
    state_directory: Path = field(default_factory=lambda: Path(default_state_directory()))
    # Client IDs and addresses of removed clients, which keygen gives to no new
    # client until the operator deletes them from [retired]; the server ignores them.
    retired_client_ids: frozenset[int] = frozenset()
    retired_addresses: tuple[Network, ...] = ()
    epoch_seconds: int = 3600  # from the key store: the length of a key epoch
    account: Account | None = None  # ``user``/``group``: who the server runs as once started (privileges.py)


@dataclass(frozen=True)
class ClientConfig:
    path: Path
    name: str
    client_id: int
    key: bytes = field(repr=False)  # from the key store: the key of epoch key_epoch
    key_epoch: int
    epoch_seconds: int
    server: str
    server_id: int
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    routes: tuple[Network, ...]
    interface: str
    mtu: int
    keepalive: float
    time_window: int
    offload: bool
    fwmark: int
    resolve_interval: float
    state_directory: Path = field(default_factory=lambda: Path(default_state_directory()))
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()  # resolvers set while it runs
    dns_search: tuple[str, ...] = ()  # search domains that go with them
    kill_switch: bool = False  # nothing but the tunnel's own datagrams leaves outside it
    account: Account | None = None  # ``user``/``group``: who the client runs as once started (privileges.py)

    @property
    def allowed_sources(self) -> tuple[Network, ...]:
        """What the server may send from: the tunnel networks and the routes."""
        return tuple(a.network for a in self.addresses) + self.routes


def read_toml(path: Path) -> tuple[dict[str, Any], os.stat_result]:
    """Parse a config file after checking that only root or this user could
    have written it (key_store.open_trusted: owner, directory, no symbolic
    link, checked on the open file); returns it with the open file's ``stat``
    for ``check_readers``, which needs the file's ``user``/``group``."""
    text, info = _read_trusted(path)
    return _parsed(path, text, parse_toml), info


def _read_trusted(path: Path) -> tuple[str, os.stat_result]:
    """The text of a config file that only root or this user could have written, and its ``stat``."""
    try:
        file, info = key_store.open_trusted(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except key_store.UntrustedFile as error:
        raise ConfigError(str(error)) from None
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror}") from None
    with file:
        try:
            return file.read().decode(), info
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        except OSError as error:
            raise ConfigError(f"{path}: {error.strerror}") from None


def _parsed(path: Path, text: str, parse: Any) -> Any:
    try:
        return parse(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def check_readers(path: Path, info: os.stat_result, account: Account | None) -> None:
    """Only the owner may read a config (it names what a client may reach and
    where its key store is), and the daemon's group: mode 0640 with the
    group of ``account`` (the config's ``group``), or, for a daemon started
    unprivileged (systemd's ``User=``/``Group=``), the group it runs as. With
    ``account``, that user must be able to read it after start-up (a reload
    reads it again). Raises ConfigError with the fix."""
    daemon_gid = account.gid if account is not None else (os.getegid() if os.geteuid() != 0 else None)
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077 and not (mode & 0o077 == 0o040 and info.st_gid == daemon_gid):
        shared = (f" or, to let group {account.group!r} read it: chgrp {account.group} {path} && chmod 640 {path}"
                  if account is not None else " (or 640 with the daemon's group, set with group in the config)")
        raise ConfigError(f"{path}: is readable by group or others (mode {mode:04o}; a config names what a client"
                          f" may reach and where its key store is); fix it with: chmod 600 {path}{shared}")
    if account is not None and not (privileges.readable_by(info, account)
                                    and privileges.can_enter(path.parent, account)):
        raise ConfigError(f"{path}: user {account.user!r} could not read it once running (a server's reload"
                          f" reads it again); fix it with: chgrp {account.group} {path} && chmod 640 {path}, and let that"
                          f" user enter {path.parent}")


def _account(section: "_Section") -> Account | None:
    """The optional ``user`` and ``group`` keys, looked up on this system."""
    user = section.get("user", str, None)
    group = section.get("group", str, None)
    if user is None:
        if group is not None:
            raise section.fail("group", "goes with user (the user to run as once started)")
        return None
    try:
        return privileges.account(user, group)
    except ValueError as error:
        raise section.fail("user", str(error)) from None


class _Section:
    """Typed access to one TOML table that reports the file and table in errors."""

    def __init__(self, path: Path, where: str, table: Any, allowed: set[str]) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {where} must be a table")
        unknown = set(table) - allowed
        if unknown:
            raise ConfigError(f"{path}: unknown key {min(unknown)!r} in {where}")
        self.path, self.where, self.table = path, where, table

    def directory(self, key: str) -> Path:
        """An absolute directory path (it need not exist yet)."""
        text = self.get(key, str, default_state_directory())
        if not text.startswith("/"):
            raise self.fail(key, f"must be an absolute path, not {text!r}")
        return Path(text)

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.where} {key}: {problem}")

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        if key not in self.table:
            if default is ... and kind is dict:
                raise ConfigError(f"{self.path}: the [{key}] table is missing")
            if default is ...:
                raise self.fail(key, "missing")
            return default
        value = self.table[key]
        # bool is an int in Python, but not in a config file.
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            raise self.fail(key, f"must be {_TYPE_NAMES[kind]}, not {type(value).__name__}")
        return value

    def integer(self, key: str, low: int, high: int, default: Any = ...) -> int:
        value = self.get(key, int, default)
        if not low <= value <= high:
            raise self.fail(key, f"must be from {low} to {high}, not {value}")
        return value

    def string_list(self, key: str, default: Any = ...) -> list[str]:
        values = self.get(key, list, default)
        if not all(isinstance(v, str) for v in values):
            raise self.fail(key, "must be a list of strings")
        return values

    def refuse_key(self) -> None:
        """A version-1 ``key`` line: say where keys are now."""
        if "key" in self.table:
            raise self.fail("key", VERSION_1_KEY)

    def interfaces(self, key: str) -> tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]:
        result = []
        for text in self.string_list(key):
            try:
                result.append(ipaddress.ip_interface(text))
            except ValueError:
                raise self.fail(key, f"{text!r} is not an address with a prefix (like 203.0.113.1/24)") from None
            if "/" not in text:
                # Taken as a /32 or /128, the tunnel's own network would not be
                # routed into the tunnel: its packets would leave in clear.
                raise self.fail(key, f"{text!r} needs the tunnel's prefix (like {text}/24, as keygen writes it)")
        if not result:
            raise self.fail(key, "needs at least one address")
        return tuple(result)

    def networks(self, key: str, default: Any = ..., default_route: bool = False) -> tuple[Network, ...]:
        result = []
        for text in self.string_list(key, default):
            try:
                network = _host_network(text) or ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise self.fail(key, f"{text!r} is not an address or network") from None
            if network.prefixlen == 0 and not default_route:
                raise self.fail(key, f"{text!r}: a default route is only for a client's routes")
            result.append(network)
        return tuple(result)

    def interface_name(self) -> str:
        name = self.get("interface", str, DEFAULT_INTERFACE)
        if not 0 < len(name) < 16 or "/" in name or any(c.isspace() for c in name):
            raise self.fail("interface", f"{name!r} is not a valid interface name (1-15 characters)")
        if "%" in name or ":" in name or name in (".", ".."):
            # Linux takes "%d" as "the next free number" and ":" as an alias: another device than the one named.
            raise self.fail("interface", f"{name!r} is not a valid interface name (no '%', ':', '.' or '..')")
        return name


def _host_network(text: str) -> Network | None:
    """``ip_network(text)`` for a host route (``A.B.C.D/32``, ``V6/128``), three
    times faster for 65,536 clients; None for anything else (and for what
    inet_pton refuses, such as a scope), which ip_network reads."""
    host, _, prefix = text.partition("/")
    try:
        if prefix == "32" and ":" not in host:
            return ipaddress.IPv4Network(int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big"))
        if prefix == "128":
            return ipaddress.IPv6Network(int.from_bytes(socket.inet_pton(socket.AF_INET6, host), "big"))
    except OSError:
        pass
    return None


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}


def parse_endpoint(text: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' into (host, port); ValueError if malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address as [ADDRESS]:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port must be from 1 to 65535")
    return host, port


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def host_name_problem(host: str) -> str | None:
    """Why ``host`` can never resolve, or None for an address literal or a
    well-formed name: labels of 1-63 letters, digits, hyphens (not first or
    last) and underscores, 253 characters at most, a last label that is not
    all digits (RFC 1123 section 2.1, RFC 3696 section 2). A client waits for
    a well-formed name that does not resolve yet, never for a malformed one."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return "not a host name (1 to 253 characters)"
    labels = name.split(".")
    bad = next((label for label in labels if not _LABEL.fullmatch(label)), None)
    if bad is not None:
        return (f"not a host name (the part {bad!r}: letters, digits and '-' only, 1 to 63 of them, not starting"
                " or ending with '-')")
    if labels[-1].isdigit():
        return "neither an IP address nor a host name (a name's last part is not all digits)"
    return None


def _check_overlaps(path: Path, owners: list[tuple[Network, str]]) -> None:
    """Refuse two owners' networks that share an address, in O(n log n): 65,536
    clients load in well under a second. Prefixes either nest or are apart, so
    in order of first address a network overlaps an earlier one exactly when
    it starts at or before the furthest end reached so far."""
    by_bits: dict[int, list[tuple[int, int, int]]] = {32: [], 128: []}  # IPv4, then IPv6
    for index, (network, _) in enumerate(owners):
        start, bits = int(network.network_address), network.max_prefixlen
        by_bits[bits].append((start, start + (1 << (bits - network.prefixlen)) - 1, index))
    for spans in by_bits.values():
        spans.sort()
        furthest_end, furthest = -1, -1
        for start, end, index in spans:
            if start <= furthest_end:
                later, earlier = max(index, furthest), min(index, furthest)  # named as the file orders them
                (network, owner), (other, other_owner) = owners[later], owners[earlier]
                raise ConfigError(f"{path}: address {network} of {owner} overlaps {other} of {other_owner}")
            furthest_end, furthest = end, index  # apart from all before it, so it reaches furthest


def read_keys(path: Path, state_directory: Path, account: Account | None = None) -> key_store.KeyTable:
    """The key store of the daemon configured by ``path``, which ``account``
    (the user it runs as) may own; raises ConfigError."""
    try:
        owners = () if account is None else (account.uid,)
        return key_store.load(key_store.store_path(state_directory, path.stem), owners)
    except key_store.KeyStoreError as error:
        raise ConfigError(str(error)) from None


@contextlib.contextmanager
def collector_paused():
    """Reading 65,536 clients makes a million objects and no cycle: the cyclic
    garbage collector would run hundreds of times over them for nothing (half
    the time of a load), and again over them while they are held (a keygen
    run). Reference counting still frees everything."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_server_config(path: str | os.PathLike, keys: key_store.KeyTable | None = None, *,
                       keyless: str | None = None) -> ServerConfig:
    """The server's config with each client's key from ``keys``, or from the key
    store in its state directory if None. Raises ConfigError. ``keyless`` names
    a client that may have no key yet, for ``vpncrypt-keygen rotate`` to give
    it one: it is loaded with an empty key (never a config to run)."""
    path = Path(path)
    with collector_paused():
        data, info = read_toml(path)
        return _server_config(path, data, info, keys, keyless)


def load_server_file(path: str | os.PathLike, *, keyless: str | None = None
                     ) -> tuple[ServerConfig, str, list[tuple[int, str]] | None]:
    """``load_server_config(path, keyless=keyless)``, with the text it was read
    from and, for a file of keygen's form, where its tables begin
    (config_toml.plain_table_headers; None for any other): what keygen
    edits, from the same single read and parse."""
    path = Path(path)
    with collector_paused():
        text, info = _read_trusted(path)
        data, headers = _parsed(path, text, parse_toml_tables)
        return _server_config(path, data, info, None, keyless), text, headers


def _server_config(path: Path, data: dict[str, Any], info: os.stat_result, keys: key_store.KeyTable | None,
                   keyless: str | None) -> ServerConfig:
    if "server" not in data and isinstance(data.get("client"), dict):
        raise ConfigError(f"{path}: is a client config ([client]); run it with vpncrypt-client")
    top = _Section(path, "file", data, {"server", "client", "retired"})
    server = _Section(path, "[server]", top.get("server", dict), {
        "server_id", "port", "listen_address", "endpoint", "tunnel", "interface", "mtu",
        "time_window", "client_to_client", "offload", "state_directory", "user", "group",
    })
    account = _account(server)
    check_readers(path, info, account)
    endpoint = server.get("endpoint", str, "")
    if endpoint:
        try:
            parse_endpoint(endpoint)
        except ValueError as error:
            raise server.fail("endpoint", str(error)) from None
    listen_address = server.get("listen_address", str, "::")
    try:
        ipaddress.ip_address(listen_address)
    except ValueError:
        raise server.fail("listen_address", f"{listen_address!r} is not an IP address") from None
    tunnel = server.interfaces("tunnel")
    state_directory = server.directory("state_directory")
    key_table = keys if keys is not None else read_keys(path, state_directory, account)
    checks = _ClientChecks(path, tunnel)
    for index, table in enumerate(top.get("client", list, [])):
        checks.table(index, table)
    clients = checks.entries(key_table, keyless, state_directory)
    return ServerConfig(
        path=path,
        server_id=server.integer("server_id", 0, 2**32 - 1),
        port=server.integer("port", 1, 65535, DEFAULT_PORT),
        listen_address=listen_address,
        endpoint=endpoint,
        tunnel=tunnel,
        interface=server.interface_name(),
        mtu=server.integer("mtu", 1280, 65535 - 24, DEFAULT_MTU),
        time_window=server.integer("time_window", 1, MAX_TIME_WINDOW, DEFAULT_TIME_WINDOW),
        client_to_client=server.get("client_to_client", bool, False),
        offload=server.get("offload", bool, True),
        clients=tuple(clients),
        **_retired(path, top),
        state_directory=state_directory,
        epoch_seconds=key_table.epoch_seconds,
        account=account,
    )


class _ClientChecks:
    """What load_server_config checks of the [[client]] tables, fed one table
    at a time in file order: each table's own fields (``table``), IDs and names
    unique, then (``entries``) no two networks sharing an address and a key
    for each client recorded as its own."""

    def __init__(self, path: Path, tunnel: tuple) -> None:
        self.path = path
        self.seen_ids: dict[int, str] = {}
        self.seen_names: dict[str, int] = {}  # name -> client ID
        self.owners: list[tuple[Network, str]] = [(ipaddress.ip_network(i.ip), "the server") for i in tunnel]
        self.found: list[tuple[int, str, tuple[Network, ...]]] = []

    def table(self, index: int, table: Any) -> None:
        """Check the ``index``-th [[client]] table, as parsed."""
        section = _Section(self.path, f"[[client]] #{index + 1}", table, {"name", "client_id", "key", "addresses"})
        name = section.get("name", str)
        section.where = f"[[client]] {name!r}"
        client_id = section.integer("client_id", 0, MAX_CLIENT_ID)
        self._unique(name, client_id)
        addresses = section.networks("addresses")
        if not addresses:
            raise section.fail("addresses", "needs at least one address")
        section.refuse_key()
        self._add(name, client_id, addresses)

    def checked(self, clients: list[ClientEntry]) -> None:
        """Tables whose own fields were checked already, giving these clients:
        only what depends on the other tables is checked again."""
        if self.found or len({c.client_id for c in clients}) != len(clients) or \
                len({c.name for c in clients}) != len(clients):
            for client in clients:  # one at a time, for the error of the first repeated
                self._unique(client.name, client.client_id)
                self._add(client.name, client.client_id, client.addresses)
            return
        self.seen_ids = {c.client_id: c.name for c in clients}
        self.seen_names = {c.name: c.client_id for c in clients}
        self.owners.extend((network, f"client {c.name!r}") for c in clients for network in c.addresses)
        self.found = [(c.client_id, c.name, c.addresses) for c in clients]

    def _unique(self, name: str, client_id: int) -> None:
        if client_id in self.seen_ids:
            raise ConfigError(f"{self.path}: [[client]] {name!r} client_id: {client_id} is already used by client"
                              f" {self.seen_ids[client_id]!r}")
        if name in self.seen_names:
            raise ConfigError(f"{self.path}: [[client]] {name!r} name: is also the name of the client with ID"
                              f" {self.seen_names[name]}")

    def _add(self, name: str, client_id: int, addresses: tuple[Network, ...]) -> None:
        self.seen_ids[client_id] = name
        self.seen_names[name] = client_id
        owner = f"client {name!r}"
        for network in addresses:
            self.owners.append((network, owner))
        self.found.append((client_id, name, addresses))

    def entries(self, key_table: key_store.KeyTable, keyless: str | None, state_directory: Path, *,
                overlaps: bool = True) -> list[ClientEntry]:
        """The clients with their keys from ``key_table``, after the check that
        no two networks share an address unless ``overlaps`` is False. An
        overlap is reported before a missing key: an overlapping entry is often
        a hand-copied one, which has no key yet either, and the overlap is the mistake."""
        if overlaps:
            _check_overlaps(self.path, self.owners)
        path, clients = self.path, []
        for client_id, name, addresses in self.found:
            # A key recorded as another client's (whose [[client]] was deleted by
            # hand) is never this one's: as if it had none.
            owner = key_table.names.get(client_id, name)
            if (client_id not in key_table.keys or owner != name) and name == keyless:
                clients.append(ClientEntry(client_id, b"", 0, addresses, name))
                continue
            where = f"[[client]] {name!r}"
            if client_id not in key_table.keys:
                raise ConfigError(f"{path}: {where} (ID {client_id}) has no key in the key store of {path.name} (in"
                                  f" {state_directory}): give it one with: vpncrypt-keygen rotate --server-config"
                                  f" {path} --name {name} --out {name}.toml")
            if owner != name:
                raise ConfigError(
                    f"{path}: {where} (ID {client_id}): the key store of {path.name} holds the key of client"
                    f" {owner!r} for this ID (its [[client]] deleted by hand?), which is never given to another"
                    f" client; give {name!r} its own key with: vpncrypt-keygen rotate --server-config {path} --name"
                    f" {name} --out {name}.toml, or take it out with: vpncrypt-keygen remove --server-config {path}"
                    f" --name {name} (if it is {owner!r} renamed, give it back that name)")
            key_epoch, key = key_table.keys[client_id]
            clients.append(ClientEntry(client_id, key, key_epoch, addresses, name))
        return clients


def changed_server_config(before: ServerConfig, keys: key_store.KeyTable, *, removed: int | None = None,
                          added: dict[str, Any] | None = None, retired: dict[str, Any] | None = None
                          ) -> ServerConfig:
    """What load_server_config(path, keys) gives for ``before``'s file (loaded
    from it, and so checked) changed in whole tables only: the ``removed``-th
    [[client]] cut out, ``added`` (a [[client]] table as TOML reads it) put
    after the last, [retired] replaced by ``retired`` (as read) if given. Every
    other table is byte for byte the one ``before`` was loaded from (the caller
    vouches for that, server_file.ServerText), and a table's own checks depend
    on its bytes alone: those are made for ``added`` only. Everything that
    depends on more than one table (IDs and names unique, no two networks
    sharing an address, a key in ``keys`` recorded as each client's own, every
    client's key from ``keys``) is checked again over all of them, with the
    same code as a load; without ``added`` only the keys, as a subset of unique
    IDs, names and disjoint networks is one. Raises ConfigError as
    load_server_config would."""
    checks = _ClientChecks(before.path, before.tunnel)
    kept = [client for index, client in enumerate(before.clients) if index != removed]
    if added is None:
        # Only a client cut out, or none: those left are some of the ones
        # ``before`` was loaded with, whose IDs and names were unique and whose
        # networks (the very objects) shared no address with each other or the
        # server's; some of them keep both. Their keys are checked again.
        checks.found = [(client.client_id, client.name, client.addresses) for client in kept]
    else:
        checks.checked(kept)
        checks.table(len(checks.found), added)
    clients = checks.entries(keys, None, before.state_directory, overlaps=added is not None)
    changed: dict[str, Any] = {"clients": tuple(clients), "epoch_seconds": keys.epoch_seconds}
    if retired is not None:
        changed |= _retired(before.path, _Section(before.path, "file", {"retired": retired}, {"retired"}))
    return replace(before, **changed)


def _retired(path: Path, top: _Section) -> dict[str, Any]:
    """The optional [retired] table: ``client_ids`` and ``addresses`` keygen must not hand out again."""
    retired = _Section(path, "[retired]", top.get("retired", dict, {}), {"client_ids", "addresses"})
    ids = retired.get("client_ids", list, [])
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_CLIENT_ID for i in ids):
        raise retired.fail("client_ids", f"must be a list of client IDs (0 to {MAX_CLIENT_ID})")
    return {"retired_client_ids": frozenset(ids), "retired_addresses": retired.networks("addresses", [])}


def _fwmark(client: _Section) -> int:
    """The client's fwmark, which numbers its routing table too: not 0 (no
    mark) and not a table the system reserves (RESERVED_TABLES)."""
    fwmark = client.integer("fwmark", 1, 2**32 - 1, DEFAULT_FWMARK)
    if fwmark in RESERVED_TABLES:
        raise client.fail("fwmark", f"{fwmark} numbers the system's routing table {RESERVED_TABLES[fwmark]!r}"
                                    f" (253, 254 and 255 are reserved; ip-rule(8)), which a full tunnel's default"
                                    f" route would take over; pick another, such as {DEFAULT_FWMARK} (the default)")
    return fwmark


def load_client_config(path: str | os.PathLike, keys: key_store.KeyTable | None = None) -> ClientConfig:
    """The client's config with its key from ``keys``, or from the key store
    in its state directory if None. Raises ConfigError."""
    path = Path(path)
    data, info = read_toml(path)
    if "server" in data and "client" not in data or isinstance(data.get("client"), list):
        raise ConfigError(f"{path}: is a server config ([server]); run it with vpncrypt-server, or give the"
                          " client its own config (vpncrypt-keygen client)")
    top = _Section(path, "file", data, {"client"})
    client = _Section(path, "[client]", top.get("client", dict), {
        "name", "client_id", "key", "server", "server_id", "addresses", "routes", "interface",
        "mtu", "keepalive", "time_window", "offload", "fwmark", "resolve_interval", "state_directory",
        "dns", "dns_search", "kill_switch",
        "user", "group",
    })
    account = _account(client)
    check_readers(path, info, account)
    server = client.get("server", str)
    try:
        host, _ = parse_endpoint(server)
    except ValueError as error:
        raise client.fail("server", str(error)) from None
    problem = host_name_problem(host)
    if problem:
        raise client.fail("server", f"{server!r}: {problem}")
    keepalive = client.get("keepalive", float, float(DEFAULT_KEEPALIVE))
    if not 0 <= keepalive <= 3600:
        raise client.fail("keepalive", f"must be from 0 (off) to 3600 seconds, not {keepalive:g}")
    resolve_interval = client.get("resolve_interval", float, float(DEFAULT_RESOLVE_INTERVAL))
    if not (resolve_interval == 0 or 1 <= resolve_interval <= 86400):
        raise client.fail("resolve_interval", f"must be 0 (never) or from 1 to 86400 seconds, not {resolve_interval:g}")
    client.refuse_key()
    client_id = client.integer("client_id", 0, MAX_CLIENT_ID)
    state_directory = client.directory("state_directory")
    table = keys if keys is not None else read_keys(path, state_directory, account)
    if client_id not in table.keys:
        raise ConfigError(f"{path}: the key store of {path.name} (in {state_directory}) has no key for client ID"
                          f" {client_id}: copy this client's .keys.json from its server's operator there")
    key_epoch, key = table.keys[client_id]
    addresses, routes = client.interfaces("addresses"), client.networks("routes", [], default_route=True)
    dns, dns_search = _dns(client, addresses, routes)
    if dns and account is not None:
        # Putting the resolver back at exit (resolvconf -d, /etc/resolv.conf) takes
        # root, which the client no longer has then (privileges.py).
        raise client.fail("user", "cannot go with dns yet: the resolver is put back at exit as root; leave out"
                                  " user (and group) to run as root, or dns")
    kill_switch = client.get("kill_switch", bool, False)
    if kill_switch and not any(route.prefixlen == 0 for route in routes):
        raise client.fail("kill_switch", "goes with a full tunnel: routes with \"0.0.0.0/0\" or \"::/0\"")
    return ClientConfig(
        path=path,
        name=client.get("name", str, path.stem),
        client_id=client_id,
        key=key,
        key_epoch=key_epoch,
        epoch_seconds=table.epoch_seconds,
        server=server,
        server_id=client.integer("server_id", 0, 2**32 - 1),
        addresses=addresses,
        routes=routes,
        interface=client.interface_name(),
        mtu=client.integer("mtu", 1280, 65535 - 24, DEFAULT_MTU),
        keepalive=keepalive,
        time_window=client.integer("time_window", 1, MAX_TIME_WINDOW, DEFAULT_TIME_WINDOW),
        offload=client.get("offload", bool, True),
        fwmark=_fwmark(client),
        resolve_interval=resolve_interval,
        state_directory=state_directory,
        dns=dns,
        dns_search=dns_search,
        kill_switch=kill_switch,
        account=account,
    )


MAX_DNS = 3  # resolv.conf(5): the C library reads at most three nameserver lines (MAXNS)
DOMAIN_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")  # RFC 1035 section 2.3.1, with "_" as in use


def _dns(client: _Section, addresses: tuple, routes: tuple[Network, ...]) -> tuple[tuple, tuple[str, ...]]:
    """``dns`` (addresses, each reached through the tunnel: a query to any
    other would leave it in clear) and ``dns_search`` (domain names)."""
    servers = []
    for text in client.string_list("dns", []):
        try:
            server = ipaddress.ip_address(text)
        except ValueError:
            raise client.fail("dns", f"{text!r} is not an IP address (dns takes addresses, like 203.0.113.1)"
                              ) from None
        if getattr(server, "scope_id", None):
            raise client.fail("dns", f"{text!r}: a scoped address is not reached through the tunnel")
        tunnel = [a.network for a in addresses] + list(routes)
        if not any(server.version == net.version and server in net for net in tunnel):
            raise client.fail("dns", f"{text} is not reached through the tunnel (in no tunnel network or route):"
                              " its queries would leave in clear")
        servers.append(server)
    if len(servers) > MAX_DNS:
        raise client.fail("dns", f"at most {MAX_DNS} servers (resolv.conf reads no more), not {len(servers)}")
    search = client.string_list("dns_search", [])
    for name in search:
        labels = name.removesuffix(".").split(".")
        if len(name) > 253 or not all(DOMAIN_LABEL.fullmatch(label) for label in labels):
            raise client.fail("dns_search", f"{name!r} is not a domain name (like example.internal)")
    if search and not servers:
        raise client.fail("dns_search", "goes with dns: name the tunnel's DNS servers too")
    return tuple(servers), tuple(search)
