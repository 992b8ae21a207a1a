"""Shared builders for the in-process tests: inner packets, a fixed clock, IDs,
configured cores and the peers that stand in for their other ends.

Test files import builders from here, never from each other."""

from __future__ import annotations

import ipaddress
import os
import struct

from hypothesis import strategies as st

from vpncrypt.core.client import ClientCore
from vpncrypt.core.peer import Peer
from vpncrypt.core.replay import WINDOW
from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.core.wire import KIND_DATA, TO_SERVER

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


# --- a server with two clients, a client, and a sender standing in for one ------------

net = ipaddress.ip_network
A_ADDR, B_ADDR, SERVER_ADDR = "203.0.113.2", "203.0.113.3", "203.0.113.1"
A_EP, A_EP2, B_EP = ("192.0.2.10", 40000), ("198.51.100.20", 40001), ("192.0.2.11", 40002)
SERVER_EP = ("192.0.2.1", 51820)
KEY_A, KEY_B = os.urandom(64), os.urandom(64)


def make_server(now=NOW, **options) -> ServerCore:
    clients = [
        ClientEntry(1, KEY_A, (net(A_ADDR + "/32"), net("2001:db8::2/128")), "a"),
        ClientEntry(2, KEY_B, (net(B_ADDR + "/32"), net("2001:db8:b::/64")), "b"),
    ]
    return ServerCore(SERVER_ID, clients, now, **options)


def make_client(client_id=1, key=KEY_A, now=NOW, **options) -> ClientCore:
    return ClientCore(
        client_id, key, server_id=SERVER_ID, server_endpoint=SERVER_EP,
        routes=[net("203.0.113.0/24"), net("2001:db8::/32")], now=now, **options,
    )


def sender(client_id=1, key=KEY_A, now=NOW, direction=TO_SERVER, server_id=SERVER_ID, counter=None) -> Peer:
    return Peer(client_id, key, server_id=server_id, send_direction=direction, now=now, initial_counter=counter)


def seal_from_a(payloads, now=NOW + 5, peer=None):
    return (peer or sender()).seal(KIND_DATA, payloads, now)
