"""How keygen edits a server's files: server.toml in place, keeping every other line
as the operator wrote it (the tables are found line by line in a file of
keygen's form, else by tomlkit; the text is cut and joined around them),
under a lock, checked as the server would load it before it replaces the
file atomically, keeping its mode and owner; and the values it writes there
(names, client IDs, addresses).

The check: a file of keygen's form changed in whole tables (ServerText) is
checked on what changed, config.changed_server_config; any other is loaded
whole from a copy, as the server would. At 65,536 clients the first takes
0.2 s, the second 1 s (bench/scale_bench.py --config-only)."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import secrets
import socket
import tempfile
import tomllib
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import tomlkit

from .. import files, key_store
from ..config_toml import plain_table_headers
from ..config import (
    DEFAULT_INTERFACE, DEFAULT_KEEPALIVE, DEFAULT_STATE_DIRECTORY, ConfigError, ServerConfig, changed_server_config,
    load_server_config, parse_endpoint,
)
from ..core.inner import Network
from ..core.server import ClientEntry
from ..core.wire import MAX_CLIENT_ID

MAX_NAME = 64
LOCK_WAIT = 10.0  # seconds to wait for another keygen run to finish with the file


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
    """Hold an exclusive lock on ``path``.lock for a read-change-write of ``path``
    (files.locked); raises ConfigError if another keygen run holds it too long."""
    try:
        with files.locked(path, LOCK_WAIT, holder="vpncrypt-keygen"):
            yield
    except files.LockError as error:
        raise ConfigError(str(error)) from None


@dataclass(frozen=True)
class TableChanges:
    """How a file of keygen's form was changed, in whole tables: the
    ``removed``-th [[client]] cut out, ``added`` (a [[client]] table as TOML
    reads it) put after the last, [retired] replaced by ``retired`` (as read)."""

    removed: int | None = None
    added: dict | None = None
    retired: dict | None = None


@dataclass(frozen=True)
class ServerText:
    """server.toml's text as keygen edits it. ``headers``: where the tables of
    ``text`` begin, when it is in keygen's form (config_toml.plain_table_headers),
    else None. ``changes``: when the file read was in that form, what the edits
    so far did to it in whole tables, each edit having made sure that every
    other table is byte for byte as read (rewrite_server_file then checks only
    what changed); None when that is not known (the whole text is checked)."""

    text: str
    headers: list[tuple[int, str]] | None
    changes: TableChanges | None

    @classmethod
    def read(cls, text: str, headers: list[tuple[int, str]] | None) -> "ServerText":
        """The text a config was loaded from (config.load_server_file)."""
        return cls(text, headers, TableChanges() if headers is not None else None)

    def add_client(self, block: str) -> "ServerText":
        """``block``, a [[client]] table, after the last client (keeping
        [retired] and anything else below), else at the end."""
        text, headers = self.text, self.headers
        if headers is not None:  # only the last client's span is needed: from its header on
            headers = headers[max((i for i, (_, name) in enumerate(headers) if name == "client"), default=0):]
        spans = client_spans(text, headers)
        at = spans[-1][2] if spans else len(text)
        before = text[:at]
        if before and not before.endswith("\n"):
            before += "\n"
        if before and not before.endswith("\n\n"):
            before += "\n"
        after = text[at:]
        new_text = before + block + ("\n" + after if after.strip() and not after.startswith("\n") else after)
        # ``at`` is a line start with nothing but comment lines from it to the
        # next table's header (client_spans), or the end: a whole table that
        # reads alone as one [[client]] goes in there without changing another.
        changes = self.changes
        table = _lone_table(block, "client")
        if changes is None or changes != TableChanges() or table is None or len(table) != 1:
            changes = None
        else:
            changes = replace(changes, added=table[0])
        return ServerText(new_text, None, changes)

    def remove_client(self, index: int) -> "ServerText":
        """Without the ``index``-th [[client]] and the comment lines just above it."""
        text, headers = self.text, self.headers
        if headers is None:
            start, _, end = client_spans(text, None)[index]
        else:  # only its span is needed: from its header to the next
            at = [position for position, (_, name) in enumerate(headers) if name == "client"][index]
            start, _, end = client_spans(text, headers[at:at + 2])[0]
            # Whole lines, all of them that client's table's or comments: the
            # tables after it only move up by as many lines.
            gone, cut = headers[at][0], text.count("\n", start, end)
            headers = [(line if line < gone else line - cut, name) for line, name in headers if line != gone]
        new_text = text[:start] + text[end:]
        if "[[client]]" not in new_text:
            headers = None  # as plain_table_headers says of a file without clients
        changes = self.changes
        if changes is None or changes != TableChanges():
            changes = None
        else:
            changes = replace(changes, removed=index)
        return ServerText(new_text, headers, changes)

    def retire(self, clients: list[ClientEntry]) -> "ServerText":
        """With ``clients``' IDs and addresses added to [retired] (made at the
        end if missing). In a file of keygen's form only the [retired] table
        goes through tomlkit, which keeps its comments and layout."""
        text, headers = self.text, self.headers
        if headers is None:
            document = tomlkit.parse(text)
            for client in clients:
                _retire(document, client)
            return ServerText(tomlkit.dumps(document), None, None)
        starts = _line_starts(text)
        for position, (line, name) in enumerate(headers):
            if name == "retired":
                end = starts[headers[position + 1][0]] if position + 1 < len(headers) else len(text)
                table = tomlkit.parse(text[starts[line]:end])
                new_text = text[:starts[line]]
                break
        else:
            table, end = tomlkit.document(), len(text)
            new_text = text.rstrip("\n") + "\n\n"
        for client in clients:
            _retire(table, client)
        retired = tomlkit.dumps(table)
        # The [retired] table's lines (from its header to the next table's) are
        # replaced by, or the file ends with, lines that read alone as that one
        # table and end a line before whatever follows.
        lone = _lone_table(retired, "retired")
        changes = self.changes
        if changes is None or changes.retired is not None or lone is None or (
                end < len(text) and not retired.endswith("\n")):
            changes = None
        else:
            changes = replace(changes, retired=lone)
        return ServerText(new_text + retired + text[end:], None, changes)


def _lone_table(text: str, name: str):
    """What ``text`` holds as a TOML file of itself, if that is the one table
    ``name`` and nothing else, with its header the first line that is not a
    comment or blank; else None."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    first = next((line.strip() for line in text.split("\n") if line.strip() and not line.lstrip().startswith("#")),
                 "")
    if list(data) != [name] or first.split("#")[0].replace(" ", "") not in (f"[{name}]", f"[[{name}]]"):
        return None
    return data[name]


