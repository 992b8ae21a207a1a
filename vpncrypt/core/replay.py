"""Replay filter for one sender and direction: RFC 6479 sliding window plus time.

Counters start at a random value and wrap modulo 2**32, and a sender that
restarts picks a new random start, so the counter alone cannot order packets
across restarts. The full timestamp (seconds, never decreasing per sender
instance, and a new instance starts strictly after any second the previous one
used) settles that:

* ``floor`` rejects everything older than the receiver's own start and than the
  newest second of a sender instance that was superseded, so nothing accepted
  before a window reset can be accepted again after it.
* A counter ahead of the newest is the newest only if its timestamp is not
  older than the newest timestamp (otherwise it is an old instance's packet).
* A counter behind the newest but with a newer timestamp is a restarted sender:
  the window is reset to it.

Checking and committing are separate so that nothing changes before the
datagram has authenticated.
"""

from __future__ import annotations

from .wire import COUNTER_MASK

WINDOW = 2048  # a counter more than WINDOW - 1 behind the newest is too old
_RING_BYTES = 512  # 4096 bits: the window plus room to clear whole bytes ahead
RING_INDEX_MASK = _RING_BYTES - 1
_BLOCK_MASK = COUNTER_MASK >> 3
_HALF = 1 << 31
NO_TIMESTAMP = 1 << 64

# Verdicts of check(); positive ones accept, negative ones are drop reasons.
NEWEST = 1  # ahead of the newest by less than WINDOW: the window slides
REORDERED = 2  # behind the newest, inside the window, not seen before
JUMPED = 3  # the first datagram, a jump of WINDOW or more, or a restarted sender
REPLAYED = -1
TOO_OLD = -2
SUPERSEDED = -3


class ReplayWindow:
    """What one receiver remembers of one sender's (timestamp, counter) pairs.

    ``floor`` is the oldest timestamp (Unix seconds) it may accept: the
    receiver's own start, so nothing sent before it started is accepted."""

    __slots__ = ("floor", "newest_ts", "newest_counter", "ring")

    def __init__(self, floor: int) -> None:
        self.floor = floor
        # Until the first commit no timestamp is "not older than the newest",
        # which keeps callers' fast path (see receive.py) off an empty window.
        self.newest_ts = NO_TIMESTAMP
        self.newest_counter = -1
        self.ring: bytearray | None = None  # allocated by the first commit

    def check(self, ts: int, counter: int) -> int:
        """Classify a datagram by its full timestamp ``ts`` (sender's Unix
        seconds) and 32-bit ``counter``: a positive verdict accepts, a negative
        one is a drop reason. Changes nothing."""
        if ts < self.floor:
            return SUPERSEDED
        newest = self.newest_counter
        if newest < 0:
            return JUMPED
        ahead = (counter - newest) & COUNTER_MASK
        if 0 < ahead < _HALF:
            if ts < self.newest_ts:
                return SUPERSEDED
            return NEWEST if ahead < WINDOW else JUMPED
        if ts > self.newest_ts:
            return JUMPED  # behind, yet newer in time: the sender restarted
        if (newest - counter) & COUNTER_MASK >= WINDOW:
            return TOO_OLD
        if self.ring[(counter >> 3) & RING_INDEX_MASK] >> (counter & 7) & 1:  # type: ignore[index]
            return REPLAYED
        return REORDERED

    def commit(self, ts: int, counter: int, verdict: int) -> None:
        """Record an authenticated datagram that ``check`` accepted."""
        ring = self.ring
        if verdict == NEWEST:
            if counter >> 3 != self.newest_counter >> 3:
                self.slide(counter)
            self.newest_counter = counter
            self.newest_ts = ts
        elif verdict == JUMPED:
            # Nothing of the old window is worth keeping; the floor keeps what
            # it held from being accepted again.
            if self.newest_counter >= 0 and ts > self.newest_ts:
                self.floor = self.newest_ts + 1
            ring = self.ring = bytearray(_RING_BYTES)
            self.newest_counter = counter
            self.newest_ts = ts
        ring[(counter >> 3) & RING_INDEX_MASK] |= 1 << (counter & 7)  # type: ignore[index]

    def slide(self, counter: int) -> None:
        """Forget the ring bytes the window slides onto when ``counter`` enters a new byte (RFC 6479)."""
        ring = self.ring
        newest_block = self.newest_counter >> 3
        for skipped in range(newest_block + 1, newest_block + 1 + (((counter >> 3) - newest_block) & _BLOCK_MASK)):
            ring[skipped & RING_INDEX_MASK] = 0  # type: ignore[index]
