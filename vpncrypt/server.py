"""vpncrypt server: one UDP socket, one TUN device, any number of clients."""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from typing import Any

from . import netconfig
from .config import ServerConfig
from .daemon import Daemon, run_until_signalled, tunnel_and_socket
from .core.server import ClientEntry, ServerCore
from .transport.udp import UdpBatcher, format_endpoint, open_listening_socket

log = logging.getLogger("vpncrypt.server")


def build_core(config: ServerConfig, now: float) -> ServerCore:
    clients = [ClientEntry(c.client_id, c.key, c.addresses, c.name) for c in config.clients]
    return ServerCore(
        config.server_id, clients, now, time_window=config.time_window, client_to_client=config.client_to_client,
    )


def server_status(core: ServerCore) -> dict[str, Any]:
    status = core.status()
    for client in status["clients"]:
        client["endpoint"] = format_endpoint(client["endpoint"])
    return status


def network_plan(config: ServerConfig) -> netconfig.NetworkPlan:
    return netconfig.backend().plan(config.interface, config.tunnel, config.mtu)


def run_server(config: ServerConfig) -> int:
    """Serve until SIGINT or SIGTERM; the TUN device goes away with the process's hold on it."""
    core = build_core(config, time.time())
    listen = functools.partial(open_listening_socket, config.listen_address, config.port)
    with tunnel_and_socket(config.interface, config.offload, network_plan(config), listen) as (tun, sock):
        # Listening on every address, answer each client from the one it sent to.
        udp = UdpBatcher(sock, reply_from_destination=ipaddress.ip_address(config.listen_address).is_unspecified)
        daemon = Daemon(
            tun, udp, from_network=core.datagrams_received,
            from_tun=core.tun_packets_received, status=lambda: server_status(core),
        )
        log.info(
            "server %d listening on UDP port %d, interface %s, %d clients",
            config.server_id, config.port, tun.name, len(config.clients),
        )
        run_until_signalled(daemon)
    return 0
