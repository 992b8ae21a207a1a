"""Replay protection across a restart of the receiver, with the peers' clocks off
by -120 to +120 s: restart bounds saved ahead of use (core/restart.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpncrypt.core import restart
from vpncrypt.core.restart import KEEP_AHEAD, SAVE_LEAD

from tests.builders import (
    A_ADDR, A_EP, B_ADDR, B_EP, KEY_B, NOW, SERVER_ADDR, SERVER_EP, ipv4_packet, keepalives, make_client, make_server,
)

THIRD_PARTY = ("198.51.100.66", 5555)
OFFSETS = (-120, -15, 0, 15, 120)


def bounds_wanted(core):
    """``bounds_to_save``, checked against the cheap ``save_wanted`` the daemon asks first."""
    table = core.bounds_to_save()
    assert core.save_wanted(bounds=True, keys=False) == (table is not None)
    assert not core.save_wanted(bounds=False, keys=False)
    return table


def saved_after(core, now_datagrams):
    """Feed datagrams, saving whatever the core asks for after each batch, as the
    daemon does; returns the inner packets and the last saved table."""
    delivered, table = [], {}
    for datagrams, now in now_datagrams:
        delivered += core.datagrams_received(datagrams, now).to_tun
        wanted = bounds_wanted(core)
        if wanted is not None:
            delivered += core.bounds_saved(wanted, now).to_tun
            table = wanted
    return delivered, table


def pings(client, count, now):
    """``count`` datagrams from the client, sealed at ``now`` by its own clock."""
    return [d for d, _ in client.tun_packets_received(
        [ipv4_packet(A_ADDR, SERVER_ADDR, i.to_bytes(2, "big")) for i in range(count)], now).to_network]


@pytest.mark.parametrize("offset", OFFSETS)
def test_nothing_accepted_before_a_server_restart_is_accepted_after_it(offset):
    """The reproduction of issue 10: ten pings, kill -9, restart within a second,
    the captured datagrams sent again from a third address."""
    server = make_server(restart_bounds={})
    client = make_client(now=NOW + offset)
    captured = []
    batches = []
    for second in range(1, 11):
        datagrams = pings(client, 1, NOW + offset + second)
        captured += datagrams
        batches.append(([(d, A_EP) for d in datagrams], NOW + second))
    delivered, table = saved_after(server, batches)
    assert len(delivered) == 10  # the first waited for the first save
    restarted = make_server(now=NOW + 11, restart_bounds=table)
    out = restarted.datagrams_received([(d, THIRD_PARTY) for d in captured], NOW + 11)
    assert out.to_tun == [] and restarted.peers[1].endpoint is None
    # Refused by the restart bound, or (the oldest, at -120 s) already by the time window.
    assert restarted.drops["superseded"] + restarted.drops["outside_time_window"] == len(captured)
    assert restarted.drops["superseded"] >= 8


@pytest.mark.parametrize("offset", OFFSETS)
def test_nothing_accepted_before_a_client_restart_is_accepted_after_it(offset):
    server = make_server(now=NOW + offset)
    client = make_client(restart_bounds={})
    server.peers[1].endpoint = A_EP
    captured, batches = [], []
    for second in range(1, 11):
        datagrams = [d for d, _ in server.tun_packets_received(
            [ipv4_packet(SERVER_ADDR, A_ADDR, bytes([second]))], NOW + offset + second).to_network]
        captured += datagrams
        batches.append(([(d, SERVER_EP) for d in datagrams], NOW + second))
    delivered, table = saved_after(client, batches)
    assert len(delivered) == 10
    restarted = make_client(now=NOW + 11, restart_bounds=table)
    assert restarted.datagrams_received([(d, THIRD_PARTY) for d in captured], NOW + 11).to_tun == []


def test_without_saved_bounds_a_clock_ahead_replays_which_is_why_they_are_kept():
    """The version-1 rule alone (refuse what is stamped before the receiver's own
    start): a client 15 s ahead gets its captured datagrams accepted again."""
    server = make_server()
    client = make_client(now=NOW + 15)
    captured = pings(client, 3, NOW + 16)
    assert len(server.datagrams_received([(d, A_EP) for d in captured], NOW + 1).to_tun) == 3
    restarted = make_server(now=NOW + 2)
    assert len(restarted.datagrams_received([(d, THIRD_PARTY) for d in captured], NOW + 2).to_tun) == 3


def test_a_datagram_past_the_saved_bound_waits_for_the_save_and_changes_nothing():
    server = make_server(restart_bounds={2: int(NOW) - 50})
    client = make_client()
    [datagram] = pings(client, 1, NOW + 1)
    assert server.datagrams_received([(datagram, A_EP)], NOW + 1).to_tun == []
    assert server.peers[1].endpoint is None and server.peers[1].rx_packets == 0
    table = server.bounds_to_save()
    assert table == {1: NOW + 1 + SAVE_LEAD, 2: NOW - 50}  # client 2 keeps its saved bound
    # Held, never accepted: opened once the save is done, so still exactly once.
    assert len(server.bounds_saved(table, NOW + 1).to_tun) == 1
    assert server.bounds_to_save() is None and server.drops["pending_restart_state"] == 0
    assert server.peers[1].endpoint == A_EP
    assert server.datagrams_received([(datagram, A_EP)], NOW + 1).to_tun == []  # and now a replay


def test_a_steady_peer_never_waits_once_saves_keep_up():
    server = make_server(restart_bounds={})
    client = make_client()
    batches = [([(d, A_EP) for d in pings(client, 5, NOW + t / 4)], NOW + t / 4) for t in range(4, 400)]
    delivered, _ = saved_after(server, batches)
    assert server.drops["pending_restart_state"] == 0 and len(server.restart.held) == 0
    assert len(delivered) == 5 * 396


def test_a_client_with_a_correct_clock_is_heard_soon_after_a_restart():
    server = make_server(restart_bounds={})
    client = make_client()
    _, table = saved_after(server, [([(d, A_EP) for d in pings(client, 1, NOW + t)], NOW + t) for t in range(1, 5)])
    last = NOW + 4
    restarted = make_server(now=last + 1, restart_bounds=table)
    heard_at = None
    for t in range(1, 6):
        delivered, _ = saved_after(restarted, [([(d, A_EP) for d in pings(client, 1, last + t)], last + t)])
        if delivered:
            heard_at = t
            break
    assert heard_at is not None and heard_at <= SAVE_LEAD + 1


def test_a_bound_from_an_unsaved_table_is_never_relied_on():
    """What was asked for but not yet written gives no right to accept."""
    server = make_server(restart_bounds={1: int(NOW) + 5})
    client = make_client()
    [early] = pings(client, 1, NOW + 5)
    [late] = pings(client, 1, NOW + 6)
    assert server.datagrams_received([(early, A_EP)], NOW + 5).to_tun == []  # floor is bound + 1
    assert server.datagrams_received([(late, A_EP)], NOW + 6).to_tun == []  # above the saved bound
    assert server.bounds_to_save()[1] == int(NOW) + 6 + SAVE_LEAD and len(server.restart.held) == 1


def test_a_datagram_that_comes_while_a_table_is_written_waits_for_a_table_that_covers_it():
    """The daemon writes in a thread and goes on receiving: what the write
    under way does not cover must wait for the next one, or a restart that
    finds that write on disk would take it again."""
    server = make_server(restart_bounds={})
    client = make_client()
    saved_after(server, [([(d, A_EP) for d in pings(client, 1, NOW + 1)], NOW + 1)])
    [steady] = pings(client, 1, NOW + 2)
    assert len(server.datagrams_received([(steady, A_EP)], NOW + 2).to_tun) == 1
    writing = server.bounds_to_save()  # handed to the save thread
    assert writing[1] == NOW + 2 + SAVE_LEAD
    [late] = pings(client, 1, NOW + 4)  # comes while it is written
    assert server.datagrams_received([(late, A_EP)], NOW + 4).to_tun == []
    assert server.held_datagrams() == 1
    assert server.bounds_saved(writing, NOW + 4).to_tun == []  # still above what is on disk
    assert server.held_datagrams() == 1 and server.drops["pending_restart_state"] == 0
    covering = server.bounds_to_save()
    assert covering[1] == NOW + 4 + SAVE_LEAD
    assert len(server.bounds_saved(covering, NOW + 5).to_tun) == 1 and server.held_datagrams() == 0


@settings(max_examples=80, deadline=None)
@given(
    offset=st.sampled_from(OFFSETS),
    steps=st.lists(st.one_of(
        st.tuples(st.just("send"), st.integers(1, 4)),
        st.tuples(st.just("replay"), st.integers(0, 10_000)),
        st.tuples(st.just("save"), st.just(0)),
        st.tuples(st.just("written"), st.just(0)),
        st.tuples(st.just("restart"), st.integers(0, 1)),
        st.tuples(st.just("tick"), st.integers(1, 3)),
    ), max_size=60),
)
def test_each_datagram_is_delivered_at_most_once_across_restarts(offset, steps):
    """Random interleavings of sends, replays of anything sent, saves that may lag,
    restarts from the last saved table, and time passing. A save is begun
    ("save") and ends later ("written"), with datagrams taken in between, as
    the daemon's save thread does; a restart while one is under way finds the
    old table or (a crash after its rename) the new one."""
    now = NOW
    table: dict = {}
    writing: dict | None = None  # the table a save under way writes
    server = make_server(restart_bounds=table)
    client = make_client(now=NOW + offset)
    sent: list[bytes] = []
    delivered: list[bytes] = []
    serial = 0
    for action, value in steps:
        if action == "tick":
            now += value
        elif action == "send":
            packets = []
            for _ in range(value):
                serial += 1
                packets.append(ipv4_packet(A_ADDR, SERVER_ADDR, serial.to_bytes(4, "big")))
            datagrams = [d for d, _ in client.tun_packets_received(packets, now + offset).to_network]
            sent += datagrams
            delivered += server.datagrams_received([(d, A_EP) for d in datagrams], now).to_tun
        elif action == "replay" and sent:
            delivered += server.datagrams_received([(sent[value % len(sent)], THIRD_PARTY)], now).to_tun
        elif action == "save" and writing is None:
            writing = server.bounds_to_save()
        elif action == "written" and writing is not None:
            table, writing = writing, None
            delivered += server.bounds_saved(table, now).to_tun
        elif action == "restart":
            if value and writing is not None:
                table = writing
            writing = None
            now += 1
            server = make_server(now=now, restart_bounds=table)
    payloads = [p[20:] for p in delivered]
    assert len(payloads) == len(set(payloads))


def test_without_any_saved_state_the_floor_is_the_receivers_start():
    """First start, or the state lost: version 1's bound, said in the spec."""
    server = make_server(now=NOW + 10, restart_bounds={}, restart_state_lost=True)
    client = make_client()
    [before_start] = pings(client, 1, NOW + 10)
    assert server.datagrams_received([(before_start, A_EP)], NOW + 10).to_tun == []
    assert server.drops["superseded"] == 1


