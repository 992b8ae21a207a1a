"""One end's view of the other: keys, replay window, endpoint, send counter, statistics.

The server keeps one Peer per client; a client keeps one Peer for its server.
Sealing lives here because the send counter and timestamp are per peer and
direction. Keys move forward with time (epochs.py): a datagram is sealed and
opened with the key of its timestamp's epoch.
"""

from __future__ import annotations

import secrets
from typing import Any

from . import siv
from .epochs import DEFAULT_EPOCH_SECONDS, EpochKeys
from .inner import PartialChecksumPacket
from .replay import NO_TIMESTAMP, ReplayWindow
from .restart import UNTRACKED
from .wire import (
    AD_SUFFIX, COUNTER_MASK, DEFAULT_TIME_WINDOW, HEADER, KIND_DATA, KIND_DATA_PARTIAL, TIMESTAMP_BITS,
    TIMESTAMP_MASK,
)


# Authentication failures one client ID may cost before datagrams naming it
# are refused unopened, and how many a second it may cost after that.
FAILURE_BURST = 64
FAILURE_RATE = 16.0


class CipherBudget:
    """At most ``limit`` peers hold a ready AES-SIV context at once.

    A context (the key schedules) takes about 2.2 KB compiled, 4.1 KB with
    cryptography's (bench/scale_bench.py): 140 to 270 MiB for 65,536
    clients, which a server's table should not. A peer gets its contexts (one per epoch in
    use, two around an epoch's end) when first used; over the limit, the half
    least recently heard from or sent to give theirs up, found by one sort, so
    nothing is tracked per packet. Making a context again costs about 6 us.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self.live: list[Peer] = []

    def adopt(self, peer: "Peer", epoch: int, context: siv.AESSIV) -> siv.AESSIV:
        """Keep ``context`` as ``peer``'s for ``epoch``, first taking theirs from
        the idlest half if the budget is full."""
        if not peer.contexts:
            if len(self.live) >= self.limit:
                self.live.sort(key=Peer.recency)
                half = len(self.live) // 2
                for idle in self.live[:half]:
                    idle.contexts = {}
                del self.live[:half]
            self.live.append(peer)
        peer.contexts[epoch] = context
        return context

    def retain(self, peers) -> None:
        """Keep contexts only for ``peers`` (the client table after a reload):
        a removed client's key schedule is let go at once."""
        keep = {id(peer) for peer in peers}
        for peer in self.live:
            if id(peer) not in keep:
                peer.contexts = {}
        self.live = [peer for peer in self.live if id(peer) in keep]