def rewrite_server_file(path: Path, edited: ServerText, before: ServerConfig, clients: list[ClientEntry],
                        keys: key_store.KeyTable) -> ServerConfig:
    """Check ``edited`` as the server would with ``keys`` as its key store, and
    that it holds ``before``'s settings with ``clients`` as its clients, then
    put it in place of ``path`` keeping its mode and owner. Returns the config
    it holds.

    ``before`` must be the config loaded from the text ``edited`` was made
    from, and ``clients`` have their keys from that load's (unlocked) read of
    the key store; a key that ``keys``, read under the store's lock, has moved
    on along its chain since (a running server's epoch step in between) is
    the same client's. When the edits are known in whole tables (``edited.changes``), only
    what they change is checked again (config.changed_server_config); should
    that refuse it, the whole text is loaded as the server would, whose error
    is the one reported."""
    text = edited.text
    if not text.endswith("\n"):
        text += "\n"
    info = path.stat()
    config = None
    if edited.changes is not None:
        with contextlib.suppress(ConfigError):
            config = changed_server_config(before, keys, **vars(edited.changes))
    if config is None:
        config = _load_text(path, info, text, keys)
    unchanged = ("server_id", "port", "listen_address", "endpoint", "tunnel", "interface", "mtu", "time_window",
                 "client_to_client", "offload")
    if list(config.clients) != clients:
        clients = [_key_as_stored(client, keys) for client in clients]
    if list(config.clients) != clients or any(getattr(config, k) != getattr(before, k) for k in unchanged):
        raise ConfigError(f"{path}: keygen could not make this change without touching other lines;"
                          " left the file as it was (edit it by hand)")
    write_private(path, text, mode=info.st_mode & 0o777, replace=True, owner=(info.st_uid, info.st_gid))
    return config


def _key_as_stored(client: ClientEntry, keys: key_store.KeyTable) -> ClientEntry:
    """``client`` with the key ``keys`` holds for it if that is its key moved
    on to a later epoch (key_store.moved_on), else as it is."""
    stored = keys.keys.get(client.client_id)
    if stored is None or not key_store.moved_on((client.key_epoch, client.key), stored):
        return client
    return replace(client, key_epoch=stored[0], key=stored[1])