# --- keeping the bounds of a peer that paused ahead of its clock (restart.keep_ahead) ---------

def idle(core, start, end, late=0.0):
    """Run ``core``'s timer from ``start`` to ``end`` (seconds), ``late``
    seconds after each deadline (a busy loop), saving what it asks for, as the
    daemon does; returns the last table saved."""
    table = None
    now = start
    for _ in range(int(end - start) * 10 + 10):  # a timer that stops moving is a bug, not a hang
        deadline = core.next_timer()
        now = max(now, deadline + late if deadline is not None else end)
        if now >= end:
            return table
        core.handle_timer(now)
        wanted = bounds_wanted(core)
        if wanted is not None:
            core.bounds_saved(wanted, now)
            table = wanted
    raise AssertionError(f"the timer stopped moving at {now}")


def server_after_a_burst(offset=0, start=1.0):
    """A server that accepted a second of pings from a client whose clock runs
    ``offset`` s ahead, from ``start`` s after NOW on."""
    server = make_server(restart_bounds={})
    client = make_client(now=NOW + offset)
    saved_after(server, [([(d, A_EP) for d in pings(client, 2, NOW + offset + start + t / 4)],
                          NOW + start + t / 4) for t in range(4)])
    return server, client


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("pause", [3, 10, KEEP_AHEAD - 2])
@pytest.mark.parametrize("start, late", [(1.0, 0.0), (1.6, 0.5)])
def test_a_peer_that_paused_is_not_made_to_wait_for_a_save(offset, pause, start, late):
    """The first datagram after a pause of up to KEEP_AHEAD seconds is opened at
    once: the server's timer kept the client's bound ahead of its clock, also
    where its second began before the burst did and the timer runs late."""
    server, client = server_after_a_burst(offset, start)
    idle(server, NOW + 2, NOW + 3.05 + pause, late)
    [datagram] = pings(client, 1, NOW + offset + 3.05 + pause)
    assert len(server.datagrams_received([(datagram, A_EP)], NOW + 3.05 + pause).to_tun) == 1
    assert server.held_datagrams() == 0


