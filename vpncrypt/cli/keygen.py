"""vpncrypt-keygen: write a server config, and add, remove, re-key and list its clients.

Every change to an existing server.toml is made under a lock (a ``flock`` on
``server.toml.lock`` beside it), so two runs at once cannot lose a client,
and leaves every other line as the operator wrote it: new text is appended,
a removed client's lines are cut out (with the comment lines just above
them), and its ID and addresses go into ``[retired]`` (edited with tomlkit,
which round-trips comments and layout). The result is checked as the server
would check it before it replaces the file, atomically, keeping its mode
and owner. Retired IDs and addresses are handed to no new client until the
operator deletes them there.

Keys are not in the config files (protocol version 2): a new or re-keyed
client's key goes into the server's key store (key_store.py, under its own
lock), recorded as that client's by name, and into a key file for the client, ``NAME.keys.json`` beside its
config, which the operator copies into the client's state directory.

This module holds the commands; editing the server's files is server_file.py,
making keys client_keys.py.
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
from pathlib import Path

import tomlkit

from .. import control, key_store
from ..config import (
    DEFAULT_INTERFACE, DEFAULT_MTU, DEFAULT_STATE_DIRECTORY, ConfigError, ServerConfig, collector_paused,
    default_state_directory, load_server_config, load_server_file, parse_endpoint,
)
from ..core.epochs import DEFAULT_EPOCH_SECONDS, MAX_EPOCH_SECONDS, MIN_EPOCH_SECONDS
from ..core.server import ClientEntry
from .client_keys import (
    check_client_key_file, client_key_file, copy_instructions, fresh_key, locked_store, server_store, write_client_keys,
)
from .common import RUNTIME_ERROR, add_version, error_exit, print_all
from .server_file import (
    ServerText, check_name, choose_client_id, client_addresses, client_file_text, client_index, free_address,
    locked, network_owner, network_text, networks_behind, read_text, rewrite_server_file, taken_networks,
    toml_value, write_private,
)

PROGRAM = "vpncrypt-keygen"


class ReloadError(Exception):
    """The file was written, but the running server did not take it; ``status`` is the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# --- reload ---------------------------------------------------------------------------------