def _load_text(path: Path, info: os.stat_result, text: str, keys: key_store.KeyTable) -> ServerConfig:
    """``text`` loaded as the server would load it from ``path`` (whose
    ``stat`` is ``info``) with ``keys`` as its key store: from a copy beside
    it with its mode and owner, which the server's checks of who may read it
    look at (a 0600 copy of root's would fail a config with ``user``). Raises
    ConfigError."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, probe = tempfile.mkstemp(prefix=f".{path.name}.check.", suffix=".toml", dir=directory)
    try:
        os.fchmod(fd, info.st_mode & 0o777)
        if (info.st_uid, info.st_gid) != (os.geteuid(), os.getegid()):
            with contextlib.suppress(PermissionError):  # only root may give a file away
                os.fchown(fd, info.st_uid, info.st_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        try:
            return load_server_config(probe, keys)
        except ConfigError as error:  # a bug here, never the operator's: say so, change nothing
            raise ConfigError(f"{path}: the change would not load ({error}); left the file as it was") from None
    finally:
        Path(probe).unlink(missing_ok=True)


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


def network_text(network) -> str:
    """``str(network)``, for IPv6 through inet_ntop (C): ipaddress's own
    takes most of a 65,536-client ``keygen list``. Addresses whose first 80 bits
    are zero (IPv4-mapped and -compatible ones), which inet_ntop writes with a
    dotted quad, keep ipaddress's form."""
    packed = network.network_address.packed
    if network.version == 6 and any(packed[:10]):
        return f"{socket.inet_ntop(socket.AF_INET6, packed)}/{network.prefixlen}"
    return str(network)