@pytest.mark.parametrize("stop", [KEEP_AHEAD + quarter / 4 for quarter in range(-4, 17)])
def test_a_peer_that_sent_for_longer_than_KEEP_AHEAD_is_still_kept_ahead_when_it_pauses(stop):
    """Data every quarter of a second until ``stop``, then a pause of 10 s."""
    server = make_server(restart_bounds={})
    client = make_client()
    t = 1.0
    while t < stop:
        saved_after(server, [([(d, A_EP) for d in pings(client, 1, NOW + t)], NOW + t)])
        deadline = server.next_timer()
        if deadline <= NOW + t + 0.25:
            idle(server, deadline, NOW + t + 0.25)
        t += 0.25
    idle(server, NOW + t, NOW + t + 10)
    [datagram] = pings(client, 1, NOW + t + 10)
    assert len(server.datagrams_received([(datagram, A_EP)], NOW + t + 10).to_tun) == 1


def test_a_server_that_paused_is_not_made_to_wait_by_the_client():
    server = make_server()
    client = make_client(restart_bounds={})
    server.peers[1].endpoint = A_EP

    def reply(now):
        return [(d, SERVER_EP) for d, _ in server.tun_packets_received(
            [ipv4_packet(SERVER_ADDR, A_ADDR, b"x")], now).to_network]

    saved_after(client, [(reply(NOW + 1 + t / 4), NOW + 1 + t / 4) for t in range(4)])
    idle(client, NOW + 2, NOW + 12)
    assert len(client.datagrams_received(reply(NOW + 12), NOW + 12).to_tun) == 1
    assert client.held_datagrams() == 0


