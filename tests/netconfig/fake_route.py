"""Stand-ins for the BSD route(8) and ifconfig(8), so a plan's commands run for real here.

``install`` puts executables named ``route`` and ``ifconfig`` in a directory
(put it first on PATH); they keep a routing table in a JSON file. route
answers as the OS's own does, from their sources: FreeBSD's exits 1 when the
kernel refuses (sbin/route/route.c), macOS's exits 0 whatever happened and
says so only in words, the result on stdout and the kernel's refusal on
stderr (network_cmds route.c: ``newroute(); exit(0)``). ``route -n get``
prints the ``destination:``, ``gateway:`` and ``flags:`` lines of both: of a
host route to exactly that address (with ``-host``), else of the default
route; ``-proto1`` shows as PROTO1 among the flags.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def install(directory: Path, os_name: str, default: dict[int, str] | None = None) -> Path:
    """Write ``route`` and ``ifconfig`` for ``os_name`` ("freebsd", "darwin")
    into ``directory``; ``default`` is each family's default gateway. Returns
    the table's file."""
    table = directory / "table.json"
    gateways = {str(family): gateway for family, gateway in (default or {}).items()}
    table.write_text(json.dumps({"routes": [], "calls": [], "default": gateways}))
    for tool in ("route", "ifconfig"):
        path = directory / tool
        path.write_text(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
            f"from tests.netconfig.fake_route import main\nmain({tool!r}, {os_name!r}, {str(table)!r}, sys.argv[1:])\n"
        )
        path.chmod(0o755)
    return table


def routes(table: Path) -> list[dict]:
    return json.loads(table.read_text())["routes"]


def calls(table: Path) -> list[list[str]]:
    """Every route command run so far, as its arguments."""
    return json.loads(table.read_text())["calls"]


def held(table: Path, destination: str, interface: str) -> None:
    """A route someone else made, to ``interface`` (a host route for an address with its /32 or /128)."""
    state = json.loads(table.read_text())
    state["routes"].append({"destination": destination, "gateway": interface, "interface": interface,
                            "blackhole": False, "proto1": False})
    table.write_text(json.dumps(state))


def device_gone(table: Path, interface: str) -> None:
    """What the kernel does when the interface goes (the TUN device closed or
    destroyed, also after kill -9): its routes go with it."""
    state = json.loads(table.read_text())
    state["routes"] = [r for r in state["routes"] if r["interface"] != interface]
    table.write_text(json.dumps(state))


def main(tool: str, os_name: str, table_path: str, argv: list[str]) -> None:
    table = Path(table_path)
    state = json.loads(table.read_text())
    if tool == "ifconfig":
        sys.exit(0)
    state["calls"].append(argv)
    table.write_text(json.dumps(state))
    arguments = [a for a in argv if a not in ("-n", "-q")]
    command, rest = arguments[0], arguments[1:]
    family = 6 if "-inet6" in rest else 4
    gateway = interface = None
    positional = []
    while rest:
        word, rest = rest[0], rest[1:]
        if word == "-gateway":
            gateway, rest = rest[0], rest[1:]
        elif not word.startswith("-"):
            positional.append(word)
    host = "-host" in argv
    if command == "get":
        # A host route to exactly that address if there is one, else the default route it falls back to.
        exact = [r for r in state["routes"] if host and r["destination"] == str(ipaddress.ip_network(positional[0]))]
        if exact:
            flags = "UP,GATEWAY,HOST,DONE,STATIC" + (",PROTO1" if exact[0]["proto1"] else "")
            print(f"   route to: {positional[0]}\ndestination: {positional[0]}\n    gateway: {exact[0]['gateway']}\n"
                  f"  interface: em0\n      flags: <{flags}>")
            sys.exit(0)
        found = state["default"].get(str(family))
        if found is None:
            fail(os_name, "get", "net default", "not in table")
        print(f"   route to: {positional[0]}\ndestination: default\n       mask: default\n    gateway: {found}\n"
              f"  interface: em0\n      flags: <UP,GATEWAY,DONE,STATIC>")
        sys.exit(0)
    host_length = "/128" if family == 6 else "/32"
    destination = str(ipaddress.ip_network(positional[0] + host_length if host else positional[0]))
    if gateway is None and len(positional) > 1:
        gateway = positional[1]
    if "-interface" in argv:
        interface = gateway
    what = f"{'host' if host else 'net'} {positional[0]}"
    existing = [r for r in state["routes"] if r["destination"] == destination]
    if command == "delete":
        if not existing:
            fail(os_name, command, what, "not in table")
        state["routes"].remove(existing[0])
    elif command == "add":
        if existing:
            fail(os_name, command, what, "File exists")
        state["routes"].append({"destination": destination, "gateway": gateway, "interface": interface,
                                "blackhole": "-blackhole" in argv, "proto1": "-proto1" in argv})
    table.write_text(json.dumps(state))
    if os_name == "darwin":
        print(f"{command} {what}: gateway {gateway}")
    sys.exit(0)


def fail(os_name: str, command: str, what: str, error: str) -> None:
    print(f"route: writing to routing socket: {error}", file=sys.stderr)
    if os_name == "darwin":
        print(f"{command} {what}: {error}")  # and still exit 0
        sys.exit(0)
    sys.exit(1)