def free_address(network, taken: list) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The lowest host address of ``network`` inside none of ``taken``: one pass
    over the taken ranges in order, so 65,536 clients cost milliseconds."""
    first, last = _first_last(network)
    if network.num_addresses > 2:  # hosts(): not the network's own address (nor IPv4's broadcast)
        first += 1
        last -= network.version == 4
    bits = network.max_prefixlen
    spans = sorted(span for used in taken if used.max_prefixlen == bits
                   and (span := _first_last(used))[1] >= first and span[0] <= last)
    candidate = first
    for start, end in spans:
        if start > candidate:
            break
        candidate = max(candidate, end + 1)
    if candidate > last:
        raise ConfigError(f"no free address left in {network}")
    return (ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address)(candidate)


def _first_last(network) -> tuple[int, int]:
    """The first and last address of ``network`` as integers: ``broadcast_address``
    computes a netmask for each network, most of a free_address at 65,536 clients."""
    start = int(network.network_address)
    return start, start + (1 << (network.max_prefixlen - network.prefixlen)) - 1


def owned_networks(server: ServerConfig) -> Iterator[tuple[Network, str]]:
    """Each network someone has, with whom, as config errors name them
    (``"the server"`` for its own tunnel addresses, ``"client 'laptop'"``)."""
    for interface in server.tunnel:
        yield ipaddress.ip_network(interface.ip), "the server"
    for client in server.clients:
        for network in client.addresses:
            yield network, f"client {client.name!r}"


def taken_networks(server: ServerConfig) -> list:
    """Every address a new client may not have: the server's, the clients', the retired ones."""
    return [network for network, _ in owned_networks(server)] + list(server.retired_addresses)


def network_owner(server: ServerConfig, network: Network,
                  more: Iterable[tuple[Network, str]] = ()) -> tuple[Network, str] | None:
    """The first network someone has (owned_networks, then ``more``: the new
    client's own, as (network, whose)) that shares an address with
    ``network`` (a host network for an address), and whom it belongs to, or None."""
    return next(((owned, owner) for owned, owner in itertools.chain(owned_networks(server), more)
                 if owned.overlaps(network)), None)


def endpoint_address(server: ServerConfig) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of the server's ``endpoint``, if it is an address, not a name."""
    try:
        host, _ = parse_endpoint(server.endpoint or "")
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def networks_behind(server: ServerConfig, path: Path, name: str, texts: list[str]) -> list[Network]:
    """The networks behind a new client ``name`` (``--allowed-ips``, a site
    behind it), checked as its addresses are: each in standard form (no host
    bits set), not a default route (the server takes none from a client),
    sharing no address with anyone's (network_owner), a retired one or
    another given. Raises ConfigError naming the network and its owner."""
    result: list[Network] = []
    for text in texts:
        try:
            network = ipaddress.ip_network(text)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ConfigError(f"--allowed-ips: {text!r} is not a network (like 192.0.2.0/24)") from None
            raise ConfigError(f"--allowed-ips: {text} has host bits set; the network is {loose}") from None
        if network.prefixlen == 0:
            raise ConfigError(f"--allowed-ips: {network}: a default route is only for a client's routes, not a"
                              " network behind a client")
        endpoint = endpoint_address(server)
        if endpoint is not None and endpoint in network:
            raise ConfigError(f"--allowed-ips: {network} holds the server's own endpoint {endpoint}: routed into"
                              " the tunnel, it would take the server's network (and the answers to clients on it)"
                              " with it")
        retired = next((r for r in server.retired_addresses if r.overlaps(network)), None)
        if retired is not None:
            raise ConfigError(f"--allowed-ips: {network} overlaps {retired}, which is retired (a removed client had"
                              f" it); delete it from [retired] in {path} to use it again")
        used = network_owner(server, network, ((given, f"client {name!r}") for given in result))
        if used is not None:
            raise ConfigError(f"--allowed-ips: {network} of client {name!r} overlaps {used[0]} of {used[1]}")
        result.append(network)
    return result


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


def client_file_text(server: ServerConfig, name: str, client_id: int, addresses, state_directory: str | None,
                     behind=()) -> str:
    """The client's config; ``behind`` the networks behind it (its server
    entry's networks other than its own addresses), named in a comment: they
    are not routes (those go into the tunnel), but the client must forward them."""
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
        *([f"# The server routes {', '.join(map(str, behind))} to this client: let this machine forward them",
           "# (sysctl net.ipv4.ip_forward=1, net.ipv6.conf.all.forwarding=1)."] if behind else []),
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


def _line_starts(text: str) -> list[int]:
    """Where each line of ``text`` starts (as many as ``text.split("\\n")`` has)."""
    return list(itertools.accumulate((len(line) + 1 for line in text.split("\n")[:-1]), initial=0))


def client_spans(text: str, headers: list[tuple[int, str]] | None | str = "find") -> list[tuple[int, int, int]]:
    """For each [[client]] table, in order: (where its lines start, counting
    the comment lines just above its header; where its header starts; where
    its lines end, before the comment lines that lead into the next table).
    A file in keygen's form is read line by line (config_toml.plain_table_headers,
    or ``headers`` if given: what it said of this very text); any other goes
    through tomlkit, which knows strings and arrays that span lines but takes
    about 15 s for 65,536 clients."""
    if headers == "find":
        headers = plain_table_headers(text)
    if headers is None:
        return _client_spans_by_tomlkit(text)
    starts = _line_starts(text)
    spans = []
    for position, (line, name) in enumerate(headers):
        if name == "client":
            end = starts[headers[position + 1][0]] if position + 1 < len(headers) else len(text)
            spans.append((_comment_run_start(text, starts[line]), starts[line], _comment_run_start(text, end)))
    return spans


def _client_spans_by_tomlkit(text: str) -> list[tuple[int, int, int]]:
    """client_spans for any layout: tomlkit finds the tables; each table's text
    is found again in ``text``, which tomlkit reproduces exactly."""
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


def _retire(document: tomlkit.TOMLDocument, client: ClientEntry) -> None:
    if "retired" not in document:
        retired = tomlkit.table()
        retired.add(tomlkit.comment("Removed clients' IDs and addresses: keygen gives them to no new"
                                    " client. Delete entries to allow that."))
        retired.add("client_ids", tomlkit.array())
        retired.add("addresses", tomlkit.array())
        document.add("retired", retired)
    retired = document["retired"]
    for key, values in (("client_ids", [client.client_id]), ("addresses", [str(n) for n in client.addresses])):
        if key not in retired:
            retired.add(key, tomlkit.array())
        for value in values:
            if value not in retired[key]:
                retired[key].append(value)


def client_index(server: ServerConfig, name: str, path: Path) -> int:
    for index, client in enumerate(server.clients):
        if client.name == name:
            return index
    names = ", ".join(repr(c.name) for c in server.clients) or "none"
    raise ConfigError(f"{path}: no client named {name!r} (clients: {names})")