class Peer:
    """Key and state for one (client ID, server ID) pair, seen from one end."""

    __slots__ = (
        "client_id", "name", "server_id", "send_direction", "keys", "epoch_seconds", "budget",
        "contexts", "window", "endpoint", "counter", "last_ts",
        "rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "roams", "auth_failures", "time_drops", "stale_drops",
        "durable_bound", "save_at", "wanted_bound", "clock_sample", "time_window",
        "failure_credit", "credit_time", "_context", "time_answer_due", "clock_offset", "clock_offset_at",
    )

    def __init__(
        self,
        client_id: int,
        key: bytes,
        *,
        key_epoch: int,
        server_id: int,
        send_direction: int,
        now: float,
        name: str = "",
        endpoint: Any = None,
        initial_counter: int | None = None,
        budget: CipherBudget | None = None,
        time_window: int = DEFAULT_TIME_WINDOW,
        epoch_seconds: int = DEFAULT_EPOCH_SECONDS,
    ) -> None:
        start = int(now) + 1
        self.client_id = client_id
        self.name = name
        self.server_id = server_id
        self.send_direction = send_direction
        self.keys = EpochKeys(key, key_epoch)  # raises ValueError for a key of the wrong length
        self.epoch_seconds = epoch_seconds
        self.budget = budget
        # AES-SIV contexts by epoch, made when first needed (kept within the
        # budget, if any) and dropped with their epoch.
        self.contexts: dict[int, siv.AESSIV] = {}
        # Nothing sent before this end started can be accepted by it ...
        self.window = ReplayWindow(floor=start)
        self.endpoint = endpoint
        self.counter = secrets.randbits(32) if initial_counter is None else initial_counter & COUNTER_MASK
        # ... and what it sends starts after any second a predecessor used.
        self.last_ts = start
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = self.roams = 0
        # Datagrams naming this peer that failed authentication, or whose
        # timestamp was outside the window: a wrong key or server ID, or a
        # skewed clock, shows here by name (they are also in the drop totals).
        # And (a server's) authentic ones the replay window refused as stamped
        # behind what it accepted (superseded, counter_too_old), of which one
        # is authenticated every receive.TIME_ANSWER_INTERVAL at most, to be
        # answered with the time: a peer restarted behind its last stamps.
        self.auth_failures = self.time_drops = self.stale_drops = 0
        # Restart bounds (restart.py): the saved one, the timestamp from which
        # a higher one is wanted, and the highest wanted.
        self.durable_bound = self.save_at = UNTRACKED
        self.wanted_bound = 0
        # (local Unix seconds, timestamp, rx_packets then) of the last datagram
        # that asked for a higher bound: how its clock relates to ours, and
        # whether data came since (restart.keep_ahead).
        self.clock_sample: tuple[float, int, int] | None = None
        self.time_window = time_window  # how far a stamp may run ahead of the clock
        # Authentication failures this peer's ID may still cost (a token
        # bucket, refilled only when empty), and when it was last refilled.
        self.failure_credit = float(FAILURE_BURST)
        self.credit_time = now
        self._context: siv.AESSIV | None = None  # made for one datagram, kept only if it authenticates
        # Time answers (server): when this peer may earn the next one, and the
        # offset of its clock from ours when it last did (seconds, + is ahead),
        # measured at clock_offset_at (Unix seconds, ours): only a new answer
        # measures it again, so it may be long out of date.
        self.time_answer_due = 0.0
        self.clock_offset: float | None = None
        self.clock_offset_at: float | None = None

    def seal(self, kind: int, payloads: list[bytes], now: float) -> list[bytes]:
        """Seal a batch of payloads into datagrams, consuming one counter each.

        ``kind`` is a wire.KIND_* value; ``now`` Unix seconds. A payload that
        is a PartialChecksumPacket travels as KIND_DATA_PARTIAL. Returns one
        datagram per payload, in order; raises nothing for any payload of at
        most wire.MAX_PAYLOAD bytes."""
        # Never older than what was sent before, nor than the newest timestamp
        # accepted from the peer: that one is at or above the peer's replay
        # floor, so a peer that has just started hears us at once. But never
        # more than the time window ahead of the clock: after a clock stepped
        # forward and back, stamps go back to the clock at once instead of
        # staying where the step left them, which no receiver would take.
        ts = int(now)
        floor = self.last_ts
        heard = self.window.newest_ts
        if heard != NO_TIMESTAMP and heard > floor:
            floor = heard
        if ts < floor <= ts + self.time_window:
            ts = floor
        epoch = ts // self.epoch_seconds
        if epoch < self.keys.key_epoch:
            # This clock was stepped back behind the keys already erased:
            # stamp at the start of the oldest epoch whose key is left.
            epoch = self.keys.key_epoch
            ts = epoch * self.epoch_seconds
        self.last_ts = ts
        suffix = AD_SUFFIX.pack(self.send_direction, self.server_id, ts)
        word0 = (kind << TIMESTAMP_BITS) | (ts & TIMESTAMP_MASK)
        # Data whose checksum the kernel left partial travels as its own kind.
        partial_word0 = (KIND_DATA_PARTIAL << TIMESTAMP_BITS) | (ts & TIMESTAMP_MASK) if kind == KIND_DATA else word0
        client_id = self.client_id
        counter = self.counter
        context = self.contexts.get(epoch) or self.context_for(epoch)
        if type(context) is siv.CompiledAESSIV:
            # The same loop in C (vpncrypt/_batch.c).
            datagrams, counter, size = context.seal_batch(
                payloads, word0, partial_word0, client_id, counter, suffix, PartialChecksumPacket)
        else:
            pack = HEADER.pack
            encrypt = context.encrypt
            datagrams = []
            append = datagrams.append
            size = 0
            for payload in payloads:
                counter = (counter + 1) & COUNTER_MASK
                header = pack(partial_word0 if type(payload) is PartialChecksumPacket else word0, client_id, counter)
                append(header + encrypt(payload, [header + suffix]))
                size += len(payload)
        self.counter = counter
        self.tx_packets += len(datagrams)
        self.tx_bytes += size
        return datagrams

    def context_for(self, epoch: int) -> siv.AESSIV:
        """The AES-SIV context of ``epoch``, made and kept (within the budget).
        Raises ValueError for an epoch whose key is erased."""
        context = siv.AESSIV(self.keys.for_epoch(epoch))
        if self.budget is None:
            self.contexts[epoch] = context
            return context
        return self.budget.adopt(self, epoch, context)

    def new_context(self, epoch: int) -> siv.AESSIV:
        """A context for one datagram, not yet kept (see ``keep_context``).
        Raises ValueError for an epoch whose key is erased."""
        self._context = siv.AESSIV(self.keys.for_epoch(epoch))
        return self._context

    def keep_context(self, epoch: int) -> None:
        """The datagram opened with ``new_context`` authenticated: keep its context."""
        context, self._context = self._context, None
        if self.budget is None:
            self.contexts[epoch] = context  # type: ignore[assignment]
        else:
            self.budget.adopt(self, epoch, context)  # type: ignore[arg-type]

    def advance_keys(self, oldest: int) -> bool:
        """Erase the keys and contexts of epochs before ``oldest`` (the
        KeyTimer's to say); True if the oldest key kept moved, so it must be saved."""
        if not self.keys.advance(oldest):
            return False
        for epoch in [e for e in self.contexts if e < oldest]:
            del self.contexts[epoch]
        return True

    def refill_failure_credit(self, now: float) -> bool:
        """Refill the failure credit for the time since the last refill; True if
        at least one failure may be spent again."""
        # A clock stepped back earns nothing (never a debt).
        earned = max(0.0, now - self.credit_time) * FAILURE_RATE
        self.failure_credit = min(float(FAILURE_BURST), self.failure_credit + earned)
        self.credit_time = now
        return self.failure_credit >= 1

    def recency(self) -> int:
        """The newest second this peer was heard from or sent to."""
        heard = self.window.newest_ts if self.window.newest_counter >= 0 else 0
        return max(heard, self.last_ts)

    def status(self) -> dict[str, Any]:
        """What an operator may see: no key material."""
        return {
            "client_id": self.client_id,
            "name": self.name,
            "endpoint": self.endpoint,
            # The newest accepted datagram's timestamp, in the sender's clock.
            "last_seen": self.window.newest_ts if self.window.newest_counter >= 0 else None,
            **self.counters(),
        }

    def counters(self) -> dict[str, Any]:
        """The transfer counts (inner bytes and packets each way), roams, the
        datagrams refused by name, and the clock offset a time answer measured
        (seconds) and when (Unix seconds, this host's clock; both None before
        any): what status() and the server's ``vpncrypt show`` give of a peer."""
        return {
            "rx_bytes": self.rx_bytes,
            "rx_packets": self.rx_packets,
            "tx_bytes": self.tx_bytes,
            "tx_packets": self.tx_packets,
            "roams": self.roams,
            "auth_failures": self.auth_failures,
            "time_drops": self.time_drops,
            "stale_drops": self.stale_drops,
            "clock_offset": self.clock_offset,
            "clock_offset_at": self.clock_offset_at,
        }
