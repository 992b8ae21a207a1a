"""The client's decisions, without I/O: sealing for its one server, keepalives, filtering.

Keepalives follow WireGuard's persistent keepalive: one at start, so the server
learns the client's address at once, then one whenever nothing has been sent
for ``keepalive_interval`` seconds, so NAT mappings stay open. Both come from
the timer (``next_timer``, ``handle_timer``): a new core's timer is due at once.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from . import Datagrams, Delivery
from . import drops as reasons
from .inner import Network, PrefixTable
from .peer import Peer
from .receive import open_datagrams
from .restart import RestartBounds
from .wire import DEFAULT_TIME_WINDOW, KIND_DATA, KIND_KEEPALIVE, MAX_PAYLOAD, OVERHEAD, TO_CLIENT, TO_SERVER


class ClientCore:
    """One client's state for its server.

    ``server_endpoint`` is the socket address to send to (from the config or
    a lookup, never from a received datagram's source); ``routes`` the
    networks the server may send from; ``keepalive_interval`` seconds, 0 for
    only the first keepalive; ``restart_bounds``, ``restart_state_lost`` and
    ``mtu`` as for ServerCore. Raises
    ValueError for a key of the wrong length.
    """

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
        restart_bounds: Mapping[int, int] | None = None,
        restart_state_lost: bool = False,
        mtu: int = MAX_PAYLOAD,
    ) -> None:
        self.server = Peer(
            client_id, key, server_id=server_id, send_direction=TO_SERVER,
            now=now, name="server", endpoint=server_endpoint, time_window=time_window,
        )
        self.restart = RestartBounds(restart_bounds, restart_state_lost)
        self.restart.start_peer(self.server, now)
        self.time_window = time_window
        self.max_datagram = mtu + OVERHEAD
        self.keepalive_interval = keepalive_interval
        self.drops = reasons.new_counters()
        self.sources: PrefixTable[Peer] = PrefixTable()
        self.sources.add_all(routes, self.server)
        self._last_sent: float | None = None

    def datagrams_received(self, datagrams: Iterable[tuple[bytes, Any]], now: float) -> Delivery:
        """Inner packets for the TUN device; a client forwards nothing back out.
        What fails a check is counted in ``drops``."""
        server = self.server
        opened = open_datagrams(
            datagrams, now, direction=TO_CLIENT, server_id=server.server_id,
            find_peer={server.client_id: server}.get,
            sources=self.sources, time_window=self.time_window, drops=self.drops,
            follow_source=False,  # an observer's copy from elsewhere must not move us
            unsaved=self.restart.unsaved, held=self.restart.held, max_datagram=self.max_datagram,
        )
        return Delivery([packet for _, packet in opened], [])

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

    def tun_packets_received(self, packets: list[bytes], now: float) -> Datagrams:
        """Seal IP packets for the server."""
        return self._send(KIND_DATA, packets, now) if packets else []

    def bounds_to_save(self) -> dict[int, int] | None:
        """The server's restart bound to write (keyed by this client's ID), or None."""
        return self.restart.to_save([self.server])

    def bounds_saved(self, table: Mapping[int, int], now: float) -> Delivery:
        """``table`` from ``bounds_to_save`` is durably written: the datagrams
        that waited for it are opened again."""
        self.restart.saved(table, {self.server.client_id: self.server})
        held, self.restart.held = self.restart.held, []
        return self.datagrams_received(held, now) if held else Delivery([], [])

    def next_timer(self) -> float | None:
        """Unix seconds of the next keepalive: at once (0.0) before anything was
        sent, then ``keepalive_interval`` after the last send; None if they are off."""
        if self._last_sent is None:
            return 0.0
        if self.keepalive_interval <= 0:
            return None
        return self._last_sent + self.keepalive_interval

    def clock_stepped(self, delta: float) -> None:
        """Move the last send with the clock, so the next keepalive stays due
        ``keepalive_interval`` of real time after it."""
        if self._last_sent is not None:
            self._last_sent += delta

    def handle_timer(self, now: float) -> Datagrams:
        """A keepalive if one is due at ``now``, else nothing."""
        deadline = self.next_timer()
        if deadline is None or now < deadline:
            return []
        return self._send(KIND_KEEPALIVE, [b""], now)

    def _send(self, kind: int, payloads: list[bytes], now: float) -> Datagrams:
        self._last_sent = now
        endpoint = self.server.endpoint
        return [(datagram, endpoint) for datagram in self.server.seal(kind, payloads, now)]

    def status(self) -> dict[str, Any]:
        """The server peer's counters and endpoint (raw), and the drops."""
        return {"server": self.server.status(), "drops": dict(self.drops)}
