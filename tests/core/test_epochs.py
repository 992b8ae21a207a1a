"""The key ratchet (docs/PROTOCOL.md 1.1): deterministic, one way, and what is erased stays erased."""

from __future__ import annotations

import os

import pytest

from ipaddress import ip_network as net

from vpncrypt.core import epochs
from vpncrypt.core.epochs import (
    HOLD_RETRY, KEEP_SECONDS, MAX_HOLD, EpochKeys, epoch_key, next_advance, next_epoch_key, oldest_needed_epoch,
)
from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.core.wire import KIND_DATA, KIND_KEEPALIVE, TO_CLIENT

from tests.builders import (
    A_ADDR, A_EP, KEY_A, KEY_B, KEY_EPOCH, NOW, SERVER_ADDR, SERVER_EP, SERVER_ID, ipv4_packet, make_client, make_server,
    sender,
    without_path_search,
)


def test_two_holders_of_one_key_agree_on_every_later_key_without_talking():
    key = os.urandom(64)
    a, b = EpochKeys(key, 100), EpochKeys(key, 100)
    b.advance(103)
    assert [a.for_epoch(e) for e in (103, 104, 110)] == [b.for_epoch(e) for e in (103, 104, 110)]
    assert a.for_epoch(104) == epoch_key(key, 100, 104) == next_epoch_key(epoch_key(key, 100, 103), 104)
    assert len({a.for_epoch(e) for e in range(100, 110)}) == 10  # every epoch its own key


def test_after_advancing_nothing_kept_derives_an_erased_epochs_key():
    key = os.urandom(64)
    keys = EpochKeys(key, 100)
    erased = {e: keys.for_epoch(e) for e in range(100, 105)}
    derived = keys.for_epoch(108)
    assert keys.advance(105) and keys.key_epoch == 105
    kept = [(105, keys.oldest)] + [(105 + 1 + i, secret) for i, secret in enumerate(keys._later)]
    assert [epoch for epoch, _ in kept] == [105, 106, 107, 108] and kept[-1][1] == derived == keys.for_epoch(108)
    assert all(secret == epoch_key(key, 100, epoch) for epoch, secret in kept)
    for epoch, secret in kept:  # derive forward from everything still held
        for later in range(epoch, 112):
            assert epoch_key(secret, epoch, later) not in erased.values()
    with pytest.raises(ValueError, match="erased"):
        keys.for_epoch(104)
    assert not keys.advance(104)  # never back


def test_same_chain_recognises_a_key_of_an_older_or_newer_epoch():
    key = os.urandom(64)
    keys = EpochKeys(key, 100)
    keys.advance(102)
    assert keys.same_chain(key, 100) and keys.same_chain(epoch_key(key, 100, 105), 105)
    assert not keys.same_chain(os.urandom(64), 102)


def test_keys_are_kept_back_to_the_oldest_rebuildable_timestamp():
    assert KEEP_SECONDS == 512
    assert oldest_needed_epoch(3600 * 10 + 511, 3600) == 9 and oldest_needed_epoch(3600 * 10 + 512, 3600) == 10
    assert next_advance(3600 * 10 + 100, 3600) == 3600 * 10 + 512


def heard(core, at: float, peer) -> None:
    """``core`` accepts a datagram ``peer`` (a sending Peer) stamps at ``at``,
    received at ``at`` (with the restart bounds it asks for saved at once)."""
    if isinstance(core, ServerCore):
        [datagram] = peer.seal(KIND_KEEPALIVE, [b""], at)
        core.datagrams_received([(datagram, A_EP)], at)
    else:
        [datagram] = peer.seal(KIND_DATA, [ipv4_packet(SERVER_ADDR, A_ADDR)], at)
        delivered = core.datagrams_received([(datagram, SERVER_EP)], at).to_tun
    if core.held_datagrams():
        delivered = core.bounds_saved(core.bounds_to_save(), at).to_tun
    assert isinstance(core, ServerCore) or len(delivered) == 1
    assert not any(core.drops.values()), dict(core.drops)


def pair():
    """A server and a client core, each with a sender that speaks for the other end."""
    return (make_server(), sender(), make_client(), sender(direction=TO_CLIENT))


