"""Linux network configuration with iproute2's ``ip``.

``ip`` rather than a netlink library: it is on every Linux server, what the
dry run prints is what an operator would type, and it adds no dependency.
The kernel removes a TUN device, with its addresses and routes, when the
process that owns it closes it. Policy rules outlive it, so a default route
through the tunnel comes with a teardown.

A default route is done as wg-quick does it: the tunnel's default route goes
into a table of its own (numbered like the fwmark), used by every packet not
carrying the mark; the VPN's own UDP socket marks its datagrams, so they keep
the main table's routes. A rule before it keeps every more specific route of
the main table in force (only the main default route is suppressed), so the
local networks stay reachable.
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Iterable

from . import NetconfigError, NetworkPlan

# Rule priorities: after the local table (0), before main (32766); the
# suppressing rule must come first.
SUPPRESS_PRIORITY = "32764"
TUNNEL_TABLE_PRIORITY = "32765"
MAX_LEFTOVERS = 16  # rules a series of killed runs may have left, removed at start


def plan(interface: str, addresses: Iterable, mtu: int, routes: Iterable = (), fwmark: int = 0) -> NetworkPlan:
    """The ``ip`` commands that give ``interface`` its MTU, addresses and routes, and bring it up.

    A default route (0.0.0.0/0, ::/0) needs ``fwmark``, the mark the caller
    puts on its own UDP socket.
    """
    # No IPv6 link-local address: a tunnel has no neighbours, and router
    # solicitations from one would only be dropped on the other side.
    setup = [["ip", "link", "set", "dev", interface, "mtu", str(mtu), "addrgenmode", "none"]]
    teardown: list[list[str]] = []
    for address in addresses:
        command = ["ip", "address", "add", str(address), "dev", interface]
        if address.version == 6:
            command.append("nodad")  # the tunnel has no neighbours to collide with
        setup.append(command)
    setup.append(["ip", "link", "set", "dev", interface, "up"])
    for route in routes:
        family = "-%d" % route.version
        if route.prefixlen:
            setup.append(["ip", family, "route", "replace", str(route), "dev", interface])
            continue
        if not fwmark:
            raise NetconfigError(f"a default route ({route}) needs a fwmark for the tunnel's own datagrams")
        mark = str(fwmark)
        rules = [
            [family, "rule", "add", "not", "fwmark", mark, "table", mark, "priority", TUNNEL_TABLE_PRIORITY],
            [family, "rule", "add", "table", "main", "suppress_prefixlength", "0", "priority", SUPPRESS_PRIORITY],
        ]
        if route.version == 4:
            # Replies to marked datagrams pass reverse-path filtering (as wg-quick does).
            setup.append(["sysctl", "-q", "-w", "net.ipv4.conf.all.src_valid_mark=1"])
        setup.append(["ip", family, "route", "replace", str(route), "dev", interface, "table", mark])
        setup += [["ip", *rule] for rule in rules]
        teardown += [["ip", *rule[:2], "delete", *rule[3:]] for rule in rules]
    return NetworkPlan(setup, teardown)


def describe(network_plan: NetworkPlan) -> str:
    lines = [shlex.join(command) for command in network_plan.setup]
    if network_plan.teardown:
        lines.append("# at exit:")
        lines += [shlex.join(command) for command in network_plan.teardown]
    return "\n".join(lines)


def _run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NetconfigError(f"the '{command[0]}' command is not installed") from None
    except subprocess.TimeoutExpired:
        raise NetconfigError(f"{shlex.join(command)}: timed out") from None


def apply(network_plan: NetworkPlan) -> None:
    """Clear what an earlier run that was killed left behind, then set up."""
    tear_down(network_plan, every_copy=True)
    for command in network_plan.setup:
        result = _run(command)
        if result.returncode != 0:
            raise NetconfigError(f"{shlex.join(command)}: {result.stderr.strip() or 'failed'}")


def tear_down(network_plan: NetworkPlan, every_copy: bool = False) -> None:
    """Delete the plan's rules; a rule that is not there is nothing to undo."""
    for command in network_plan.teardown:
        for _ in range(MAX_LEFTOVERS if every_copy else 1):
            if _run(command).returncode != 0:
                break
