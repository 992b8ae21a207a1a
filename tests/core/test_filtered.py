"""The set of client IDs the server's kernel should refuse: who enters it, for how long, and who never does.

In-process, time passed in: a flood of forgeries naming client b's ID, and
client a's real datagrams beside it."""

from __future__ import annotations

import pytest

from vpncrypt.core import filtered
from vpncrypt.core.filtered import FLOOD_REFUSALS, FLOOD_SECONDS, FORGET_AFTER, HOLD_FIRST, HOLD_MAX, FilteredIds
from vpncrypt.core.peer import FAILURE_BURST, FAILURE_RATE
from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.core.wire import KIND_DATA

from tests.builders import (
    A_ADDR, A_EP, B_EP, KEY_B, KEY_EPOCH, NOW, SERVER_ADDR, SERVER_ID, ipv4_packet, make_server, sender,
)
from tests.core.test_floods import garbage

T = NOW + 5
FLOOD = FAILURE_BURST + FLOOD_REFUSALS  # the credit spent, then a flood's worth of refusals


def flood(server, client_id: int, now: float, count: int = FLOOD, first_counter: int = 1):
    return server.datagrams_received(
        [(garbage(client_id, now, counter=c), B_EP) for c in range(first_counter, first_counter + count)], now)


def test_an_id_enters_once_the_limiter_refused_a_floods_worth_of_its_datagrams_within_a_second():
    server = make_server()
    version = server.filter_version
    flood(server, 2, T, FLOOD - 1)
    assert server.filtered_client_ids() == [] and server.filter_version == version
    assert server.drops["auth_failures_limited"] == FLOOD_REFUSALS - 1
    flood(server, 2, T + 0.05, 1, first_counter=FLOOD)  # less than a credit refilled meanwhile
    assert server.filtered_client_ids() == [2] and server.filter_version != version
    assert server.status()["kernel_filter"] == {"client_ids": [2], "full": 0}


def test_a_burst_of_forgeries_or_a_slow_flood_is_left_to_the_limiter():
    server = make_server()
    flood(server, 2, T, 300)  # a few hundred forgeries once
    for second in range(1, 5):  # then just under a flood's worth each second
        flood(server, 2, T + second * FLOOD_SECONDS, FLOOD_REFUSALS - 1, first_counter=second * 10_000)
    assert server.drops["auth_failures_limited"] > 4 * (FLOOD_REFUSALS - 1)
    assert server.filtered_client_ids() == []
    # The client of that ID is heard as soon as its credit refills.
    b = sender(client_id=2, key=KEY_B)
    later = T + 5 + 1 / FAILURE_RATE
    [b_real] = b.seal(KIND_DATA, [ipv4_packet("203.0.113.3", SERVER_ADDR)], later)
    assert server.datagrams_received([(b_real, B_EP)], later).to_tun


def test_failures_at_the_refill_rate_never_enter():
    server = make_server()
    for second in range(30):
        for i in range(int(FAILURE_RATE) - 1):
            now = T + second + i / FAILURE_RATE
            flood(server, 2, now, 1, first_counter=second * 100 + i + 1)
    assert server.drops["auth_failed"] == 30 * (int(FAILURE_RATE) - 1)
    assert server.filtered_client_ids() == []


def test_the_hold_ends_on_the_timer_the_core_asks_for():
    server = make_server()
    keys_due = server.next_timer()
    flood(server, 2, T)
    assert server.next_timer() == T + HOLD_FIRST < keys_due
    server.handle_timer(T + HOLD_FIRST - 0.01)
    assert server.filtered_client_ids() == [2]
    version = server.filter_version
    server.handle_timer(T + HOLD_FIRST)
    assert server.filtered_client_ids() == [] and server.filter_version != version
    assert server.next_timer() == keys_due