def test_after_KEEP_AHEAD_seconds_of_silence_bounds_stay_where_they_are():
    server, client = server_after_a_burst()
    last_ts = server.peers[1].window.newest_ts
    idle(server, NOW + 2, NOW + 2 + 3 * KEEP_AHEAD)
    bound = server.peers[1].durable_bound
    assert last_ts + KEEP_AHEAD - 1 <= bound <= last_ts + KEEP_AHEAD + SAVE_LEAD
    assert server.restart.keep_ahead_due is None and server.bounds_to_save() is None
    # Nothing more to do: the timer is the keys' again, not once a second.
    assert server.next_timer() > NOW + 3 * KEEP_AHEAD
    [late] = pings(client, 1, NOW + 2 + 3 * KEEP_AHEAD)
    assert server.datagrams_received([(late, A_EP)], NOW + 2 + 3 * KEEP_AHEAD).to_tun == []  # waits, as before
    assert server.held_datagrams() == 1


def test_data_in_the_second_of_a_keepalive_that_asked_for_a_bound_is_kept_ahead_too():
    """The keepalive crosses the bound, the data after it in the same second
    does not: the data still counts, and the pause after it does not wait."""
    server = make_server(restart_bounds={})
    client = make_client()
    keepalive = [(d, A_EP) for d, _ in keepalives(client.handle_timer(NOW + 1.1))]
    saved_after(server, [(keepalive, NOW + 1.1)])
    saved_after(server, [([(d, A_EP) for d in pings(client, 2, NOW + 1.5)], NOW + 1.5)])
    assert server.bounds_to_save() is None  # the data asked for nothing
    idle(server, NOW + 1.6, NOW + 9.6)
    [datagram] = pings(client, 1, NOW + 9.6)
    assert len(server.datagrams_received([(datagram, A_EP)], NOW + 9.6).to_tun) == 1


