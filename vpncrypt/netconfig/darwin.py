"""macOS network configuration with ifconfig(8) and route(8), as wg-quick does it.

The kernel names the utun interface when it is opened, so the daemon plans
again with the opened device's name; until then (``--dry-run``) a name that
is not ``utunN`` shows as ``utun?``. The interface is point-to-point: an IPv4
address takes its own address as destination (wg-quick's form), and the
tunnel network is routed explicitly, since the kernel routes only the
destination. IPv6 addresses are set as /128, for which the kernel adds no
prefix route of its own, so that route too is the plan's, added once.

macOS's route(8) exits 0 even when the kernel refused (network_cmds
route.c: ``newroute(); exit(0)``) and prints its result on stdout whatever
``-q`` says; a refusal also writes ``route: writing to routing socket: ...``
on stderr. So each route command runs inside ``sh -c`` that turns anything
on stderr into a failure (``checked``): an add that did not happen stops the
setup, and a delete with nothing to delete fails, which is what ``apply``'s
clearing of leftovers counts on.

Routes through utun go with it when the process closes it. The full
tunnel (0/1 and 128/1, ::/1 and 8000::/1, and the server's host route
through the default gateway, found when the plan runs) is FreeBSD's; see
``netconfig.freebsd``. The client's DNS servers, if any, are set through
scutil (``netconfig.dns``).
"""

from __future__ import annotations

import ipaddress
import re

from . import Network, NetworkPlan, TunnelSpec
from .bsd import BLACKHOLE, FAMILY, OWN_FLAG, full_tunnel, networks, owned

UNKNOWN_NAME = "utun?"  # what --dry-run shows before the kernel has named the device
# Fails when route(8) wrote to stderr; its result line on stdout goes nowhere.
CHECK = "2>&1 >/dev/null | grep . >&2"
CHECKED = f'! route "$@" {CHECK}'


def plan(spec: TunnelSpec) -> NetworkPlan:
    """The ifconfig and route commands for ``spec``; raises NetconfigError
    for a full tunnel without the server's address."""
    interface = spec.interface if re.fullmatch(r"utun[0-9]+", spec.interface) else UNKNOWN_NAME
    setup = [["ifconfig", interface, "mtu", str(spec.mtu)]]
    for address in spec.addresses:
        if address.version == 4:
            setup.append(["ifconfig", interface, "inet", str(address), str(address.ip), "alias"])
        else:
            setup.append(["ifconfig", interface, "inet6", f"{address.ip}/128", "alias"])
    setup.append(["ifconfig", interface, "up"])
    setup += [checked("add", FAMILY[net.version], str(net), "-interface", interface) for net in networks(spec)]
    tunnel_setup, teardown = full_tunnel(
        spec, lambda version, prefix: checked("add", FAMILY[version], prefix, "-interface", interface),
        server_route, server_unroute)
    return NetworkPlan(setup + tunnel_setup, teardown)


def route_command(action: str, network: Network, interface: str) -> list[str]:
    """``route add`` of ``network`` through ``interface``, as the plan routes, or
    ``route delete`` of it (which names the destination only, route(8))."""
    through = ["-interface", interface] if action == "add" else []
    return checked(action, FAMILY[network.version], str(network), *through)


def checked(*arguments: str) -> list[str]:
    """``route -q -n ARGUMENTS`` that fails when the kernel refused."""
    return ["sh", "-c", CHECKED, "route", "-q", "-n", *arguments]


def server_route(server: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    """A host route to ``server`` through the default gateway of its family,
    found when it runs; a blackhole if there is none (or it is no address,
    such as ``link#4``, which wg-quick skips too)."""
    family = FAMILY[server.version]
    add = f"route -q -n add {family} -host {server} {OWN_FLAG}"
    return ["sh", "-c", (
        f'gateway=$(route -n get {family} default 2>/dev/null | sed -n "s/^ *gateway: //p"); '
        f'case $gateway in *[.:]*) ! {add} -gateway "$gateway" {CHECK};; '
        f"*) ! {add} {BLACKHOLE[server.version]} -blackhole {CHECK};; esac"
    )]


def server_unroute(server: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    """Delete the host route to ``server`` if it is vpncrypt's (``bsd.owned``);
    fails if there is none or the kernel refused, so that ``apply``'s clearing stops."""
    delete = f"route -q -n delete {FAMILY[server.version]} -host {server}"
    return ["sh", "-c", f"{owned(server)} || exit 1; ! {delete} {CHECK}"]
