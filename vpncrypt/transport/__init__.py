"""The network side: one small Transport surface, socket options per OS.

A transport moves batches of ``(datagram, endpoint)`` pairs. An endpoint is
whatever the transport hands out with a received datagram and takes back to
send to the same place: the cores only compare and store it, never look
inside. ``udp.py`` is the one transport today (TCP comes later); which socket
options exist is the OS module's business (``linux.py``, ``freebsd.py``,
``darwin.py``), chosen here by platform, so nothing outside this package
knows which OS it runs on.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

from .options import NO_OPTIONS, SocketOptions


class Transport(Protocol):
    """What the event loop needs of a transport; errors are counted, never raised."""

    send_errors: int  # datagrams the kernel refused (full buffer, no route ...), lost as on any network

    def fileno(self) -> int:
        """For the event loop: readable when datagrams are waiting."""

    def receive(self, limit: int) -> list[tuple[bytes, Any]]:
        """Up to ``limit`` waiting ``(datagram, endpoint)`` pairs without blocking
        (possibly none). A datagram the kernel truncated is skipped."""

    def send(self, datagrams: list[tuple[bytes, Any]]) -> None:
        """Send each datagram to its endpoint, in order, without blocking;
        what the kernel refuses is added to ``send_errors``."""

    def refuse_client_ids(self, client_ids: list[int]) -> bool:
        """Have the kernel drop datagrams naming these client IDs before they
        reach us (the set replaces the previous one; empty: none), where the
        platform can. True if the kernel refuses exactly these now; False
        where the platform cannot (nothing changes) or the kernel said no."""

    def close(self) -> None:
        """Let go of the socket; safe to call twice."""


def socket_options(platform: str = sys.platform) -> SocketOptions:
    """The socket options ``platform`` has, by their numbers on that OS."""
    if platform.startswith("linux"):
        from .linux import LINUX

        return LINUX
    if platform.startswith("freebsd"):
        from .freebsd import FREEBSD

        return FREEBSD
    if platform.startswith("darwin"):
        from .darwin import DARWIN

        return DARWIN
    return NO_OPTIONS


def format_endpoint(endpoint: Any) -> str | None:
    """'198.51.100.7:4000' or '[2001:db8::7]:4000' (IPv4-mapped IPv6 shown as
    IPv4) for logs and status; None for no endpoint."""
    if endpoint is None:
        return None
    if isinstance(endpoint[0], tuple):
        endpoint = endpoint[0]  # (address, the local address it was sent to): see UdpTransport
    host, port = endpoint[0], endpoint[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
