"""vpncrypt client: its TUN device, one UDP transport, one server."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from . import control, key_store, netconfig
from .config import ClientConfig, parse_endpoint
from .core.client import ClientCore
from .daemon import Daemon, run_until_signalled, tunnel_and_transport
from .events import EventWatch
from .netconfig import dns, resolv_conf
from .restart_state import RestartStore
from .transport import format_endpoint, socket_options
from .transport.udp import open_client_transport

log = logging.getLogger("vpncrypt.client")


class ResolveError(Exception):
    """The server's name does not resolve; the message names it."""


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
        """Schedule the first lookup, ``interval`` seconds from now (on the running loop)."""
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


def tunnel_spec(config: ClientConfig, server_address: Any = None) -> netconfig.TunnelSpec:
    """What the client's tunnel needs; ``server_address`` is the server's
    socket address once resolved (a dry run may not resolve). With ``dns``,
    how this system sets resolvers is probed (netconfig.dns.probe)."""
    return netconfig.TunnelSpec(
        config.interface, config.addresses, config.mtu, config.routes,
        server_address=ipaddress.ip_address(server_address[0]) if server_address else None,
        fwmark=config.fwmark,
        dns=dns_spec(config, dns.probe()) if config.dns else None,
        kill_switch=config.kill_switch,
    )


def dns_spec(config: ClientConfig, manager: str) -> dns.DnsSpec:
    """The client's resolvers, set through ``manager``; the file manager keeps
    the original resolv.conf as STATE_DIRECTORY/NAME.resolv.conf.json."""
    name = config.path.stem
    return dns.DnsSpec(config.dns, config.dns_search, name, manager, resolv_conf_backup(config))


def resolv_conf_backup(config: ClientConfig) -> Path:
    return config.state_directory / f"{config.path.stem}.resolv.conf.json"


def client_status(core: ClientCore) -> dict[str, Any]:
    """The core's status with the server's endpoint as 'address:port'."""
    status = core.status()
    status["server"]["endpoint"] = format_endpoint(status["server"]["endpoint"])
    return status


STATUS_FORMAT = 1  # as the server's (vpncrypt.server.STATUS_FORMAT)


class LiveClient:
    """The running client as the operator sees it: ``vpncrypt show`` and events
    about its server. A client cannot reload: its key, ID and addresses are
    all it is, so it says to restart it."""

    def __init__(self, config: ClientConfig, core: ClientCore, daemon: Daemon, *, name: str, interface: str,
                 clock=time.time) -> None:
        self.config, self.core, self.daemon = config, core, daemon
        self.name, self.interface, self.clock = name, interface, clock
        self.started = clock()
        # The server does not answer keepalives: an idle tunnel hears nothing, so silence says nothing.
        self.watch = EventWatch(format_endpoint, self.started, time_window=config.time_window,
                                silent_after=float("inf"), who=lambda _peer: "the server")
        daemon.tick = self.tick

    def handlers(self) -> dict[str, control.Handler]:
        return {"show": self.show, "reload": self.reload_request}

    async def show(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {"status": self.status()}

    async def reload_request(self, _request: dict[str, Any]) -> dict[str, Any]:
        raise control.RequestError(f"{self.config.path}: a client cannot reload its config; restart it", 2)

    def status(self) -> dict[str, Any]:
        """The stable JSON of ``vpncrypt show --json`` for a client (README, "Operating"); no key material."""
        now = self.clock()
        peer = self.core.server
        return {
            "format": STATUS_FORMAT,
            "role": "client",
            "name": self.name,
            "config": str(self.config.path),
            "pid": os.getpid(),
            "interface": self.interface,
            "client_id": peer.client_id,
            "server_id": peer.server_id,
            "addresses": [str(address) for address in self.config.addresses],
            "started": self.started,
            "now": now,
            "server": {
                "endpoint": format_endpoint(peer.endpoint),
                "last_datagram": self.watch.heard_at(peer, now),
                "rx_bytes": peer.rx_bytes,
                "rx_packets": peer.rx_packets,
                "tx_bytes": peer.tx_bytes,
                "tx_packets": peer.tx_packets,
                "auth_failures": peer.auth_failures,
                "time_drops": peer.time_drops,
            },
            "clock_offset": self.core.clock_offset,
            "drops": dict(self.core.drops),
            "tun_write_refused": self.daemon.tun_refused,
            "udp_send_errors": self.daemon.transport.send_errors,
        }

    def tick(self, now: float) -> None:
        lines = self.watch.tick(now, [self.core.server], send_errors=self.daemon.transport.send_errors,
                                tun_refused=self.daemon.tun_refused)
        for level, line in lines:
            log.log(level, "%s", line)


def run_client(config: ClientConfig) -> int:
    """Run until SIGINT or SIGTERM. Raises ResolveError if the server's name does
    not resolve, ControlError (an OSError) if a daemon of the same name runs."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop takes it over
    host, port = parse_endpoint(config.server)
    family, endpoint = resolve(host, port)
    store = RestartStore(config.state_directory, config.path.stem)
    store.prepare()
    saved = store.load()
    core = ClientCore(
        config.client_id, config.key, server_id=config.server_id, server_endpoint=endpoint,
        routes=config.allowed_sources, now=time.time(), time_window=config.time_window,
        keepalive_interval=config.keepalive, mtu=config.mtu,
        key_epoch=config.key_epoch, epoch_seconds=config.epoch_seconds,
        restart_bounds=saved if saved is not None else {}, restart_state_lost=saved is None,
    )
    spec = tunnel_spec(config, endpoint)
    if spec.dns is not None:
        log.info("DNS: %s through %s", ", ".join(map(str, config.dns)), dns.describe_manager(spec.dns.manager))
    elif resolv_conf.restore(resolv_conf_backup(config)):
        # A run with dns that was killed; the config has none now, so no plan would put it back.
        log.warning("put back %s, which a client with dns that was killed had left changed", resolv_conf.TARGET)
    # With the default route in the tunnel, the tunnel's own datagrams are marked to keep the main table's.
    # Where the platform marks packets (SO_MARK), a full tunnel's own datagrams
    # carry the mark that keeps them on the main table's routes; elsewhere the
    # plan keeps a host route to the server outside the tunnel instead.
    marked = spec.full_tunnel and socket_options().mark is not None
    open_transport = functools.partial(open_client_transport, family, fwmark=config.fwmark if marked else 0,
                                       offload=config.offload)
    name = config.path.stem
    control_server = control.ControlServer.bind(control.socket_path(name))
    try:
        with tunnel_and_transport(spec, config.offload, open_transport) as (tun, transport):
            daemon = Daemon(tun, transport, core, status=lambda: client_status(core), control=control_server,
                            restart_store=store,
                            key_store_path=key_store.store_path(config.state_directory, config.path.stem))
            control_server.handlers = LiveClient(config, core, daemon, name=name, interface=tun.name).handlers()
            log.info("client %r (ID %d) to server %s, interface %s",
                     config.name, config.client_id, format_endpoint(endpoint), tun.name)
            on_start = None
            if is_name(host) and config.resolve_interval:
                on_start = ServerLookups(core, host, port, family, config.resolve_interval).start
            run_until_signalled(daemon, on_start=on_start)
    finally:
        control_server.discard()
    return 0
