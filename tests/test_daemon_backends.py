"""The whole daemon over the FreeBSD and macOS TUN backends: a server and a client Daemon
over loopback UDP, each on a backend whose kernel is faked (tests/tun/fake_kernel.py), so
the backend's framing runs inside the real event loop. A ping goes up and its reply down,
each as the kernel hands it over and gets it: address family first."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import socket
import struct
import time

import pytest

from tests.builders import ipv4_packet, ipv6_packet
from tests.tun.fake_kernel import (
    DARWIN_INET6, FREEBSD_INET6, darwin_over_socketpair, freebsd_over_socketpair, framed,
)
from vpncrypt.core.client import ClientCore
from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.daemon import Daemon
from vpncrypt.transport.options import NO_OPTIONS
from vpncrypt.transport.udp import open_client_transport, open_server_transport

KEY = os.urandom(64)
KEY_EPOCH = int(time.time()) // 3600 - 1  # the key of the previous hour: a step to derive
BACKENDS = {  # opens the device with its fake kernel; that OS's AF_INET6 header
    "freebsd": (lambda: freebsd_over_socketpair("vc0"), FREEBSD_INET6),
    "darwin": (lambda: darwin_over_socketpair("utun"), DARWIN_INET6),
}
SERVER = {4: "203.0.113.1", 6: "2001:db8:7::1"}
CLIENT = {4: "203.0.113.2", 6: "2001:db8:7::2"}


def ping(source: str, destination: str, kind: int) -> bytes:
    """An ICMP echo (``kind`` 8 request, 0 reply; ICMPv6's 128 and 129) with 56 bytes of
    data, ping's default: 84 bytes in IPv4, 104 in IPv6. No checksum: nothing checks it."""
    body = struct.pack("!BBHHH", kind, 0, 0, 0x7663, 1) + bytes(range(56))
    if ipaddress.ip_address(source).version == 4:
        return ipv4_packet(source, destination, body, proto=1)
    return ipv6_packet(source, destination, body, next_header=58)


async def frames_from(peer: socket.socket, deadline: float) -> list[bytes]:
    """What the device wrote to its kernel, once something has come (or at ``deadline``)."""
    while time.monotonic() < deadline:
        try:
            return [peer.recv(65536)]
        except BlockingIOError:
            await asyncio.sleep(0.005)
    return []


async def ping_through(server_os: str, client_os: str, version: int):
    now = time.time()
    addresses = tuple(ipaddress.ip_network(CLIENT[v]) for v in (4, 6))
    server_core = ServerCore(3, [ClientEntry(1, KEY, KEY_EPOCH, addresses, "a")], now)
    server_transport = open_server_transport("127.0.0.1", 0, options=NO_OPTIONS)
    port = server_transport.sock.getsockname()[1]
    client_core = ClientCore(1, KEY, key_epoch=KEY_EPOCH, server_id=3, server_endpoint=("127.0.0.1", port), now=now,
                             routes=[ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8:7::/64")])
    client_transport = open_client_transport(socket.AF_INET, options=NO_OPTIONS)
    (server_tun, server_kernel, _), server_inet6 = BACKENDS[server_os][0](), BACKENDS[server_os][1]
    (client_tun, client_kernel, _), client_inet6 = BACKENDS[client_os][0](), BACKENDS[client_os][1]
    server = Daemon(server_tun, server_transport, server_core)
    client = Daemon(client_tun, client_transport, client_core)
    tasks = [asyncio.create_task(server.run()), asyncio.create_task(client.run())]
    try:
        deadline = time.monotonic() + 10
        while server_core.peers[1].endpoint is None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # the client's first keepalive
        request = ping(CLIENT[version], SERVER[version], 8 if version == 4 else 128)
        reply = ping(SERVER[version], CLIENT[version], 0 if version == 4 else 129)
        client_kernel.send(framed(request, client_inet6))
        up = await frames_from(server_kernel, deadline)
        server_kernel.send(framed(reply, server_inet6))
        down = await frames_from(client_kernel, deadline)
        return (up, [framed(request, server_inet6)]), (down, [framed(reply, client_inet6)]), server.status()
    finally:
        server.stop()
        client.stop()
        await asyncio.gather(*tasks)
        for closable in (server_transport, client_transport, server_tun, client_tun, server_kernel, client_kernel):
            closable.close()


def blocked(*_) -> None:
    raise TimeoutError("the run hung: a device call blocked the loop")


@pytest.fixture(autouse=True)
def no_hang():
    previous = signal.signal(signal.SIGALRM, blocked)
    signal.setitimer(signal.ITIMER_REAL, 20)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("server_os, client_os", [
    ("freebsd", "freebsd"), ("freebsd", "darwin"), ("darwin", "darwin"), ("darwin", "freebsd"),
])
def test_a_ping_crosses_both_daemons_on_bsd_backends(server_os, client_os, version):
    (up, sent_up), (down, sent_down), status = asyncio.run(ping_through(server_os, client_os, version))
    assert up == sent_up  # as the server's kernel gets it: its own family number first
    assert down == sent_down
    assert status["clients"][0]["rx_packets"] == 1 and status["tun_write_refused"] == 0