def reload_server(server_path: Path) -> str:
    """Ask the server running from ``server_path`` to reload; raises ReloadError."""
    name = server_path.stem
    try:
        answer = control.request(control.socket_path(name), "reload")
    except control.ControlError as error:
        raise ReloadError(f"cannot reload: {error}; the change takes effect when it starts", RUNTIME_ERROR) from None
    if not answer.get("ok"):
        raise ReloadError(f"the running server refused the reload: {answer.get('error')}; {server_path} keeps the"
                          " change (the server runs on without it): undo or fix it before the server next starts",
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
        server, server_text, headers = load_server_file(server_path)
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
        behind = networks_behind(server, server_path, name, args.allowed_ips or [])
        taken = taken_networks(server) + behind
        requested = {}
        for text in args.address or []:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                raise ConfigError(f"--address: {text!r} is not an IP address") from None
            requested[address.version] = address
        chosen = []
        for interface in server.tunnel:
            address = requested.pop(interface.version, None)
            if address is None:
                # Inside the network and in none of ``taken`` (the server's, every
                # client's, the retired, those behind this client): what the
                # checks of a given address below would look at again.
                address = free_address(interface.network, taken)
                chosen.append(ipaddress.ip_interface(f"{address}/{interface.network.prefixlen}"))
                continue
            if address not in interface.network:
                raise ConfigError(f"--address: {address} is not inside the tunnel network {interface.network}")
            if any(address in network for network in server.retired_addresses):
                raise ConfigError(f"--address: {address} is retired (a removed client had it);"
                                  f" delete it from [retired] in {server_path} to use it again")
            used = network_owner(server, ipaddress.ip_network(address), ((n, f"client {name!r}") for n in behind))
            if used is not None:
                raise ConfigError(f"--address: {address} of client {name!r} overlaps {used[0]} of {used[1]}")
            chosen.append(ipaddress.ip_interface(f"{address}/{interface.network.prefixlen}"))
        if requested:
            raise ConfigError(f"--address: the server has no IPv{next(iter(requested))} tunnel network")
        networks = [ipaddress.ip_network(i.ip) for i in chosen] + behind
        block = (
            "[[client]]\n"
            f"name = {toml_value(name)}\n"
            f"client_id = {client_id}\n"
            f"addresses = {toml_value([str(n) for n in networks])}\n"
        )
        edited = ServerText.read(server_text, headers).add_client(block)
        with locked_store(server) as (store, table):
            epoch, key = fresh_key(table.epoch_seconds)
            table.keys[client_id] = (epoch, key)
            table.names[client_id] = name
            entry = ClientEntry(client_id, key, epoch, tuple(networks), name)
            # The client's files first: if they cannot be written, the server's are untouched.
            write_private(out, client_file_text(server, name, client_id, chosen, args.client_state_directory,
                                                behind))
            wrote_keys = False
            try:
                write_client_keys(keys_out, table.epoch_seconds, client_id, epoch, key)
                wrote_keys = True
                key_store.write(store, table)  # an unused key, should the next step fail
                rewrite_server_file(server_path, edited, server, [*server.clients, entry], table)
            except BaseException:
                out.unlink(missing_ok=True)  # both were checked not to exist: ours to take back
                if wrote_keys:
                    keys_out.unlink(missing_ok=True)
                raise
    routed = f", behind it {', '.join(map(str, behind))}" if behind else ""
    return finish(args, f"wrote {out} and {keys_out}: client {name!r}, ID {client_id}, addresses"
                        f" {', '.join(map(str, chosen))}{routed}; added it to {server_path}"
                        + copy_instructions(out, keys_out, args.client_state_directory))


def remove_client(args: argparse.Namespace) -> int:
    server_path = Path(args.server_config)
    with locked(server_path):
        server, text, headers = load_server_file(server_path, keyless=args.name)  # one added by hand may have none
        if not any(client.name == args.name for client in server.clients):
            return erase_left_key(args, server, ServerText.read(text, headers))
        index = client_index(server, args.name, server_path)
        removed = server.clients[index]
        edited = ServerText.read(text, headers).remove_client(index)
        if not args.reuse:
            edited = edited.retire([removed])
        with locked_store(server) as (store, table):
            table.keys.pop(removed.client_id, None)  # its name goes with it (key_store.write)
            rewrite_server_file(server_path, edited, server, [c for c in server.clients if c is not removed], table)
            key_store.write(store, table)
    kept = "" if args.reuse else f"; its ID and addresses are retired (see [retired] in {server_path})"
    return finish(args, f"removed client {removed.name!r} (ID {removed.client_id}) from {server_path}{kept}")


def erase_left_key(args: argparse.Namespace, server: ServerConfig, read: ServerText) -> int:
    """``remove`` of a client whose [[client]] was deleted by hand: erase the
    key the server's key store still holds for it by name (the server's start
    names such keys) and retire its ID unless ``--reuse``. Raises ConfigError
    (no client of that name) if the store has no such key either. ``read``:
    the text ``server`` was loaded from."""
    server_path = Path(args.server_config)
    configured = {client.client_id for client in server.clients}
    with locked_store(server) as (store, table):
        left = sorted(i for i, name in table.names.items() if name == args.name and i not in configured)
        if not left:
            client_index(server, args.name, server_path)  # raises: no client named so
        if not args.reuse:
            edited = read.retire([ClientEntry(client_id, b"", 0, (), args.name) for client_id in left])
            rewrite_server_file(server_path, edited, server, list(server.clients), table)
        for client_id in left:
            del table.keys[client_id]
        key_store.write(store, table)
    ids = ", ".join(map(str, left))
    kept = "" if args.reuse else f"; its ID is retired (see [retired] in {server_path})"
    return finish(args, f"erased the key of client {args.name!r} (ID {ids}) from {store}: {server_path} has no"
                        f" [[client]] of that name{kept}")


def rotate_client(args: argparse.Namespace) -> int:
    """A new key for a client, same ID and addresses: into the server's key store
    and a new key file for the client. The client's config holds no key, so
    ``--out`` is only written if it does not exist yet (else it is checked to
    be this client's)."""
    server_path = Path(args.server_config)
    out = Path(args.out)
    keys_out = client_key_file(out, args.key_out)
    with locked(server_path):
        server = load_server_config(server_path, keyless=args.name)  # one added by hand has none yet
        entry = server.clients[client_index(server, args.name, server_path)]
        check_client_key_file(keys_out, server, replaces=entry.client_id)
        if out.resolve() in (server_path.resolve(), server_store(server).resolve()):
            raise ConfigError(f"{out}: is the server's own file; choose another --out")
        if out.exists():
            existing = tomlkit.parse(read_text(out)).get("client", {})
            if existing.get("client_id") != entry.client_id or existing.get("server_id") != server.server_id:
                raise ConfigError(f"{out}: is not the config of client {entry.name!r} (ID {entry.client_id}) of"
                                  " this server; choose another --out")
            # The client reads its key from the state directory of the config it has.
            client_state_directory = existing.get("state_directory")
            wrote_config = False
        else:
            client_state_directory = args.client_state_directory
            if not server.endpoint:
                raise ConfigError(f"{server_path}: [server] endpoint is not set; clients need it")
            own = client_addresses(server, entry.addresses)
            hosts = {ipaddress.ip_network(interface.ip) for interface in own}
            write_private(out, client_file_text(server, entry.name, entry.client_id, own, args.client_state_directory,
                                                [network for network in entry.addresses if network not in hosts]))
            wrote_config = True
        with locked_store(server) as (store, table):
            epoch, key = fresh_key(table.epoch_seconds)
            had_key = bool(entry.key)  # not a key the store holds for another client (config.py)
            others = table.names.get(entry.client_id) if entry.client_id in table.keys and not had_key else None
            table.keys[entry.client_id] = (epoch, key)
            table.names[entry.client_id] = entry.name
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
                        f" {keys_out}; " + ("its old key stops working when the server reloads" if had_key
                                            else f"it had none (the key of {others!r} that the store held for its"
                                                 " ID is erased): the server takes it when it reloads" if others
                                            else "it had none: the server takes it when it reloads")
                        + copy_instructions(out, keys_out, client_state_directory))


