"""vpncrypt-keygen: write a new server config, or add a client to one and write its config."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import tempfile
from pathlib import Path

from ..config import (
    DEFAULT_INTERFACE, DEFAULT_KEEPALIVE, DEFAULT_MTU, ConfigError, load_server_config, parse_endpoint,
)
from ..core.keys import encode_key, new_key
from ..core.wire import MAX_CLIENT_ID
from .common import error_exit

PROGRAM = "vpncrypt-keygen"


def toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def toml_list(items) -> str:
    return "[" + ", ".join(toml_string(str(item)) for item in items) + "]"


def write_private(path: Path, text: str, *, mode: int = 0o600, replace: bool = False) -> None:
    """Write atomically (temporary file, fsync, rename) with ``mode``; never clobber unless asked."""
    if path.exists() and not replace:
        raise ConfigError(f"{path}: already exists; remove it first or choose another --out")
    directory = path.parent if str(path.parent) else Path(".")
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
        tunnel.append(interface)
    server_id = args.server_id if args.server_id is not None else secrets.randbits(32)
    if not 0 <= server_id < 2**32:
        raise ConfigError("--server-id must be from 0 to 4294967295")
    text = (
        "# vpncrypt server configuration. Keep it secret: it holds every client's key.\n"
        "[server]\n"
        f"server_id = {server_id}\n"
        f"port = {port}\n"
        f"endpoint = {toml_string(args.endpoint)}  # what clients are told to send to\n"
        f"tunnel = {toml_list(tunnel)}\n"
        f"interface = {toml_string(DEFAULT_INTERFACE)}\n"
        f"mtu = {DEFAULT_MTU}\n"
        "time_window = 128\n"
        "client_to_client = false\n"
    )
    write_private(Path(args.out), text)
    print(f"wrote {args.out}: server ID {server_id}, port {port}, tunnel {', '.join(map(str, tunnel))}")
    return 0


def free_address(network, taken: set) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    for host in network.hosts():
        if host not in taken:
            return host
    raise ConfigError(f"no free address left in {network}")


def make_client(args: argparse.Namespace) -> int:
    server_path = Path(args.server_config)
    server = load_server_config(server_path)
    if not server.endpoint:
        raise ConfigError(f"{server_path}: [server] endpoint is not set; clients need it")
    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"{out}: already exists; remove it first or choose another --out")
    if any(c.name == args.name for c in server.clients):
        raise ConfigError(f"{server_path}: a client named {args.name!r} exists already")
    used_ids = {c.client_id for c in server.clients}
    client_id = next((i for i in range(1, MAX_CLIENT_ID + 1) if i not in used_ids), None)
    if client_id is None:
        raise ConfigError(f"{server_path}: all {MAX_CLIENT_ID} client IDs are taken")
    taken = {i.ip for i in server.tunnel}
    for client in server.clients:
        taken.update(n.network_address for n in client.addresses)
    chosen = []
    requested = {}
    for text in args.address or []:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ConfigError(f"--address: {text!r} is not an IP address") from None
        requested[address.version] = address
    for interface in server.tunnel:
        address = requested.pop(interface.version, None) or free_address(interface.network, taken)
        if address not in interface.network:
            raise ConfigError(f"--address: {address} is not inside the tunnel network {interface.network}")
        if address in taken:
            raise ConfigError(f"--address: {address} is already used")
        chosen.append(ipaddress.ip_interface(f"{address}/{interface.network.prefixlen}"))
    if requested:
        raise ConfigError(f"--address: the server has no IPv{next(iter(requested))} tunnel network")
    key = encode_key(new_key())
    hosts = [str(ipaddress.ip_network(i.ip)) for i in chosen]
    block = (
        "\n[[client]]\n"
        f"name = {toml_string(args.name)}\n"
        f"client_id = {client_id}\n"
        f"key = {toml_string(key)}\n"
        f"addresses = {toml_list(hosts)}\n"
    )
    client_text = (
        "# vpncrypt client configuration. Keep it secret: it holds this client's key.\n"
        "[client]\n"
        f"name = {toml_string(args.name)}\n"
        f"client_id = {client_id}\n"
        f"key = {toml_string(key)}\n"
        f"server = {toml_string(server.endpoint)}\n"
        f"server_id = {server.server_id}\n"
        f"addresses = {toml_list(chosen)}\n"
        "routes = []  # more networks to reach through the tunnel\n"
        f"interface = {toml_string(DEFAULT_INTERFACE)}\n"
        f"mtu = {server.mtu}\n"
        f"keepalive = {DEFAULT_KEEPALIVE}\n"
        f"time_window = {server.time_window}\n"
    )
    # The client file first: if it cannot be written, the server file is untouched.
    write_private(out, client_text)
    mode = server_path.stat().st_mode & 0o777
    write_private(server_path, server_path.read_text() + block, mode=mode, replace=True)
    print(f"wrote {out}: client {args.name!r}, ID {client_id}, addresses {', '.join(map(str, chosen))};"
          f" added it to {server_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="write a new server config with no clients")
    server.add_argument("--endpoint", required=True, metavar="HOST:PORT",
                        help="where clients reach the server; the server listens on PORT")
    server.add_argument("--tunnel", required=True, action="append", metavar="CIDR",
                        help="the server's tunnel address and prefix, e.g. 203.0.113.1/24 (repeat for IPv6)")
    server.add_argument("--out", required=True, metavar="FILE")
    server.add_argument("--server-id", type=int, metavar="N", help="default: random")
    client = commands.add_parser("client", help="add a client to a server config and write its config")
    client.add_argument("--server-config", required=True, metavar="FILE")
    client.add_argument("--name", required=True)
    client.add_argument("--out", required=True, metavar="FILE")
    client.add_argument("--address", action="append", metavar="IP",
                        help="tunnel address to give the client (default: the next free one)")
    args = parser.parse_args(argv)
    action = make_server if args.command == "server" else make_client
    try:
        return action(args)
    except ConfigError as error:
        return error_exit(PROGRAM, error)


if __name__ == "__main__":
    raise SystemExit(main())
