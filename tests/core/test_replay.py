"""The replay window against a plain model of the rules in docs/PROTOCOL.md."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.builders import LATE_ARRIVALS, MASK, Model, deliveries, long_run_with_late_arrivals
from vpncrypt.core.replay import (
    JUMPED, NEWEST, REORDERED, REPLAYED, SUPERSEDED, TOO_OLD, WINDOW, ReplayWindow,
)

def offer(window, ts, counter):
    verdict = window.check(ts, counter)
    if verdict > 0:
        window.commit(ts, counter, verdict)
    return verdict


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_window_matches_model(case):
    start, per_second, order = case
    t0 = 1000
    window, model = ReplayWindow(floor=t0), Model(floor=t0)
    for index in order:
        ts = t0 + index // per_second
        accepted = offer(window, ts, (start + index) & MASK) > 0
        assert accepted == model.offer(index, ts), (index, ts)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, MASK), st.permutations(range(64)))
def test_every_reordering_inside_the_window_is_accepted_exactly_once(start, order):
    window = ReplayWindow(floor=0)
    for index in order:
        assert offer(window, 5, (start + index) & MASK) > 0
    for index in order:
        assert offer(window, 5, (start + index) & MASK) == REPLAYED


def test_verdicts():
    window = ReplayWindow(floor=100)
    assert offer(window, 99, 10) == SUPERSEDED  # before the receiver started
    assert offer(window, 100, 10) == JUMPED  # the first
    assert offer(window, 100, 11) == NEWEST
    assert offer(window, 100, 11) == REPLAYED
    assert offer(window, 100, 10) == REPLAYED
    assert offer(window, 100, 9) == REORDERED
    assert offer(window, 100, 10 + WINDOW) == NEWEST  # ahead by less than WINDOW: slides
    assert offer(window, 100, 11) == REPLAYED  # 2047 behind: still inside, still remembered
    assert offer(window, 100, 10) == TOO_OLD  # 2048 behind
    assert offer(window, 100, 10 + 3 * WINDOW) == JUMPED  # ahead by WINDOW or more
    assert offer(window, 100, 11 + 2 * WINDOW) == REORDERED  # inside the new window, unseen


def test_counter_wraps():
    window = ReplayWindow(floor=0)
    for counter in (MASK - 1, MASK, 0, 1):
        assert offer(window, 1, counter) > 0
    assert offer(window, 1, MASK) == REPLAYED
    assert window.newest_counter == 1


def test_ahead_but_older_in_time_is_an_old_instance():
    window = ReplayWindow(floor=0)
    offer(window, 50, 1000)
    assert offer(window, 49, 1001) == SUPERSEDED


def test_restarted_sender_resets_the_window_and_old_datagrams_stay_out():
    window = ReplayWindow(floor=0)
    old = [(50, 5000 + i) for i in range(10)]
    for ts, counter in old:
        offer(window, ts, counter)
    # A restarted sender: new random counter (behind), timestamps strictly later.
    assert offer(window, 51, 4990) == JUMPED
    assert offer(window, 51, 4991) == NEWEST
    for ts, counter in old:
        assert offer(window, ts, counter) < 0, "a datagram of the old instance came back"


def test_jump_ahead_across_seconds_raises_the_floor():
    window = ReplayWindow(floor=0)
    for counter in range(100):
        offer(window, 10, counter)
    # An instance whose counter happened to land far ahead, one second later.
    assert offer(window, 11, 100 + 5 * WINDOW) == JUMPED
    assert window.floor == 11
    assert offer(window, 10, 150) == SUPERSEDED


def test_check_changes_nothing():
    window = ReplayWindow(floor=0)
    offer(window, 1, 10)
    before = (window.floor, window.newest_ts, window.newest_counter, bytes(window.ring))
    for counter in (9, 11, 10, 10 + 3 * WINDOW, 2**31 + 10):
        window.check(2, counter)
    assert (window.floor, window.newest_ts, window.newest_counter, bytes(window.ring)) == before


def test_ring_is_cleared_as_it_slides():
    window = ReplayWindow(floor=0)
    assert long_run_with_late_arrivals(lambda counter, index: offer(window, 7, counter), MASK - 5000) == LATE_ARRIVALS
