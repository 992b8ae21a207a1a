"""Which client IDs the server's kernel should refuse, and until when: a flood aimed at one ID made cheap.

The failure limiter (peer.py: FAILURE_BURST, FAILURE_RATE) already keeps a
flood of forged datagrams naming one client ID away from the cipher, but
each one still costs the server's loop about a microsecond to refuse
(bench/RESULTS.md, the flood section): ten of them cost more than the
legitimate datagram they come with. So when the limiter has refused
FLOOD_REFUSALS datagrams naming one ID within FLOOD_SECONDS (a flood, not a
trickle of forgeries or a burst), the ID enters this set, and the shell has
the kernel drop every datagram naming it (transport/id_filter.py) for a hold
time: one second at first, doubled each time the ID enters again within
FORGET_AFTER seconds of leaving the set (the flood goes on), at most
HOLD_MAX.

Why these numbers: below about a thousand refusals a second the limiter
costs the loop a millisecond or two a second, which is not worth cutting a
client off for (a few hundred forgeries once are refused as before, and the
client of that ID is heard again as soon as its credit refills, within a
second). Leaving the set is the only way to learn whether the flood has
stopped (what the kernel drops, vpncrypt never sees), and each return costs
about FAILURE_BURST cipher calls and FLOOD_REFUSALS refusals (a few
milliseconds) before the ID is held again; doubling makes that once every
HOLD_MAX seconds during a long flood. The legitimate client of that ID is
cut off while it is held (issue 10 accepts that a flood at one ID costs that
client), and is heard again at most HOLD_MAX seconds after the flood stops,
one second after a short one. No other client is ever touched: an ID enters
only for refusals of datagrams naming it.

At most ``limit`` IDs are held at once (a kernel filter stays small and
O(log n), transport/id_filter.py); an ID that would be one too many is
refused in user space by the limiter as before, and counted in ``full``.

Pure: time comes in as ``now``, wall-clock Unix seconds; ``stepped`` moves
the deadlines with a stepped clock, as the other timers move.
"""

from __future__ import annotations

FLOOD_REFUSALS = 1024  # limiter refusals naming one ID ...
FLOOD_SECONDS = 1.0  # ... within this many seconds: a flood
HOLD_FIRST = 1.0  # seconds an ID is held the first time
HOLD_MAX = 30.0  # the longest hold: a legitimate client is back at most this long after a flood
FORGET_AFTER = HOLD_MAX  # out of the set this long, an ID starts again at HOLD_FIRST
LIMIT = 256  # IDs held at once


class FilteredIds:
    """Client IDs whose datagrams the kernel should drop, each until a deadline.

    ``version`` changes whenever the set does, so the shell re-applies it
    only then; ``holds`` maps each ID held now or recently to (its last hold
    in seconds, when that hold ends, Unix seconds)."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.until: dict[int, float] = {}  # client ID -> when it leaves the set (Unix seconds)
        self.holds: dict[int, tuple[float, float]] = {}
        self.version = 0
        self.full = 0  # times a flooded ID did not fit
        # Client ID -> (when its count started, Unix seconds; limiter refusals since).
        self.counts: dict[int, tuple[float, int]] = {}

    def refused(self, client_id: int, count: int, now: float) -> None:
        """The limiter refused ``count`` datagrams naming ``client_id`` at
        ``now``: hold the ID once that makes FLOOD_REFUSALS within FLOOD_SECONDS."""
        start, total = self.counts.get(client_id, (now, 0))
        if not start <= now < start + FLOOD_SECONDS:  # a new count (or a clock stepped back)
            start, total = now, 0
        total += count
        if total >= FLOOD_REFUSALS:
            self.counts.pop(client_id, None)
            self.enter(client_id, now)
        else:
            self.counts[client_id] = (start, total)

    def enter(self, client_id: int, now: float) -> float | None:
        """Hold ``client_id`` (a flood names it). Returns the hold in seconds;
        None if it is held already or the set is full (counted in ``full``)."""
        if client_id in self.until:
            return None
        if len(self.until) >= self.limit:
            self.full += 1
            return None
        previous = self.holds.get(client_id)
        if previous is None or now - previous[1] > FORGET_AFTER:
            hold = HOLD_FIRST
        else:
            hold = min(previous[0] * 2, HOLD_MAX)
        self.until[client_id] = now + hold
        self.holds[client_id] = (hold, now + hold)
        self.version += 1
        return hold

    def next_expiry(self) -> float | None:
        """When the next ID leaves the set (Unix seconds); None for an empty set."""
        return min(self.until.values()) if self.until else None

    def expire(self, now: float) -> None:
        """Let go of the IDs whose hold has ended at ``now``, and forget the
        past holds of IDs out of the set for longer than FORGET_AFTER."""
        ended = [client_id for client_id, until in self.until.items() if until <= now]
        for client_id in ended:
            del self.until[client_id]
        if ended:
            self.version += 1
        for client_id in [i for i, (_, end) in self.holds.items() if i not in self.until and now - end > FORGET_AFTER]:
            del self.holds[client_id]
        for client_id in [i for i, (start, _) in self.counts.items() if now - start >= FLOOD_SECONDS]:
            del self.counts[client_id]

    def stepped(self, delta: float) -> None:
        """The wall clock jumped by ``delta`` seconds: the holds keep their length."""
        self.until = {client_id: until + delta for client_id, until in self.until.items()}
        self.holds = {client_id: (hold, end + delta) for client_id, (hold, end) in self.holds.items()}

    def client_ids(self) -> list[int]:
        """The IDs held now, sorted."""
        return sorted(self.until)