def list_clients(args: argparse.Namespace) -> int:
    server_path = Path(args.server_config)
    server = load_server_config(server_path)
    rows = [("NAME", "ID", "ADDRESSES")]
    rows += [(c.name, str(c.client_id), ", ".join(map(network_text, c.addresses))) for c in server.clients]
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
    client.add_argument("--allowed-ips", action="append", metavar="NETWORK",
                        help="a network behind the client (site to site, as WireGuard's AllowedIPs): the server"
                             " routes it to the client and takes it from it; repeat for more")
    client.add_argument("--client-id", type=int, metavar="N", help="default: a free one at random")
    client.add_argument("--key-out", metavar="FILE", help="the client's key file (default: NAME.keys.json beside --out)")
    client.add_argument("--client-state-directory", metavar="DIR",
                        help=f"write state_directory = DIR into the client's config (default: {DEFAULT_STATE_DIRECTORY})")
    remove = commands.add_parser("remove", help="remove a client from a server config (or erase the key that one"
                                                " deleted by hand left in the key store)")
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
        # One short run over a loaded config of up to 65,536 clients, which it
        # holds throughout: the cyclic collector would walk it again and again
        # (a third of a run's time) and find nothing (config.collector_paused).
        with collector_paused():
            return action(args)
    except ConfigError as error:
        return error_exit(PROGRAM, error)


if __name__ == "__main__":
    raise SystemExit(main())
