"""What FreeBSD's and macOS's plans share: the same route(8) families, and a full
tunnel the way wg-quick does it there (no policy routing): the two halves of the
address space into the tunnel, each more specific than the default route, and a
host route to the server through the old gateway, added first, so that the
tunnel's own datagrams never go into it."""

from __future__ import annotations

from typing import Callable

from . import Network, NetconfigError, TunnelSpec

FAMILY = {4: "-inet", 6: "-inet6"}
HALVES = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}  # together the default route
BLACKHOLE = {4: "127.0.0.1", 6: "::1"}  # route(8) wants a gateway even for a blackhole

Command = list[str]


def networks(spec: TunnelSpec) -> list[Network]:
    """The tunnel networks of our addresses, then the configured routes, each
    once; a default route is left to the halves."""
    found = [a.network for a in spec.addresses if a.network.prefixlen < a.max_prefixlen]
    found += [route for route in spec.routes if route.prefixlen]
    return list(dict.fromkeys(found))


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
