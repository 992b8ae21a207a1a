"""The key ratchet (docs/PROTOCOL.md 1.1): deterministic, one way, and what is erased stays erased."""

from __future__ import annotations

import os

import pytest

from vpncrypt.core.epochs import KEEP_SECONDS, EpochKeys, epoch_key, next_advance, next_epoch_key, oldest_needed_epoch

from tests.builders import KEY_EPOCH, NOW, make_client, make_server


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


def test_the_cores_erase_old_keys_on_their_timer_and_ask_for_them_to_be_saved():
    server, client = make_server(), make_client()
    for core in (server, client):
        assert core.keys_to_save() is not None  # the loaded key moved on at start already
        assert core.save_wanted(bounds=False, keys=True) and not core.save_wanted(bounds=True, keys=False)
        core.keys_saved(core.keys_to_save())
        assert core.keys_to_save() is None and not core.save_wanted(bounds=True, keys=True)
    later = NOW + 3600 * 3 + 600
    assert server.next_timer() <= later
    server.handle_timer(later)
    client.handle_timer(later)
    assert server.save_wanted(bounds=False, keys=True) and client.save_wanted(bounds=False, keys=True)
    saved = server.keys_to_save()
    assert set(saved) == {1, 2} and all(epoch == oldest_needed_epoch(later, 3600) for epoch, _ in saved.values())
    assert client.keys_to_save() == {1: saved[1]}  # both ends of client 1 agree
    assert saved[1][0] > KEY_EPOCH


def test_keys_that_move_on_while_a_table_is_written_stay_to_be_saved():
    """The shell writes in a thread while the loop runs on: a timer may move
    the keys between keys_to_save and keys_saved."""
    for core in (make_server(), make_client()):
        writing = core.keys_to_save()
        later = NOW + 3600 * 3 + 600
        core.handle_timer(later)  # while ``writing`` is being written
        core.keys_saved(writing)
        newer = core.keys_to_save()
        assert newer is not None and newer != writing
        core.keys_saved(newer)
        assert core.keys_to_save() is None


def test_a_forward_step_undone_within_a_minute_erases_nothing():
    """Issue 10: a timer firing while the clock is an hour or two ahead must not
    erase the key of the hour that is really current."""
    client = make_client()
    client.keys_saved(client.keys_to_save())
    current = client.server.keys.key_epoch
    for step in (3600, 7200):
        client.clock_stepped(step)
        client.handle_timer(NOW + 600 + step)  # the timer fires during the step
        assert client.server.keys.key_epoch == current, step
        client.clock_stepped(-step)
        client.handle_timer(NOW + 610)  # and after it, back where it was
        assert client.server.keys.key_epoch == current
    # Real time passes: what the true clock no longer needs is erased as usual.
    client.handle_timer(NOW + 3600 + 600)
    assert client.server.keys.key_epoch == oldest_needed_epoch(NOW + 3600 + 600, 3600) > current


def test_a_forward_step_that_stays_is_acted_on_after_the_hold():
    server = make_server()
    current = server.peers[1].keys.key_epoch
    server.clock_stepped(7200)
    server.handle_timer(NOW + 7200 + 10)
    assert server.peers[1].keys.key_epoch == current and server.next_timer() >= NOW + 7200 + 10 + 59
    server.handle_timer(NOW + 7200 + 10 + 61)
    assert server.peers[1].keys.key_epoch == oldest_needed_epoch(NOW + 7271, 3600)
