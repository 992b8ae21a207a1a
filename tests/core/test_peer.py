"""Peers: sealing (against the reference seal; timestamps that never go back) and the
budget of cipher contexts."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpncrypt.core.peer import Peer
from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.core.wire import KIND_DATA, MAX_PAYLOAD, TO_CLIENT, TO_SERVER, open_datagram, seal_datagram

from tests.builders import (
    epoch_aead,
    KEY_EPOCH,
    A_ADDR, A_EP, NOW, SERVER_ADDR, SERVER_EP, SERVER_ID, ipv4_packet, ipv6_packet, make_client, make_server, net,
    sender,
)


# --- sealing --------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=MAX_PAYLOAD), st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF))
def test_batch_seal_is_the_reference_seal(payload, counter, client_id):
    """Peer.seal produces exactly what the spec's reference function does, any payload 0..65535."""
    key = os.urandom(64)
    peer = Peer(client_id, key, key_epoch=KEY_EPOCH, server_id=SERVER_ID, send_direction=TO_SERVER, now=NOW,
                initial_counter=counter)
    [datagram] = peer.seal(KIND_DATA, [payload], NOW + 3)
    aead = epoch_aead(key, NOW + 3)  # the key of NOW's epoch, one step from KEY_EPOCH's
    expected = seal_datagram(aead, KIND_DATA, client_id, (counter + 1) % 2**32, int(NOW) + 3,
                             TO_SERVER, SERVER_ID, payload)
    assert datagram == expected
    assert open_datagram(aead, datagram, direction=TO_SERVER, server_id=SERVER_ID, now=NOW + 3)[2] == payload


def test_key_length_is_checked():
    with pytest.raises(ValueError, match="64 bytes"):
        Peer(1, b"short", key_epoch=KEY_EPOCH, server_id=1, send_direction=TO_SERVER, now=NOW)


def test_client_sends_non_decreasing_timestamps_when_its_clock_steps_back():
    client = make_client()
    server = make_server()
    a = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 50).to_network
    b = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 20).to_network  # clock stepped back
    assert len(server.datagrams_received(a + b, NOW + 50).to_tun) == 2


def test_a_client_that_just_started_hears_the_server_at_once():
    """The server stamps its replies no older than the newest it heard from the client,
    which is at or above the client's replay floor: no second of silence after a start."""
    server = make_server(now=NOW)
    client = make_client(now=NOW + 100.2)
    server.datagrams_received([(d, A_EP) for d, _ in client.handle_timer(NOW + 100.3)], NOW + 100.3)
    out = server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR)], NOW + 100.4).to_network
    assert len(client.datagrams_received([(d, SERVER_EP) for d, _ in out], NOW + 100.4).to_tun) == 1
    assert client.drops["superseded"] == 0


# --- cipher contexts ------------------------------------------------------------------

def test_cipher_contexts_stay_within_their_budget_and_come_back_when_needed():
    from vpncrypt.core.peer import CipherBudget

    keys = {i: os.urandom(64) for i in range(10)}
    entries = [ClientEntry(i, keys[i], KEY_EPOCH, (net(f"2001:db8:5::{i + 2}/128"),)) for i in range(10)]
    server = ServerCore(SERVER_ID, entries, NOW, cipher_budget=CipherBudget(limit=4))
    senders = {i: sender(i, keys[i]) for i in range(10)}
    for rounds in range(3):
        for i in range(10):
            packet = ipv6_packet(f"2001:db8:5::{i + 2}", "2001:db8:5::1", bytes([i]))
            [datagram] = senders[i].seal(KIND_DATA, [packet], NOW + 5 + rounds)
            assert server.datagrams_received([(datagram, A_EP)], NOW + 5 + rounds).to_tun == [packet]
            live = [p for p in server.peers.values() if p.contexts != {}]
            assert len(live) <= 4 and server.peers[i].contexts != {}
    # Sealing for a client whose context was given up makes it again.
    [(datagram, _)] = server.tun_packets_received([ipv6_packet("2001:db8:5::1", "2001:db8:5::2")], NOW + 9).to_network
    assert open_datagram(epoch_aead(keys[0], NOW + 9), datagram, direction=TO_CLIENT, server_id=SERVER_ID, now=NOW + 9)
    assert sum(p.contexts != {} for p in server.peers.values()) <= 4