def test_the_hold_doubles_while_the_flood_goes_on_up_to_the_cap_and_starts_over_after_a_quiet_spell():
    server = make_server()
    now, holds, counter = T, [], 1
    for _ in range(8):
        # The kernel drops the flood while the ID is held; when it is let go,
        # the refilled credit is spent again at once, and the limiter refuses the rest.
        flood(server, 2, now, FLOOD, first_counter=counter)
        counter += FLOOD
        hold, until = server.filtered.holds[2]
        holds.append(hold)
        now = until
        server.handle_timer(now)
        assert server.filtered_client_ids() == []
    assert holds == [1, 2, 4, 8, 16, 30, 30, 30] and HOLD_MAX == 30
    now += FORGET_AFTER + 1
    flood(server, 2, now, FLOOD, first_counter=counter)
    assert server.filtered.holds[2][0] == HOLD_FIRST
    # What is remembered of past holds is let go after a quiet spell, too.
    server.handle_timer(now + HOLD_FIRST + FORGET_AFTER + 1)
    assert server.filtered.holds == {}


def test_a_legitimate_client_is_never_filtered_and_the_flooded_one_is_back_after_its_hold():
    server = make_server()
    b = sender(client_id=2, key=KEY_B)
    flood(server, 2, T, 2 * FLOOD)
    a = sender()
    for step in range(20):  # client a keeps talking throughout
        [real] = a.seal(KIND_DATA, [ipv4_packet(A_ADDR, SERVER_ADDR)], T + step * 0.1)
        assert server.datagrams_received([(real, A_EP)], T + step * 0.1).to_tun
    assert server.filtered_client_ids() == [2]
    server.handle_timer(T + HOLD_FIRST)
    assert server.filtered_client_ids() == []
    later = T + HOLD_FIRST + FAILURE_BURST / FAILURE_RATE  # the limiter's credit refilled too
    [b_real] = b.seal(KIND_DATA, [ipv4_packet("203.0.113.3", SERVER_ADDR)], later)
    assert server.datagrams_received([(b_real, B_EP)], later).to_tun


def test_unknown_ids_and_other_drops_never_enter():
    server = make_server()
    flood(server, 999, T, 2 * FLOOD)  # not a configured client: unknown_client
    # Outside the time window: no cipher work (but one check for a time answer).
    server.datagrams_received([(garbage(2, T - 3600, counter=c), B_EP) for c in range(1, 2 * FLOOD)], T)
    assert server.drops["unknown_client"] and server.drops["outside_time_window"]
    assert server.filtered_client_ids() == []


def test_the_set_is_capped_and_what_does_not_fit_is_counted():
    entries = [ClientEntry(i, bytes([i]) * 64, KEY_EPOCH, ()) for i in range(1, 8)]
    server = ServerCore(SERVER_ID, entries, NOW)
    server.filtered.limit = 3
    for client_id in range(1, 8):
        flood(server, client_id, T)
    assert server.filtered_client_ids() == [1, 2, 3]
    assert server.filtered.full == 4
    # Those over the cap are still refused unopened by the limiter, counted.
    limited = server.drops["auth_failures_limited"]
    flood(server, 7, T, 5, first_counter=10_000)
    assert server.drops["auth_failures_limited"] == limited + 5
    assert server.filtered.full == 4  # five refusals are no flood
    assert filtered.LIMIT == 256


def test_a_stepped_clock_keeps_each_hold_its_length():
    server = make_server()
    flood(server, 2, T)
    server.clock_stepped(-3600)
    assert server.next_timer() == T + HOLD_FIRST - 3600
    server.handle_timer(T - 3600 + HOLD_FIRST)
    assert server.filtered_client_ids() == []


def test_a_reload_keeps_the_set_by_id():
    server = make_server()
    flood(server, 2, T)
    server.update_clients([ClientEntry(2, bytes(64), KEY_EPOCH, (), "b re-keyed")], T)
    assert server.filtered_client_ids() == [2]


@pytest.mark.parametrize("limit", [1, 2])
def test_filtered_ids_alone(limit):
    ids = FilteredIds(limit=limit)
    assert ids.enter(5, 100.0) == HOLD_FIRST and ids.enter(5, 100.5) is None
    assert ids.enter(6, 100.0) == (HOLD_FIRST if limit == 2 else None)
    assert ids.next_expiry() == 101.0
    ids.expire(101.0)
    assert ids.client_ids() == [] and ids.next_expiry() is None
