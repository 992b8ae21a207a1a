"""The client's decisions, without I/O: sealing for its one server, keepalives, filtering.

Keepalives follow WireGuard's persistent keepalive: one at start, so the server
learns the client's address at once, then one whenever nothing has been sent
for ``keepalive_interval`` seconds, so NAT mappings stay open. Both come from
the timer (``next_timer``, ``handle_timer``): a new core's timer is due at once.

A client whose clock is off by more than the time window (but less than 512
seconds) is answered by the server with the server's time (a time answer,
docs/PROTOCOL.md section 7): from then on it stamps and checks timestamps in
the server's time, ``now + clock_offset``.

The client also searches for the largest datagram that gets through to the
server and back (core/pmtu.py, docs/PROTOCOL.md section 8): its probes come
from the same timer, and packets from TUN larger than the tunnel's effective
MTU, ``path.confirmed - 24``, are answered with ICMP "too big" back to TUN.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Mapping

from cryptography.exceptions import InvalidTag

from . import Datagrams, Delivery, SavedState
from . import drops as reasons
from .epochs import DEFAULT_EPOCH_SECONDS, KeyTimer
from .inner import Network, PrefixTable, clamp_mss
from .peer import Peer
from .pmtu import BLACK_HOLE_SILENCE, SEARCH_COMPLETE, PathSearch, TooBigAnswers, base_size, max_size, needs_answer
from .receive import open_datagrams
from .restart import RestartBounds
from .wire import (
    AD_SUFFIX, COUNTER_MASK, DEFAULT_TIME_WINDOW, HEADER, HEADER_LEN, KIND_DATA, KIND_KEEPALIVE, KIND_PROBE,
    KIND_TIME_ANSWER, MAX_PAYLOAD, OVERHEAD, TIME_ANSWER_PAYLOAD, TIMESTAMP_MASK, TO_CLIENT, TO_SERVER, probe_payload,
)

ANSWER_WAIT = 5.0  # seconds a time answer may take to echo one of our datagrams
SENDS_REMEMBERED = 64  # batches of datagrams a time answer may echo
SERVER_ONLY = ("clock_offset", "clock_offset_at", "stale_drops")  # Peer.status() keys only a server fills in


class ClientCore(SavedState):
    """One client's state for its server.

    ``server_endpoint`` is the socket address to send to (from the config or
    a lookup, never from a received datagram's source); ``routes`` the
    networks the server may send from; ``keepalive_interval`` seconds, 0 for
    only the first keepalive; ``key`` is the key of epoch ``key_epoch``;
    ``restart_bounds``, ``restart_state_lost``, ``mtu`` and ``epoch_seconds``
    as for ServerCore; ``underlay_version`` 4 or 6, the IP version of the
    server's address, which sets where the path MTU search starts
    (pmtu.base_size). Raises ValueError for a key of the wrong length.
    """

    def __init__(
        self,
        client_id: int,
        key: bytes,
        *,
        key_epoch: int,
        server_id: int,
        server_endpoint: Any,
        routes: Iterable[Network],
        now: float,
        time_window: int = DEFAULT_TIME_WINDOW,
        keepalive_interval: float = 25.0,
        restart_bounds: Mapping[int, int] | None = None,
        restart_state_lost: bool = False,
        mtu: int = MAX_PAYLOAD,
        epoch_seconds: int = DEFAULT_EPOCH_SECONDS,
        underlay_version: int = 6,
    ) -> None:
        self.server = Peer(
            client_id, key, key_epoch=key_epoch, server_id=server_id, send_direction=TO_SERVER,
            now=now, name="server", endpoint=server_endpoint, time_window=time_window, epoch_seconds=epoch_seconds,
        )
        self.key_timer = KeyTimer(now, epoch_seconds)
        self.key_timer.advance([self.server], now)
        self.clock_offset = 0.0  # the server's time minus ours, from its last time answer (seconds)
        # (first counter, count, timestamp, local time) of recent sends, for time answers.
        self._sends: deque[tuple[int, int, int, float]] = deque(maxlen=SENDS_REMEMBERED)
        self.restart = RestartBounds(restart_bounds, restart_state_lost)
        self.restart.start_peer(self.server, now)
        # A floor set from this end's own start is in its own clock: it moves
        # with the offset a time answer brings (restart.py; a saved bound does not).
        self._started = now  # Unix seconds, not rounded: the floor is floor(start + offset) + 1
        self._start_floor = self.server.window.floor if self.server.window.floor == int(now) + 1 else None
        self.time_window = time_window
        self.max_datagram = mtu + OVERHEAD
        self.keepalive_interval = keepalive_interval
        self.drops = reasons.new_counters()
        self.sources: PrefixTable[Peer] = PrefixTable()
        self.sources.add_all(routes, self.server)
        self._last_sent: float | None = None
        self.path = PathSearch(base_size(underlay_version), max_size(underlay_version, mtu), now)
        self.too_big = TooBigAnswers(now)
        # When data first went out since the server was last heard (None: heard since).
        self._unanswered_since: float | None = None

    def datagrams_received(self, datagrams: Iterable[tuple[bytes, Any]], now: float) -> Delivery:
        """Inner packets for the TUN device; a client forwards nothing back out.
        What fails a check is counted in ``drops``; a time answer moves
        ``clock_offset``."""
        server = self.server
        answers = [d for d in datagrams if len(d[0]) >= 1 and d[0][0] >> 2 == KIND_TIME_ANSWER]
        if answers:
            for datagram, _ in answers:
                self._time_answer(datagram, now)
            datagrams = [d for d in datagrams if not (len(d[0]) >= 1 and d[0][0] >> 2 == KIND_TIME_ANSWER)]
        probes: list = []
        opened = open_datagrams(
            datagrams, now + self.clock_offset, direction=TO_CLIENT, server_id=server.server_id,
            find_peer={server.client_id: server}.get,
            sources=self.sources, time_window=self.time_window, drops=self.drops,
            follow_source=False,  # an observer's copy from elsewhere must not move us
            unsaved=self.restart.unsaved, held=self.restart.held, max_datagram=self.max_datagram, probes=probes,
        )
        if opened or probes:
            self.key_timer.heard(now + self.clock_offset)
            self._unanswered_since = None
            path = self.path
            # Acknowledgements first: one of ERROR's base probe moves the
            # search on, where being heard would start it over.
            for _, size, _, _ in probes:
                path.acknowledged(size, now)
            path.heard(now)
        return Delivery([packet for _, packet in opened], [])

    def _time_answer(self, datagram: bytes, now: float) -> None:
        """Take the server's time from an authentic answer to one of our recent
        datagrams; anything else is counted (unexpected_time_answer)."""
        if len(datagram) != OVERHEAD + TIME_ANSWER_PAYLOAD:
            self.drops[reasons.BAD_LENGTH] += 1
            return
        word0, client_id, counter = HEADER.unpack_from(datagram)
        server = self.server
        ts = None
        for first, count, sent_ts, sent_at in self._sends:
            if (counter - first) & COUNTER_MASK < count and sent_ts & TIMESTAMP_MASK == word0 & TIMESTAMP_MASK:
                if now - sent_at <= ANSWER_WAIT:
                    ts = sent_ts
        if client_id != server.client_id or ts is None:
            self.drops[reasons.UNEXPECTED_TIME_ANSWER] += 1
            return
        epoch = ts // server.epoch_seconds
        aead = server.contexts.get(epoch) or server.context_for(epoch)
        try:
            payload = aead.decrypt(datagram[HEADER_LEN:], [datagram[:HEADER_LEN] +
                                                           AD_SUFFIX.pack(TO_CLIENT, server.server_id, ts)])
        except InvalidTag:
            self.drops[reasons.UNEXPECTED_TIME_ANSWER] += 1
            return
        self.clock_offset = int.from_bytes(payload, "big") / 1000 - now
        window = server.window
        if self._start_floor is not None and window.floor == self._start_floor:
            # This end started at (start + offset) in the server's time.
            window.floor = self._start_floor = int(self._started + self.clock_offset) + 1

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

    def tun_packets_received(self, packets: list[bytes], now: float) -> Delivery:
        """Seal IP packets for the server. One larger than the effective MTU
        that may not be fragmented (pmtu.needs_answer) is dropped
        (packet_too_big) and answered with ICMP "too big" for TUN, within a
        rate; TCP SYNs get their MSS clamped to the effective MTU."""
        mtu = self.path.confirmed - OVERHEAD
        to_tun = []
        sending = []
        for packet in packets:
            if len(packet) > mtu and needs_answer(packet, mtu):
                self.drops[reasons.PACKET_TOO_BIG] += 1
                answer = self.too_big.answer(packet, mtu, now)
                if answer is not None:
                    to_tun.append(answer)
            else:
                sending.append(clamp_mss(packet, mtu))
        if not sending:
            return Delivery(to_tun, [])
        if self._unanswered_since is None:
            self._unanswered_since = now
        return Delivery(to_tun, self._send(KIND_DATA, sending, now))

    def bounds_saved(self, table: Mapping[int, int], now: float) -> Delivery:
        """``table`` from ``bounds_to_save`` is durably written: the datagrams
        that waited for it are opened again."""
        self.restart.saved(table, {self.server.client_id: self.server})
        held, self.restart.held = self.restart.held, []
        return self.datagrams_received(held, now) if held else Delivery([], [])

    def saved_peers(self) -> Iterable[Peer]:
        """The server's peer: the state files keep its bound and this client's key."""
        return [self.server]

    filter_version = 0  # a client has no flood filter: it hears from its server only

    def filtered_client_ids(self) -> list[int]:
        """Always empty: a client asks its kernel to refuse nothing."""
        return []

    def next_timer(self) -> float | None:
        """Unix seconds (this host's clock) of the next keepalive, path MTU
        probe, black hole suspicion, key step or raise of the server's restart
        bound after a pause (restart.keep_ahead): a keepalive at once (0.0)
        before anything was sent, then ``keepalive_interval`` after the last
        send (never, if they are off)."""
        keys_due = min(self.key_timer.due - self.clock_offset, self.path.next_timer())
        if self.restart.keep_ahead_due is not None:
            keys_due = min(keys_due, self.restart.keep_ahead_due - self.clock_offset)
        if self._unanswered_since is not None and self.path.state == SEARCH_COMPLETE:
            keys_due = min(keys_due, self._unanswered_since + BLACK_HOLE_SILENCE)
        if self._last_sent is None:
            return 0.0
        if self.keepalive_interval <= 0:
            return keys_due
        return min(self._last_sent + self.keepalive_interval, keys_due)

    def clock_stepped(self, delta: float) -> None:
        """Move the last send with the clock, so the next keepalive stays due
        ``keepalive_interval`` of real time after it, and the recent sends a
        time answer may echo, so they are remembered ANSWER_WAIT seconds of
        real time (after a step back, a recorded answer to a send from before
        it would be taken for as long as the step)."""
        self._sends = deque(((first, count, ts, sent_at + delta) for first, count, ts, sent_at in self._sends),
                            maxlen=SENDS_REMEMBERED)
        if self._last_sent is not None:
            self._last_sent += delta
        if self._unanswered_since is not None:
            self._unanswered_since += delta
        self.key_timer.stepped(delta)
        self.path.stepped(delta)
        self.restart.stepped(delta)

    def handle_timer(self, now: float) -> Datagrams:
        """A keepalive and a path MTU probe, each if due at ``now``; keys that
        ``now`` no longer needs are erased (as far as the server vouches for
        ``now``: epochs.KeyTimer), and the server's restart bound is
        kept ahead after a pause (restart.keep_ahead). A probe carries the size confirmed
        so far, so the server learns it too. Data sent BLACK_HOLE_SILENCE
        seconds ago with nothing heard since has the size confirmed now."""
        self.key_timer.advance([self.server], now + self.clock_offset)
        self.restart.keep_ahead({self.server.client_id: self.server}, now + self.clock_offset)
        out = []
        if self._last_sent is None or (self.keepalive_interval > 0 and
                                       now >= self._last_sent + self.keepalive_interval):
            out = self._send(KIND_KEEPALIVE, [b""], now)
        if self._unanswered_since is not None and now >= self._unanswered_since + BLACK_HOLE_SILENCE:
            # Data went out and nothing came back: perhaps the path no longer
            # carries the confirmed size (RFC 8899 section 4.3).
            self._unanswered_since = None
            self.path.suspect(now)
        size = self.path.probe_due(now)
        if size is not None:
            out += self._send(KIND_PROBE, [probe_payload(size, self.path.confirmed)], now)
        return out

    def _send(self, kind: int, payloads: list[bytes], now: float) -> Datagrams:
        self._last_sent = now
        server = self.server
        first = (server.counter + 1) & COUNTER_MASK
        datagrams = server.seal(kind, payloads, now + self.clock_offset)
        self._sends.append((first, len(datagrams), server.last_ts, now))
        endpoint = server.endpoint
        return [(datagram, endpoint) for datagram in datagrams]

    def status(self) -> dict[str, Any]:
        """The server peer's counters and endpoint (raw), and the drops. A
        Peer's time-answer and stale counts are a server's (it measures and
        authenticates them), so the client's own ``clock_offset`` stands alone."""
        server = self.server.status()
        for key in SERVER_ONLY:
            del server[key]
        return {"server": server, "drops": dict(self.drops), "clock_offset": self.clock_offset,
                "path_mtu": self.path.confirmed - OVERHEAD}
