"""Shared builders for the in-process tests: inner packets, a fixed clock, IDs.

Test files import builders from here, never from each other."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import strategies as st

from vpncrypt.core.replay import WINDOW

NOW = 1_800_000_000.0  # a fixed clock: the core never reads the real one
SERVER_ID = 0x5EC0_0001
MASK = 2**32 - 1  # the 32-bit counter


def ipv4_packet(src: str, dst: str, payload: bytes = b"", proto: int = 17) -> bytes:
    """A minimal IPv4 packet (checksum left zero: the core never looks at it)."""
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )
    return header + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"", next_header: int = 17) -> bytes:
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
        ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed,
    )
    return header + payload


class Model:
    """One sender instance, packets numbered 0, 1, 2, ...: no wrap, no ring, just a set."""

    def __init__(self, floor):
        self.floor, self.newest, self.newest_ts, self.seen = floor, None, None, set()

    def offer(self, index, ts):
        if ts < self.floor:
            return False
        if self.newest is None or index > self.newest:
            if self.newest is not None and index - self.newest >= WINDOW and ts > self.newest_ts:
                self.floor = self.newest_ts + 1
            self.newest, self.newest_ts = index, ts
        elif self.newest - index >= WINDOW or index in self.seen:
            return False
        self.seen.add(index)
        return True


@st.composite
def deliveries(draw):
    """A sender's packets (counter from a random start, so it may wrap; a clock that
    ticks every few packets), delivered as a sequence with loss, reordering and
    duplicates, some reaching back across more than the window."""
    count = draw(st.integers(1, 5000))
    start = draw(st.one_of(st.integers(0, MASK), st.integers(MASK - 3000, MASK)))
    per_second = draw(st.integers(1, 3000))
    order = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=300))
    return start, per_second, order


LATE_ARRIVALS = len(range(0, 9000, 97))  # held back and delivered before the run ends


def long_run_with_late_arrivals(offer_fn, start):
    """10,000 counters in order with every 97th held back and delivered 1,000 later:
    the ring wraps more than twice, so bits it failed to clear would show as replays."""
    held = []
    accepted_late = 0
    for index in range(10_000):
        if index % 97 == 0:
            held.append(index)
        else:
            assert offer_fn((start + index) & MASK, index) > 0
        while held and index - held[0] >= 1000:
            late = held.pop(0)
            accepted_late += offer_fn((start + late) & MASK, late) > 0
    return accepted_late
