"""vpncrypt client: its TUN device, one UDP socket, one server."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from typing import Any

from . import netconfig
from .client_core import ClientCore
from .config import ClientConfig, parse_endpoint
from .daemon import Daemon, run_until_signalled, tunnel_and_socket
from .udp import UdpBatcher, format_endpoint, open_client_socket

log = logging.getLogger("vpncrypt.client")


class ResolveError(Exception):
    pass


def resolve(server: str) -> tuple[int, Any]:
    """(address family, socket address) of the server, from a name or a literal."""
    host, port = parse_endpoint(server)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as error:
        raise ResolveError(f"cannot resolve server {host!r}: {error.strerror}") from None
    family, _, _, _, address = infos[0]
    return family, address


def network_plan(config: ClientConfig) -> netconfig.NetworkPlan:
    return netconfig.backend().plan(config.interface, config.addresses, config.mtu, config.routes, config.fwmark)


def has_default_route(config: ClientConfig) -> bool:
    return any(route.prefixlen == 0 for route in config.routes)


def client_status(core: ClientCore) -> dict[str, Any]:
    status = core.status()
    status["server"]["endpoint"] = format_endpoint(status["server"]["endpoint"])
    return status


def schedule_keepalives(core: ClientCore, udp: UdpBatcher, clock) -> None:
    """Send the first keepalive now, then whenever the core's timer is due."""
    loop = asyncio.get_running_loop()

    def due() -> None:
        now = clock()
        udp.send(core.handle_timer(now))
        deadline = core.next_timer()
        if deadline is not None:
            loop.call_later(max(deadline - now, 0.05), due)

    udp.send(core.start(clock()))
    if core.next_timer() is not None:
        loop.call_later(core.keepalive_interval, due)


def run_client(config: ClientConfig) -> int:
    family, endpoint = resolve(config.server)
    core = ClientCore(
        config.client_id, config.key, server_id=config.server_id, server_endpoint=endpoint,
        routes=config.allowed_sources, now=time.time(), time_window=config.time_window,
        keepalive_interval=config.keepalive,
    )
    # With the default route in the tunnel, the tunnel's own datagrams are marked to keep the main table's.
    open_socket = functools.partial(open_client_socket, family, config.fwmark if has_default_route(config) else 0)
    with tunnel_and_socket(config.interface, config.offload, network_plan(config), open_socket) as (tun, sock):
        udp = UdpBatcher(sock)
        daemon = Daemon(
            tun, udp, from_network=lambda d, now: (core.datagrams_received(d, now), []),
            from_tun=core.tun_packets_received, status=lambda: client_status(core),
        )
        log.info("client %r (ID %d) to server %s, interface %s",
                 config.name, config.client_id, format_endpoint(endpoint), tun.name)
        run_until_signalled(daemon, on_start=lambda: schedule_keepalives(core, udp, daemon.clock))
    return 0
