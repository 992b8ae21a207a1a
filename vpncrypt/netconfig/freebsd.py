"""FreeBSD network configuration with ifconfig(8) and route(8).

The tun(4) interface is point-to-point. The kernel refuses an IPv4 address
on it without a destination (EDESTADDRREQ) and then routes only that
destination to the interface, never the prefix (sys/netinet/in.c). The
destination given is an address of the tunnel network that no host has
(its first or last), not our own: for a destination equal to its own
address the kernel adds no loopback route (``ia_need_loopback_route``), and
traffic to it would leave through the tunnel. IPv6 addresses are set as
/128, for which the kernel adds no on-link prefix route (netinet6/in6.c adds
one for any other length). So every network route is the plan's own, added
exactly once, and an add that fails is a real conflict: route(8) exits 1
("route already in table").

Routes through the interface go with it, and the TUN device destroys the
interface when it closes. What outlives it is the full tunnel's route to the
server, so that one is in the teardown, which ``apply`` also runs first to
clear what a killed run left; it deletes only the route vpncrypt made
(``-proto1``, see ``netconfig.bsd``).

A full tunnel is done as wg-quick does it here: 0.0.0.0/1 and 128.0.0.0/1
(::/1 and 8000::/1) into the tunnel, which beat the default route without
replacing it, and a host route to the server through the default gateway,
so the tunnel's own datagrams stay outside it. The gateway is found when
the plan runs (``route -n get default`` in a small ``sh -c``, printed as it is
by ``--dry-run``); with no default gateway the server is blackholed rather
than routed into the tunnel, which would loop. It is found once, at start: a
network change later (a new gateway, a server name that moves) is not
followed, as wg-quick's ``route monitor`` does. Commands are bare names
(``ifconfig``, ``route``), found on the PATH as rc.d sets it (/sbin first).
"""

from __future__ import annotations

import ipaddress

from . import Network, NetworkPlan, TunnelSpec
from .bsd import BLACKHOLE, FAMILY, OWN_FLAG, full_tunnel, networks, owned



def plan(spec: TunnelSpec) -> NetworkPlan:
    """The ifconfig and route commands for ``spec``; raises NetconfigError
    for a full tunnel without the server's address."""
    interface = spec.interface
    ipv6 = any(address.version == 6 for address in spec.addresses)
    setup = [["ifconfig", interface, "mtu", str(spec.mtu)]]
    if ipv6:
        # No link-local address (a tunnel has no neighbours) and no duplicate
        # detection: a new address is usable at once instead of a second later.
        setup.append(["ifconfig", interface, "inet6", "-auto_linklocal", "no_dad"])
    for address in spec.addresses:
        if address.version == 4:
            setup.append(["ifconfig", interface, "inet", str(address), str(_destination(address)), "alias"])
        else:
            setup.append(["ifconfig", interface, "inet6", f"{address.ip}/128", "alias"])
    if ipv6:
        # New interfaces start with IPv6 disabled (unless ipv6_activate_all_interfaces);
        # after the addresses, since devd may disable it again as they come (FreeBSD bug 248172).
        setup.append(["ifconfig", interface, "inet6", "-ifdisabled"])
    setup.append(["ifconfig", interface, "up"])
    setup += [_through(interface, net.version, str(net)) for net in networks(spec)]
    tunnel_setup, teardown = full_tunnel(
        spec, lambda version, prefix: _through(interface, version, prefix), server_route, server_unroute)
    return NetworkPlan(setup + tunnel_setup, teardown)


def server_route(server: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    """A host route to ``server`` through the default gateway of its family,
    found when it runs; a blackhole if there is none (or it is no address,
    such as ``link#2``). ``-host``: route(8) would read an address ending in
    .0 as a network otherwise."""
    family = FAMILY[server.version]
    add = f"route -q -n add {family} -host {server} {OWN_FLAG}"
    return ["sh", "-c", (
        f'gateway=$(route -n get {family} default 2>/dev/null | sed -n "s/^ *gateway: //p"); '
        f'case $gateway in *[.:]*) exec {add} -gateway "$gateway";; esac; '
        f"exec {add} {BLACKHOLE[server.version]} -blackhole"
    )]


def server_unroute(server: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    """Delete the host route to ``server`` if it is vpncrypt's (``bsd.owned``);
    fails if there is none, so that ``apply``'s clearing stops."""
    return ["sh", "-c", f"{owned(server)} || exit 1; exec route -q -n delete {FAMILY[server.version]} -host {server}"]


def route_command(action: str, network: Network, interface: str) -> list[str]:
    """``route add`` of ``network`` through ``interface``, as the plan routes, or
    ``route delete`` of it (which names the destination only, route(8))."""
    through = ["-interface", interface] if action == "add" else []
    return ["route", "-q", "-n", action, FAMILY[network.version], str(network), *through]


def _through(interface: str, version: int, destination: str) -> list[str]:
    return ["route", "-q", "-n", "add", FAMILY[version], destination, "-interface", interface]


def _destination(address: ipaddress.IPv4Interface) -> ipaddress.IPv4Address:
    """The point-to-point destination: the network's first or last address,
    whichever is not ours (our own only for a /32)."""
    network = address.network
    return next((a for a in (network.network_address, network.broadcast_address) if a != address.ip), address.ip)
