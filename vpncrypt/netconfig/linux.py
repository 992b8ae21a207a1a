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

from . import NetconfigError, NetworkPlan, TunnelSpec

# Rule priorities: after the local table (0), before main (32766); the
# suppressing rule must come first.
SUPPRESS_PRIORITY = "32764"
TUNNEL_TABLE_PRIORITY = "32765"


def plan(spec: TunnelSpec) -> NetworkPlan:
    """The ``ip`` commands that give the interface its MTU, addresses and routes, and bring it up.

    A default route (0.0.0.0/0, ::/0) needs ``spec.fwmark``, the mark the
    caller puts on its own UDP socket; raises NetconfigError without one.
    """
    interface, mtu, fwmark = spec.interface, spec.mtu, spec.fwmark
    # No IPv6 link-local address: a tunnel has no neighbours, and router
    # solicitations from one would only be dropped on the other side.
    setup = [["ip", "link", "set", "dev", interface, "mtu", str(mtu), "addrgenmode", "none"]]
    teardown: list[list[str]] = []
    for address in spec.addresses:
        command = ["ip", "address", "add", str(address), "dev", interface]
        if address.version == 6:
            command.append("nodad")  # the tunnel has no neighbours to collide with
        setup.append(command)
    setup.append(["ip", "link", "set", "dev", interface, "up"])
    for route in spec.routes:
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