def test_keepalives_alone_keep_no_bound_ahead():
    """A tunnel idle but for keepalives asks for no write a second."""
    server = make_server(restart_bounds={})
    client = make_client()
    saves = 0
    for second in range(1, 60, 25):
        keepalive = [(d, A_EP) for d, _ in keepalives(client.handle_timer(NOW + second))]
        saved_after(server, [(keepalive, NOW + second)])
        saves += 1
        bound = server.peers[1].durable_bound
        idle(server, NOW + second, NOW + second + 24)
        assert server.peers[1].durable_bound == bound  # nothing raised it meanwhile
    assert server.peers[1].window.newest_counter >= 0  # they were accepted
    assert server.restart.keep_ahead_due is None and not server.restart.active


def test_a_wall_clock_jump_cannot_push_a_bound_far_past_the_peers_timestamps():
    """The server's clock steps an hour forward unnoticed: the client is still
    refused after a restart for at most KEEP_AHEAD + SAVE_LEAD seconds past
    its last datagram."""
    server, client = server_after_a_burst()
    last_ts = server.peers[1].window.newest_ts
    idle(server, NOW + 3600, NOW + 3605)
    assert server.peers[1].durable_bound <= last_ts + KEEP_AHEAD + SAVE_LEAD


@pytest.mark.parametrize("offset", OFFSETS)
def test_nothing_accepted_before_a_restart_is_accepted_after_it_with_bounds_kept_ahead(offset):
    """A pause with the bound kept ahead, a datagram, kill -9 and restart: the
    captured datagrams are refused, and the client is heard again as soon as
    a steady sender would be: SAVE_LEAD seconds after its last datagram."""
    server, client = server_after_a_burst(offset)
    table = idle(server, NOW + 2, NOW + 8)
    [datagram] = pings(client, 1, NOW + offset + 8)
    assert len(server.datagrams_received([(datagram, A_EP)], NOW + 8).to_tun) == 1
    restarted = make_server(now=NOW + 9, restart_bounds=table)
    assert restarted.datagrams_received([(datagram, THIRD_PARTY)], NOW + 9).to_tun == []
    heard_at = None
    for t in range(1, 6):
        delivered, _ = saved_after(restarted, [([(d, A_EP) for d in pings(client, 1, NOW + offset + 8 + t)],
                                                NOW + 8 + t)])
        if delivered:
            heard_at = t
            break
    assert heard_at is not None and heard_at <= SAVE_LEAD  # as a steady sender would be


@pytest.mark.parametrize("offset", OFFSETS)
def test_a_clean_stop_writes_the_bounds_down_to_what_was_accepted(offset):
    """Nothing accepted before the stop is accepted after it, and the client is
    heard at once in its next second, not once its clock passes the bound that
    was kept ahead of it; client 2, never heard, keeps its saved bound."""
    server = make_server(restart_bounds={2: int(NOW) - 50})
    client = make_client(now=NOW + offset)
    saved_after(server, [([(d, A_EP) for d in pings(client, 2, NOW + offset + 1 + t / 4)], NOW + 1 + t / 4)
                         for t in range(4)])
    idle(server, NOW + 2, NOW + 8.2)
    captured = pings(client, 3, NOW + offset + 8.5)
    assert len(server.datagrams_received([(d, A_EP) for d in captured], NOW + 8.5).to_tun) == 3
    assert server.peers[1].durable_bound > server.peers[1].window.newest_ts  # kept ahead
    table = server.bounds_at_stop()
    assert table == {1: server.peers[1].window.newest_ts, 2: int(NOW) - 50}
    restarted = make_server(now=NOW + 9, restart_bounds=table)
    assert restarted.datagrams_received([(d, THIRD_PARTY) for d in captured], NOW + 9).to_tun == []
    [next_second] = pings(client, 1, NOW + offset + 9.5)
    delivered, _ = saved_after(restarted, [([(next_second, A_EP)], NOW + 9.5)])  # after a write, as ever
    assert len(delivered) == 1


