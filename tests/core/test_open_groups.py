"""open_run's groups (vpncrypt/_batch.c) held to the Python loop, with each engine.

The compiled open_run takes up to 8 consecutive datagrams of a peer into a
group: their replay verdicts as if each earlier one had authenticated, their
S2Vs together (interleaved on the AES-NI engine), then their commits in order
up to the first forgery, which goes back to the Python loop with everything
after it. Here a server takes the same batches through the compiled path and
through the Python loop (``receive._open_run`` set to None; the same compiled
AES-SIV class), and everything must come out the same: packets, drop
counters, the peer's window (its ring byte for byte), endpoint, roams,
counters and failure credit. The batches are one client's datagrams with
forgeries, duplicates, truncations, swaps, keepalives and roams placed where
groups start, end and overflow (tests/core/test_fast_path.py holds the whole
batch path to the Python one on wider traffic).
"""

from __future__ import annotations

import os
import struct
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.builders import A_ADDR, A_EP, A_EP2, NOW, SERVER_ADDR, ipv4_packet, make_server, sender
from tests.cipher.conftest import ENGINES, engine_in_use
from tests.compiled import PURE_ONLY
from vpncrypt.core import receive, siv
from vpncrypt.core.wire import KIND_DATA, KIND_KEEPALIVE

START = NOW - 1000  # the server starts long before: its floor refuses nothing the time window lets in


@pytest.fixture(autouse=True, params=ENGINES)
def compiled_engine(request):
    """The compiled class in use, with each engine of its MAC half."""
    if PURE_ONLY:
        pytest.skip("VPNCRYPT_PURE_PYTHON=1: no compiled open_run to test")
    assert siv.CompiledAESSIV is not None and siv.compiled_open_run is not None, siv.NOT_BUILT
    chosen = siv.AESSIV
    siv.AESSIV = siv.CompiledAESSIV
    try:
        with engine_in_use(request.param):
            yield request.param
    finally:
        siv.AESSIV = chosen


def client_datagrams(sizes: list[int], keepalive_at: frozenset[int] = frozenset()) -> list[bytes]:
    """Client 1's datagrams, in the order sealed: an IPv4 packet of each size
    (a keepalive instead at the positions in ``keepalive_at``)."""
    peer = sender()
    out = []
    for position, size in enumerate(sizes):
        if position in keepalive_at:
            out += peer.seal(KIND_KEEPALIVE, [b""], NOW)
        else:
            out += peer.seal(KIND_DATA, [ipv4_packet(A_ADDR, SERVER_ADDR, os.urandom(size))], NOW)
    return out


