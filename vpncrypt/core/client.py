"""The client's decisions, without I/O: sealing for its one server, keepalives, filtering.

Keepalives follow WireGuard's persistent keepalive: one at start, so the server
learns the client's address at once, then one whenever nothing has been sent
for ``keepalive_interval`` seconds, so NAT mappings stay open.
"""

from __future__ import annotations

from typing import Any, Iterable

from . import drops as reasons
from .inner import Network, PrefixTable
from .peer import Peer
from .receive import open_datagrams
from .wire import DEFAULT_TIME_WINDOW, KIND_DATA, KIND_KEEPALIVE, TO_CLIENT, TO_SERVER


class ClientCore:
    """One client's state for its server."""

    def __init__(
        self,
        client_id: int,
        key: bytes,
        *,
        server_id: int,
        server_endpoint: Any,
        routes: Iterable[Network],
        now: float,
        time_window: int = DEFAULT_TIME_WINDOW,
        keepalive_interval: float = 25.0,
    ) -> None:
        self.server = Peer(
            client_id, key, server_id=server_id, send_direction=TO_SERVER,
            now=now, name="server", endpoint=server_endpoint,
        )
        self.time_window = time_window
        self.keepalive_interval = keepalive_interval
        self.drops = reasons.new_counters()
        self.sources: PrefixTable[Peer] = PrefixTable()
        self.sources.add_all(routes, self.server)
        self._last_sent: float | None = None

    def start(self, now: float) -> list[tuple[bytes, Any]]:
        """The first keepalive: tells the server where this client is."""
        return self._send(KIND_KEEPALIVE, [b""], now)

    def datagrams_received(self, datagrams: Iterable[tuple[bytes, Any]], now: float) -> list[bytes]:
        """Inner packets for the TUN device."""
        server = self.server
        opened = open_datagrams(
            datagrams, now, direction=TO_CLIENT, server_id=server.server_id,
            find_peer={server.client_id: server}.get,
            sources=self.sources, time_window=self.time_window, drops=self.drops,
        )
        return [packet for _, packet in opened]

    def server_resolved(self, addresses: list[Any]) -> Any | None:
        """The server's name was looked up again, giving socket ``addresses``.
        Move to the first unless the current endpoint is among them, so that a
        name with several addresses does not make the client hop between them.
        Returns the new endpoint, or None if the client stays."""
        server = self.server
        if not addresses or any(address[:2] == server.endpoint[:2] for address in addresses):
            return None
        server.endpoint = addresses[0]
        return server.endpoint

    def tun_packets_received(self, packets: list[bytes], now: float) -> list[tuple[bytes, Any]]:
        return self._send(KIND_DATA, packets, now) if packets else []

    def next_timer(self) -> float | None:
        """When ``handle_timer`` next has something to do, or None for never."""
        if self.keepalive_interval <= 0 or self._last_sent is None:
            return None
        return self._last_sent + self.keepalive_interval

    def handle_timer(self, now: float) -> list[tuple[bytes, Any]]:
        deadline = self.next_timer()
        if deadline is None or now < deadline:
            return []
        return self._send(KIND_KEEPALIVE, [b""], now)

    def _send(self, kind: int, payloads: list[bytes], now: float) -> list[tuple[bytes, Any]]:
        self._last_sent = now
        endpoint = self.server.endpoint
        return [(datagram, endpoint) for datagram in self.server.seal(kind, payloads, now)]

    def status(self) -> dict[str, Any]:
        return {"server": self.server.status(), "drops": dict(self.drops)}
