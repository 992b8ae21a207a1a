"""What FreeBSD's and macOS's plans share: the same route(8) families, and a full
tunnel the way wg-quick does it there (no policy routing): the two halves of the
address space into the tunnel, each more specific than the default route, and a
host route to the server through the old gateway, added first, so that the
tunnel's own datagrams never go into it.

That host route is the one route that outlives the interface, so it is the
one a teardown deletes, also at start after a ``kill -9``. It carries route(8)'s
``-proto1`` (RTF_PROTO1, a "protocol specific routing flag" neither kernel
interprets) as vpncrypt's mark, and the teardown deletes a host route to the
server only if ``route get`` shows it with that flag (``owned``): another
host route to the server, the operator's, is never deleted, and makes the
start stop at "File exists" instead (``netconfig.apply``)."""

from __future__ import annotations

import ipaddress
from typing import Callable

from . import Network, NetconfigError, TunnelSpec

FAMILY = {4: "-inet", 6: "-inet6"}
HALVES = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}  # together the default route
BLACKHOLE = {4: "127.0.0.1", 6: "::1"}  # route(8) wants a gateway even for a blackhole
OWN_FLAG = "-proto1"  # on the server's host route: vpncrypt's (RTF_PROTO1, shown as PROTO1 by route get)

Command = list[str]


def networks(spec: TunnelSpec) -> list[Network]:
    """The tunnel networks of our addresses, then the configured routes, each
    once; a default route is left to the halves."""
    found = [a.network for a in spec.addresses if a.network.prefixlen < a.max_prefixlen]
    found += [route for route in spec.routes if route.prefixlen]
    return list(dict.fromkeys(found))


def owned(server: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """A shell test that succeeds if the route ``route -n get`` finds for
    ``server`` carries OWN_FLAG. Where there is a host route to ``server``
    that is the one found; where there is none, the delete that follows
    fails whatever was found (``-host``: nothing else can go)."""
    return f'route -n get {FAMILY[server.version]} -host {server} 2>/dev/null | grep -q "^ *flags: <.*PROTO1"'


def full_tunnel(spec: TunnelSpec, through: Callable[[int, str], Command], server_route: Callable[..., Command],
                server_unroute: Callable[..., Command]) -> tuple[list[Command], list[Command]]:
    """(setup, teardown) for the default routes in ``spec``: ``through(version,
    prefix)`` routes a prefix into the tunnel, ``server_route(server)`` and
    ``server_unroute(server)`` add and delete the host route to the server.
    Raises NetconfigError if a default route has no server address to keep out."""
    setup: list[Command] = []
    teardown: list[Command] = []
    defaults = sorted({route.version for route in spec.routes if route.prefixlen == 0})
    if defaults and spec.server_address is None:
        raise NetconfigError("a default route through the tunnel needs the server's address, to route it outside")
    server = spec.server_address
    if server is not None and server.version in defaults:
        setup.append(server_route(server))
        teardown.append(server_unroute(server))
    for version in defaults:
        setup += [through(version, half) for half in HALVES[version]]
    return setup, teardown