def forged(datagram: bytes, bit: int) -> bytes:
    """``datagram`` with one bit of its tag or body flipped (the header stays;
    one too short to have a tag stays as it is)."""
    if len(datagram) <= 8:
        return datagram
    bit %= (len(datagram) - 8) * 8
    changed = bytearray(datagram)
    changed[8 + bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(changed)


def outcome(batches: list[list[tuple[bytes, tuple]]], compiled: bool) -> dict:
    """What a fresh server makes of ``batches``, one call each, through the
    compiled open_run or the Python loop; and how many datagrams open_run
    decided itself."""
    server = make_server(now=START)
    decided = [0]
    run = receive._open_run

    def counting(datagrams, start, opened, drops, plan):
        end = run(datagrams, start, opened, drops, plan)
        decided[0] += end - start
        return end

    deliveries = []
    with mock.patch.object(receive, "_open_run", counting if compiled else None):
        for batch in batches:
            deliveries.append(server.datagrams_received(batch, NOW))
    peer = server.peers[1]
    return {
        "deliveries": deliveries,
        "drops": {reason: count for reason, count in server.drops.items() if count},
        "window": (peer.window.newest_counter, peer.window.newest_ts, peer.window.floor, bytes(peer.window.ring or b"")),
        "peer": (peer.endpoint, peer.roams, peer.rx_packets, peer.rx_bytes, peer.failure_credit,
                 peer.auth_failures),
        "decided": decided[0],
    }


def assert_same(batches):
    compiled, loop = outcome(batches, True), outcome(batches, False)
    decided = compiled.pop("decided")
    loop.pop("decided")
    assert compiled == loop
    return decided


def test_a_run_of_valid_datagrams_is_decided_in_c_whole():
    """20 datagrams of mixed lengths (two full groups and a partial one), after
    the first, which makes the epoch's context in Python."""
    datagrams = client_datagrams([1400, 64, 0, 1, 15, 16, 17, 500, 1300, 31, 32, 33, 1400, 900, 2, 48, 47, 49, 700, 3])
    first = [(datagrams[0], A_EP)]
    rest = [(d, A_EP) for d in datagrams[1:]]
    assert assert_same([first, rest]) == len(rest)


@pytest.mark.parametrize("position", range(12))
def test_a_forgery_anywhere_in_a_group_stops_the_commits_there(position):
    datagrams = client_datagrams([100 + 37 * n for n in range(12)])
    batch = [(d, A_EP if n % 3 else A_EP2) for n, d in enumerate(datagrams[1:])]
    batch[position % len(batch)] = (forged(batch[position % len(batch)][0], 8 * 20 + position), A_EP2)
    decided = assert_same([[(datagrams[0], A_EP)], batch])
    assert decided >= len(batch) - 1  # only the forgery goes to the Python loop


def test_a_duplicate_within_a_group_is_replayed_and_a_forgery_before_it_undoes_that():
    datagrams = client_datagrams([200] * 10)
    d = datagrams[1:]
    # the duplicate of d[2] after it; then the same with d[2] forged first, so
    # that its later copy is the one the window takes
    assert_same([[(datagrams[0], A_EP)], [(x, A_EP) for x in (d[0], d[1], d[2], d[3], d[2], d[4])]])
    assert_same([[(datagrams[0], A_EP)],
                 [(x, A_EP) for x in (d[0], d[1], forged(d[2], 5), d[3], d[2], d[4], d[2])]])


operations = st.lists(st.tuples(st.sampled_from(["forge", "duplicate", "truncate", "swap", "roam", "garbage"]),
                                st.integers(0, 10_000)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(0, 1400), min_size=1, max_size=30), operations=operations,
       keepalive_at=st.frozensets(st.integers(0, 29), max_size=4), split=st.integers(0, 30))
def test_any_mix_is_decided_as_the_python_loop_decides_it(sizes, operations, keepalive_at, split):
    datagrams = client_datagrams(sizes, keepalive_at)
    batch = [(d, A_EP) for d in datagrams]
    for operation, where in operations:
        at = where % len(batch)
        datagram, endpoint = batch[at]
        if operation == "forge":
            batch[at] = (forged(datagram, where), endpoint)
        elif operation == "duplicate":
            batch.insert(where % (len(batch) + 1), batch[at])
        elif operation == "truncate":
            batch.insert(at, (datagram[: where % 24], endpoint))
        elif operation == "swap" and at + 1 < len(batch):
            batch[at], batch[at + 1] = batch[at + 1], batch[at]
        elif operation == "roam":
            batch[at] = (datagram, A_EP2)
        elif operation == "garbage":
            batch.insert(at, (bytes([0xFC, 0, 0, 1]) + datagram[4:], endpoint))  # kind 0x3F: unknown_kind
    assert_same([batch[:split], batch[split:]])


def test_an_error_from_a_callback_leaves_the_window_as_the_python_loop_does():
    """well_formed raising on the third datagram of a group: the call raises
    on both paths, and the window holds the datagrams up to that one (the
    Python loop commits before the inner checks), none after."""
    from tests.builders import OPAQUE

    peer = sender()
    datagrams = [peer.seal(KIND_DATA, [ipv4_packet(A_ADDR, SERVER_ADDR, bytes(n), OPAQUE)], NOW)[0] for n in range(7)]
    states = []
    for compiled in (True, False):
        server = make_server(now=START)
        server.datagrams_received([(datagrams[0], A_EP)], NOW)
        calls = [0]
        checked = receive.well_formed

        def failing(packet):
            calls[0] += 1
            if calls[0] == 3:
                raise RuntimeError("a callback's error")
            return checked(packet)

        with mock.patch.object(receive, "well_formed", failing), \
                mock.patch.object(receive, "_open_run", receive._open_run if compiled else None), \
                pytest.raises(RuntimeError, match="a callback's error"):
            server.datagrams_received([(d, A_EP) for d in datagrams[1:]], NOW)
        window = server.peers[1].window
        states.append((window.newest_counter, bytes(window.ring)))
    assert states[0] == states[1]
    assert states[0][0] == (struct.unpack_from("!I", datagrams[3], 4)[0])