def test_a_restart_within_the_second_of_the_last_datagram_refuses_the_rest_of_that_second():
    """docs/PROTOCOL.md 6: a server stopped cleanly and started again within the
    second of a client's last datagram refuses the client (superseded) until its
    clock passes that second; the time answer that earns changes nothing, as the
    clocks agree."""
    server = make_server(restart_bounds={})
    client = make_client()
    delivered, _ = saved_after(server, [([(d, A_EP) for d in pings(client, 1, NOW + 1.2)], NOW + 1.2)])
    assert len(delivered) == 1
    table = server.bounds_at_stop()
    assert table[1] == int(NOW) + 1  # the second of its last datagram
    restarted = make_server(now=NOW + 1.5, restart_bounds=table)
    out = restarted.datagrams_received([(d, A_EP) for d in pings(client, 1, NOW + 1.7)], NOW + 1.7)
    assert out.to_tun == [] and restarted.drops["superseded"] == 1
    [(answer, _)] = out.to_network
    client.datagrams_received([(answer, SERVER_EP)], NOW + 1.7)
    assert client.drops["unexpected_time_answer"] == 0 and abs(client.clock_offset) < 0.002
    out = restarted.datagrams_received([(d, A_EP) for d in pings(client, 1, NOW + 1.9)], NOW + 1.9)
    assert out.to_tun == [] and restarted.drops["superseded"] == 2
    delivered, _ = saved_after(restarted, [([(d, A_EP) for d in pings(client, 1, NOW + 2.1)], NOW + 2.1)])
    assert len(delivered) == 1


def test_a_receiver_without_restart_state_writes_none_at_stop():
    assert make_server().bounds_at_stop() is None and make_client().bounds_at_stop() is None


def two_clients_after_a_burst():
    """A server that accepted a second of pings from clients 1 and 2."""
    server = make_server(restart_bounds={})
    clients = ((make_client(), A_ADDR, A_EP), (make_client(client_id=2, key=KEY_B), B_ADDR, B_EP))

    def ping_each(now):
        return [(d, endpoint) for client, source, endpoint in clients
                for d, _ in client.tun_packets_received([ipv4_packet(source, SERVER_ADDR, b"p")], now).to_network]

    saved_after(server, [(ping_each(NOW + 1 + t / 4), NOW + 1 + t / 4) for t in range(4)])
    return server, ping_each


def test_a_round_over_more_peers_than_a_slice_takes_a_call_a_slice_each_due_at_once(monkeypatch):
    """However many clients are active, one call holds the event loop only
    for KEEP_AHEAD_SLICE of them; the next round is due a second after the
    first call of this one."""
    monkeypatch.setattr(restart, "KEEP_AHEAD_SLICE", 1)
    server, _ = two_clients_after_a_burst()
    assert len(server.restart.active) == 2 and not server.restart.unsaved
    start = server.next_timer()
    server.handle_timer(start)
    assert len(server.restart.unsaved) == 1
    assert server.next_timer() == start  # the other peer, at once
    server.handle_timer(start + 0.01)
    assert len(server.restart.unsaved) == 2
    assert server.next_timer() == start + 1


@pytest.mark.parametrize("pause", [3, KEEP_AHEAD - 2])
def test_peers_that_paused_are_not_made_to_wait_when_a_round_takes_several_calls(monkeypatch, pause):
    monkeypatch.setattr(restart, "KEEP_AHEAD_SLICE", 1)
    server, ping_each = two_clients_after_a_burst()
    idle(server, NOW + 2, NOW + 3.05 + pause, late=0.3)
    assert len(server.datagrams_received(ping_each(NOW + 3.05 + pause), NOW + 3.05 + pause).to_tun) == 2
    assert server.held_datagrams() == 0


def test_a_clock_step_in_the_middle_of_a_round_moves_the_next_round_with_it(monkeypatch):
    monkeypatch.setattr(restart, "KEEP_AHEAD_SLICE", 1)
    server, _ = two_clients_after_a_burst()
    start = server.next_timer()
    server.handle_timer(start)
    server.clock_stepped(100.0)
    server.handle_timer(start + 100.01)
    assert server.next_timer() == start + 101


def test_keep_ahead_before_it_is_due_does_nothing():
    """The cores call it on every timer (keys, keepalives ...): only a call at
    or after keep_ahead_due raises bounds and moves the deadline."""
    server, _ = server_after_a_burst()
    due = server.restart.keep_ahead_due
    wanted = server.peers[1].wanted_bound
    server.restart.keep_ahead(server.peers, due - 0.5)
    assert server.restart.keep_ahead_due == due and not server.restart.unsaved
    assert server.peers[1].wanted_bound == wanted
    server.restart.keep_ahead(server.peers, due)
    assert server.restart.keep_ahead_due == due + 1 and server.restart.unsaved == {server.peers[1]}
