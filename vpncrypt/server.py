"""vpncrypt server: one UDP transport, one TUN device, any number of clients."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from . import netconfig
from .config import ServerConfig
from .core.server import ServerCore
from .daemon import Daemon, run_until_signalled, tunnel_and_transport
from .transport import format_endpoint
from .transport.udp import open_server_transport

log = logging.getLogger("vpncrypt.server")


def build_core(config: ServerConfig, now: float) -> ServerCore:
    """The core for ``config`` at ``now`` (Unix seconds)."""
    return ServerCore(
        config.server_id, config.clients, now, time_window=config.time_window,
        client_to_client=config.client_to_client,
    )


def server_status(core: ServerCore) -> dict[str, Any]:
    """The core's status with endpoints as 'address:port'."""
    status = core.status()
    for client in status["clients"]:
        client["endpoint"] = format_endpoint(client["endpoint"])
    return status


def tunnel_spec(config: ServerConfig) -> netconfig.TunnelSpec:
    """The server's tunnel: its addresses and MTU, no routes of its own."""
    return netconfig.TunnelSpec(config.interface, config.tunnel, config.mtu)


def run_server(config: ServerConfig) -> int:
    """Serve until SIGINT or SIGTERM; the TUN device goes away with the process's hold on it."""
    core = build_core(config, time.time())
    listen = functools.partial(open_server_transport, config.listen_address, config.port)
    with tunnel_and_transport(tunnel_spec(config), config.offload, listen) as (tun, transport):
        daemon = Daemon(tun, transport, core, status=lambda: server_status(core))
        log.info(
            "server %d listening on UDP port %d, interface %s, %d clients",
            config.server_id, config.port, tun.name, len(config.clients),
        )
        run_until_signalled(daemon)
    return 0