def test_the_cores_erase_old_keys_on_their_timer_once_the_other_end_vouches_and_ask_for_them_to_be_saved():
    server, client_sender, client, server_sender = pair()
    assert server.keys_to_save() == {1: (KEY_EPOCH, KEY_A), 2: (KEY_EPOCH, KEY_B)}  # as loaded: nothing erased
    server.keys_saved(server.keys_to_save())
    assert client.keys_to_save() is None
    later = NOW + 3600 * 3 + 600
    heard(server, later, client_sender)
    heard(client, later, server_sender)
    assert server.next_timer() <= later
    server.handle_timer(later)
    client.handle_timer(later)
    assert server.save_wanted(bounds=False, keys=True) and client.save_wanted(bounds=False, keys=True)
    saved = server.keys_to_save()
    assert set(saved) == {1, 2} and all(epoch == oldest_needed_epoch(later, 3600) for epoch, _ in saved.values())
    assert client.keys_to_save() == {1: saved[1]}  # both ends of client 1 agree
    assert saved[1][0] > KEY_EPOCH
    for core in (server, client):
        core.keys_saved(core.keys_to_save())
        assert core.keys_to_save() is None and not core.save_wanted(bounds=True, keys=True)


def test_keys_that_move_on_while_a_table_is_written_stay_to_be_saved():
    """The shell writes in a thread while the loop runs on: a timer may move
    the keys between keys_to_save and keys_saved."""
    server, client_sender, client, server_sender = pair()
    server.keys_saved(server.keys_to_save())
    for core, other in ((server, client_sender), (client, server_sender)):
        heard(core, NOW + 3600 + 600, other)
        core.handle_timer(NOW + 3600 + 600)
        writing = core.keys_to_save()
        later = NOW + 3600 * 3 + 600
        heard(core, later, other)
        core.handle_timer(later)  # while ``writing`` is being written
        core.keys_saved(writing)
        newer = core.keys_to_save()
        assert newer is not None and newer != writing
        core.keys_saved(newer)
        assert core.keys_to_save() is None


@pytest.mark.parametrize("ahead", [3600, 7200, 14 * 3600])
def test_an_end_started_with_its_clock_hours_ahead_keeps_its_keys_and_is_heard_once_the_clock_is_right(ahead):
    """Booted before NTP set the clock, with the hardware clock kept in local
    time: the ends must not erase the keys of the epoch that is really current."""
    server, client_sender, client, server_sender = pair()
    # Restart bounds kept, as the daemons keep them.
    ahead_server = make_server(now=NOW + ahead, restart_bounds={})
    ahead_client = without_path_search(make_client(now=NOW + ahead, restart_bounds={}))
    for minute in range(0, 3600 * 2, 60):  # two hours of its clock, hearing nothing
        ahead_server.handle_timer(NOW + ahead + minute)
        ahead_client.handle_timer(NOW + ahead + minute)
    assert ahead_server.keys_to_save() == {1: (KEY_EPOCH, KEY_A), 2: (KEY_EPOCH, KEY_B)}  # as loaded
    assert ahead_client.keys_to_save() is None
    # NTP steps both clocks back; each is heard by a peer whose clock was right all along.
    now = NOW + 3600 * 2
    for core in (ahead_server, ahead_client):
        core.clock_stepped(-ahead)
    [datagram] = ahead_client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], now).to_network
    assert len(server.datagrams_received([(datagram[0], A_EP)], now).to_tun) == 1
    heard(ahead_server, now, client_sender)
    [datagram] = ahead_server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR)], now).to_network
    assert len(client.datagrams_received([(datagram[0], SERVER_EP)], now).to_tun) == 1
    # Vouched for at last: what the clock no longer needs is erased.
    ahead_server.handle_timer(now + HOLD_RETRY)
    assert ahead_server.peers[1].keys.key_epoch == oldest_needed_epoch(now, 3600) > KEY_EPOCH


def test_a_forward_step_erases_nothing_until_a_peer_is_heard_at_the_new_time():
    """Issue 10: a timer firing while the clock is an hour or two ahead must not
    erase the key of the hour that is really current, however long the step lasts."""
    server, client_sender, client, server_sender = pair()
    heard(client, NOW + 5, server_sender)
    current = client.server.keys.key_epoch
    real = NOW + 600  # the true time; the client's clock reads real + step during a step
    for step in (3600, 7200):
        client.clock_stepped(step)
        for _ in range(30):  # half an hour of timers during the step
            client.handle_timer(real + step)
            real += 60
        assert client.server.keys.key_epoch == current and client.keys_to_save() is None, step
        client.clock_stepped(-step)
        client.handle_timer(real)  # and after it, back where it was
        assert client.server.keys.key_epoch == current
    # A step that was a correction: the other end agrees with the new time.
    client.clock_stepped(3600)
    later = real + 3600
    heard(client, later, server_sender)
    assert client.next_timer() <= later + HOLD_RETRY
    client.handle_timer(later + HOLD_RETRY)
    assert client.server.keys.key_epoch == oldest_needed_epoch(later, 3600) > current


