"""Linux network configuration with iproute2's ``ip``.

``ip`` rather than a netlink library: it is on every Linux server, what the
dry run prints is what an operator would type, and it adds no dependency.
Nothing needs undoing at exit: the kernel removes a TUN device, with its
addresses and routes, when the process that owns it closes it.
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Iterable

from . import NetconfigError


def plan(interface: str, addresses: Iterable, mtu: int, routes: Iterable = ()) -> list[list[str]]:
    """The ``ip`` commands that give ``interface`` its MTU, addresses and routes, and bring it up."""
    # No IPv6 link-local address: a tunnel has no neighbours, and router
    # solicitations from one would only be dropped on the other side.
    commands = [["ip", "link", "set", "dev", interface, "mtu", str(mtu), "addrgenmode", "none"]]
    for address in addresses:
        command = ["ip", "address", "add", str(address), "dev", interface]
        if address.version == 6:
            command.append("nodad")  # the tunnel has no neighbours to collide with
        commands.append(command)
    commands.append(["ip", "link", "set", "dev", interface, "up"])
    for route in routes:
        commands.append(["ip", "-%d" % route.version, "route", "replace", str(route), "dev", interface])
    return commands


def describe(commands: list[list[str]]) -> str:
    return "\n".join(shlex.join(command) for command in commands)


def apply(commands: list[list[str]]) -> None:
    for command in commands:
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            raise NetconfigError("the 'ip' command (iproute2) is not installed") from None
        except subprocess.TimeoutExpired:
            raise NetconfigError(f"{shlex.join(command)}: timed out") from None
        if result.returncode != 0:
            raise NetconfigError(f"{shlex.join(command)}: {result.stderr.strip() or 'failed'}")
