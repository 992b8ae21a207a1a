"""The UDP side: sockets set up for a VPN, batch receive and send that never block."""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from typing import Any

_BUFFER_BYTES = 4 << 20
# Linux's SO_RCVBUFFORCE and SO_SNDBUFFORCE, which Python does not name: as
# root they pass net.core.[rw]mem_max.
_FORCE = {socket.SO_RCVBUF: 33, socket.SO_SNDBUF: 32} if sys.platform.startswith("linux") else {}


def _grow_buffers(sock: socket.socket) -> None:
    """Room for bursts of datagrams."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, _FORCE[option], _BUFFER_BYTES)
        except (KeyError, OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, _BUFFER_BYTES)


def open_listening_socket(address: str, port: int) -> socket.socket:
    """A non-blocking UDP socket on ``address``:``port``; '::' takes IPv4 and IPv6 alike."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        _grow_buffers(sock)
        sock.bind((address, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise OSError(error.errno, f"UDP port {port} is already in use") from None
        raise OSError(error.errno, f"cannot listen on UDP {address} port {port}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


def open_client_socket(family: int) -> socket.socket:
    """Unbound until the first send and unconnected, so the kernel picks the
    source address afresh for each datagram: a new address after roaming is
    used at once."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    _grow_buffers(sock)
    sock.setblocking(False)
    return sock


def format_endpoint(endpoint: Any) -> str | None:
    """'198.51.100.7:4000' or '[2001:db8::7]:4000', IPv4-mapped IPv6 shown as IPv4."""
    if endpoint is None:
        return None
    host, port = endpoint[0], endpoint[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class UdpBatcher:
    """Batch receive and send on one socket; errors are counted, never raised."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray(65536)
        self._view = memoryview(self._buffer)
        self.send_errors = 0

    def receive(self, limit: int) -> list[tuple[bytes, Any]]:
        datagrams = []
        receive_into, buffer, view = self.sock.recvfrom_into, self._buffer, self._view
        while len(datagrams) < limit:
            try:
                size, address = receive_into(buffer)
            except BlockingIOError:
                break
            except OSError:
                # ICMP errors surface here (ECONNREFUSED ...): nothing to read.
                continue
            datagrams.append((bytes(view[:size]), address))
        return datagrams

    def send(self, datagrams: list[tuple[bytes, Any]]) -> None:
        sendto = self.sock.sendto
        for datagram, endpoint in datagrams:
            try:
                sendto(datagram, endpoint)
            except OSError:
                # Full buffer, network down, no route: lost like on any
                # network, and the tunnel carries on when the network is back.
                self.send_errors += 1