def test_without_a_word_from_any_peer_keys_go_max_hold_behind_the_clock():
    """Forward secrecy has a bound even for an end nobody talks to."""
    server = make_server()
    for last in range(0, 3 * 3600 + 60, 60):
        server.handle_timer(NOW + MAX_HOLD + last)
    assert all(peer.keys.key_epoch == oldest_needed_epoch(NOW + last, 3600) > KEY_EPOCH
               for peer in server.peers.values())
    assert server.next_timer() <= NOW + MAX_HOLD + last + HOLD_RETRY  # still looking for a word


def test_one_client_heard_vouches_for_the_server_clock_for_every_client():
    """An idle client's keys are erased on time: the server's clock is vouched
    for by whichever client was heard, not by each."""
    server, client_sender, _, _ = pair()
    heard(server, NOW + 5, client_sender)  # and idle since
    later = NOW + 3 * 3600 + 600
    heard(server, later, sender(2, KEY_B))
    server.handle_timer(later)
    assert server.peers[2].keys.key_epoch == server.peers[1].keys.key_epoch == oldest_needed_epoch(later, 3600)


def test_a_client_added_by_a_reload_erases_what_the_others_erased():
    server, client_sender, _, _ = pair()
    later = NOW + 3 * 3600 + 600
    heard(server, later, client_sender)
    server.handle_timer(later)
    server.keys_saved(server.keys_to_save())
    server.update_clients([*(ClientEntry(p.client_id, *stored, p.addresses, p.name) for p, stored in ()),
                           ClientEntry(1, KEY_A, KEY_EPOCH, (net(A_ADDR + "/32"), net("2001:db8::2/128")), "a"),
                           ClientEntry(3, KEY_B, KEY_EPOCH, (net("203.0.113.9/32"),), "c")], later + 1)
    assert server.peers[3].keys.key_epoch == oldest_needed_epoch(later, 3600) > KEY_EPOCH
    assert server.keys_to_save()[3][0] == server.peers[3].keys.key_epoch


def test_a_round_over_many_peers_takes_a_call_a_slice_each_due_at_once(monkeypatch):
    """65,536 clients idle at an epoch's end each derive a key: the round is cut
    into calls of HEARD_SLICE peers looked at, then KEY_SLICE erased, so that
    the event loop serves datagrams between them (bench/scale_bench.py)."""
    monkeypatch.setattr(epochs, "HEARD_SLICE", 4)
    monkeypatch.setattr(epochs, "KEY_SLICE", 3)
    keys = {i: os.urandom(64) for i in range(1, 11)}
    server = ServerCore(SERVER_ID, [ClientEntry(i, key, KEY_EPOCH, (net(f"203.0.113.{i + 10}/32"),), f"c{i}")
                                    for i, key in keys.items()], NOW)
    while server.next_timer() <= NOW:  # the round begun at the start
        server.handle_timer(NOW)
    later = NOW + 3 * 3600 + 600
    heard(server, later, sender(10, keys[10]))  # in the last slice looked at: any one peer vouches
    calls = 0
    while True:
        server.handle_timer(later)
        calls += 1
        if server.next_timer() != later:
            break
        moved = sum(peer.keys.key_epoch > KEY_EPOCH for peer in server.peers.values())
        assert moved <= 3 * max(0, calls - 2), (calls, moved)  # 3 calls look, then 3 peers a call
    assert calls == 3 + 4 - 1  # the last look and the first erasing share a call
    assert all(peer.keys.key_epoch == oldest_needed_epoch(later, 3600) for peer in server.peers.values())


def test_an_end_held_back_looks_again_as_soon_as_it_accepts_data():
    """A server started on a key store hours old erases as soon as a client's
    data vouches for its clock, not a HOLD_RETRY later (and a client likewise)."""
    server, client_sender, client, server_sender = pair()
    without_path_search(client)
    later = NOW + 3 * 3600 + 600
    for core in (server, client):
        core.handle_timer(later)
        assert core.key_timer.due == later + core.key_timer.retry  # held back: no word yet
    [datagram] = client_sender.seal(KIND_DATA, [ipv4_packet(A_ADDR, SERVER_ADDR)], later + 1)
    assert server.datagrams_received([(datagram, A_EP)], later + 1).to_tun
    heard(client, later + 1, server_sender)
    for core in (server, client):
        assert core.key_timer.due == later + 1 and core.next_timer() <= later + 1
        core.handle_timer(later + 1)
    assert server.peers[1].keys.key_epoch == client.server.keys.key_epoch == oldest_needed_epoch(later, 3600)
