"""vpncrypt client: its TUN device, one UDP socket, one server."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import time
from typing import Any

from . import netconfig
from .core.client import ClientCore
from .config import ClientConfig, parse_endpoint
from .daemon import Daemon, run_until_signalled, tunnel_and_socket
from .transport.udp import UdpBatcher, format_endpoint, open_client_socket

log = logging.getLogger("vpncrypt.client")


class ResolveError(Exception):
    pass


class ServerLookups:
    """Looks a server given by name up again every ``interval`` seconds, as a
    roaming server with a dynamic address needs (wg-quick leaves this to a
    script). The core decides whether to move; a failed lookup keeps the
    address the client has, with one warning until lookups work again."""

    def __init__(self, core: ClientCore, host: str, port: int, family: int, interval: float) -> None:
        self.core = core
        self.host, self.port, self.family, self.interval = host, port, family, interval
        self.failing = False
        self._lookup: asyncio.Task | None = None  # kept: the loop holds tasks only weakly

    def start(self) -> None:
        asyncio.get_running_loop().call_later(self.interval, self._due)

    def _due(self) -> None:
        self._lookup = asyncio.get_running_loop().create_task(self.look_up())

    async def look_up(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, family=self.family, type=socket.SOCK_DGRAM)
        except OSError as error:  # socket.gaierror included
            if not self.failing:
                log.warning("cannot look up server %r again (%s); staying at %s", self.host,
                            getattr(error, "strerror", None) or error, format_endpoint(self.core.server.endpoint))
            self.failing = True
        else:
            self.failing = False
            before = self.core.server.endpoint
            moved = self.core.server_resolved([info[4] for info in infos])
            if moved is not None:
                log.info("server %r is now at %s (was %s)", self.host, format_endpoint(moved), format_endpoint(before))
        loop.call_later(self.interval, self._due)


def is_name(host: str) -> bool:
    """True for a host name, False for an address literal (never looked up again)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def resolve(host: str, port: int) -> tuple[int, Any]:
    """(address family, socket address) of the server, from a name or a literal."""
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
    host, port = parse_endpoint(config.server)
    family, endpoint = resolve(host, port)
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
        lookups = None
        if is_name(host) and config.resolve_interval:
            lookups = ServerLookups(core, host, port, family, config.resolve_interval)

        def on_start() -> None:
            schedule_keepalives(core, udp, daemon.clock)
            if lookups is not None:
                lookups.start()

        run_until_signalled(daemon, on_start=on_start)
    return 0
