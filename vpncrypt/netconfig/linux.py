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

Everything vpncrypt adds carries its own protocol number, PROTOCOL (``proto``
on routes, ip-route(8); ``protocol`` on rules, ip-rule(8), Linux 4.17 or
later), and the teardown names it: the clearing at start after a ``kill -9``
deletes vpncrypt's rules only, never another VPN's at the same priority
(wg-quick's are at these priorities too). Routes are added, never replaced:
one already there is someone else's, and setup stops at it (``apply``). Before
the rules, a check refuses a table or mark that a rule vpncrypt did not make
uses already (another VPN's, or a policy of the operator's); it reads
``ip -j -N rule show`` (numbers for tables and protocols: iproute2 5.3 or later).
"""

from __future__ import annotations

import functools
import json

from . import Check, NetconfigError, Network, NetworkPlan, TunnelSpec

# vpncrypt's routing protocol number: above RTPROT_STATIC (4) the kernel does
# not interpret it, and no protocol in linux/rtnetlink.h or iproute2's
# rt_protos uses 118 (0x76, "v"). Shown as "proto 118" by ip route and ip rule.
PROTOCOL = "118"

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
    checks: list[Check] = []
    # The kernel routes the tunnel's own networks (the addresses' prefix routes).
    own = {address.network for address in spec.addresses}
    for route in spec.routes:
        family = "-%d" % route.version
        if route.prefixlen:
            if route not in own:
                setup.append(["ip", family, "route", "add", str(route), "dev", interface, "proto", PROTOCOL])
            continue
        if not fwmark:
            raise NetconfigError(f"a default route ({route}) needs a fwmark for the tunnel's own datagrams")
        mark = str(fwmark)
        rules = _rules(family, mark)
        checks.append(Check(["ip", "-j", "-N", family, "rule", "show"], functools.partial(foreign_rule, fwmark=fwmark)))
        if route.version == 4:
            # Replies to marked datagrams pass reverse-path filtering (as wg-quick does).
            setup.append(["sysctl", "-q", "-w", "net.ipv4.conf.all.src_valid_mark=1"])
        setup.append(["ip", family, "route", "add", str(route), "dev", interface, "table", mark, "proto", PROTOCOL])
        setup += [["ip", *rule] for rule in rules]
        teardown += [["ip", *rule[:2], "delete", *rule[3:]] for rule in rules]
    # A client's rules in both families, whatever the config says now: a start
    # clears what a killed full tunnel of this mark left behind.
    leftovers = [["ip", *rule[:2], "delete", *rule[3:]]
                 for family in ("-4", "-6") if fwmark for rule in _rules(family, str(fwmark))]
    return NetworkPlan(setup, teardown, checks=checks, leftovers=leftovers)


def _rules(family: str, mark: str) -> list[list[str]]:
    """A full tunnel's two rules (wg-quick's), as ``ip`` arguments after "ip"."""
    return [
        [family, "rule", "add", "not", "fwmark", mark, "table", mark, "priority", TUNNEL_TABLE_PRIORITY,
         "protocol", PROTOCOL],
        [family, "rule", "add", "table", "main", "suppress_prefixlength", "0", "priority", SUPPRESS_PRIORITY,
         "protocol", PROTOCOL],
    ]


def route_command(action: str, network: Network, interface: str) -> list[str]:
    """``ip route add`` or ``delete`` of a route tagged as the plan's are
    (PROTOCOL): an add never replaces another's route, a delete never takes
    one that is not vpncrypt's."""
    return ["ip", f"-{network.version}", "route", action, str(network), "dev", interface, "proto", PROTOCOL]


def foreign_rule(shown: str, fwmark: int) -> str | None:
    """The refusal for a rule in ``shown`` (``ip -j -N rule show``: numbers for
    tables and protocols) that vpncrypt did not make and that uses table
    ``fwmark`` or matches mark ``fwmark``; None if there is none. Such a rule
    belongs to another VPN or to the operator: sharing its table or mark
    would send its traffic into this tunnel, or this one's past it."""
    try:
        rules = json.loads(shown or "[]")
    except json.JSONDecodeError:
        return f"cannot read the routing rules (ip -j rule show printed {shown[:60]!r})"
    for rule in rules:
        if str(rule.get("protocol", "")) == PROTOCOL:
            continue
        mark = rule.get("fwmark")
        uses_mark = mark is not None and int(str(mark), 0) == fwmark
        if uses_mark or str(rule.get("table")) == str(fwmark):
            what = "mark" if uses_mark else "table"
            return (f"fwmark {fwmark}: routing rule {rule.get('priority')} (not vpncrypt's) already uses {what}"
                    f" {fwmark} (see: ip rule show); give this client another fwmark (it numbers its table too)")
    return None
