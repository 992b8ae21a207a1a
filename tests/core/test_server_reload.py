"""ServerCore.update_clients: the client table of a running core replaced, as a live reload does."""

from __future__ import annotations

import ipaddress
import os

import pytest

from vpncrypt.core.peer import CipherBudget, Peer
from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.core.wire import KIND_DATA, TO_SERVER

from tests.builders import KEY_EPOCH, NOW, SERVER_ID, ipv4_packet

net = ipaddress.ip_network
KEY_A, KEY_B, KEY_C = os.urandom(64), os.urandom(64), os.urandom(64)
A = ClientEntry(1, KEY_A, KEY_EPOCH, (net("203.0.113.2/32"),), "a")
B = ClientEntry(2, KEY_B, KEY_EPOCH, (net("203.0.113.3/32"),), "b")
A_EP, B_EP = ("192.0.2.10", 40000), ("192.0.2.11", 40002)


def client(entry: ClientEntry, counter: int = 100) -> Peer:
    return Peer(entry.client_id, entry.key, key_epoch=KEY_EPOCH, server_id=SERVER_ID, send_direction=TO_SERVER, now=NOW,
                initial_counter=counter)


def to_server(peer: Peer, source: str, now: float, payload: bytes = b"x") -> bytes:
    [datagram] = peer.seal(KIND_DATA, [ipv4_packet(source, "203.0.113.1", payload)], now)
    return datagram


def running_server() -> tuple[ServerCore, Peer, Peer]:
    server = ServerCore(SERVER_ID, [A, B], NOW)
    a, b = client(A), client(B)
    delivered = server.datagrams_received(
        [(to_server(a, "203.0.113.2", NOW + 5), A_EP), (to_server(b, "203.0.113.3", NOW + 5), B_EP)], NOW + 5)
    assert len(delivered.to_tun) == 2
    return server, a, b


def test_an_unchanged_client_keeps_its_window_endpoint_and_counters():
    server, a, _ = running_server()
    kept = server.peers[1]
    captured = to_server(a, "203.0.113.2", NOW + 6)
    assert server.datagrams_received([(captured, A_EP)], NOW + 6).to_tun
    server.update_clients([ClientEntry(1, KEY_A, KEY_EPOCH, A.addresses, "renamed"), B], NOW + 7)
    assert server.peers[1] is kept and kept.name == "renamed" and kept.endpoint == A_EP and kept.rx_packets == 2
    # Its replay window survived: the captured datagram is still a replay.
    assert server.datagrams_received([(captured, A_EP)], NOW + 7).to_tun == []
    assert server.drops["replayed"] == 1
    # And it goes on without a gap.
    assert server.datagrams_received([(to_server(a, "203.0.113.2", NOW + 7), A_EP)], NOW + 7).to_tun


def test_a_removed_client_is_gone_at_once_with_its_routes_and_cipher_context():
    server, a, _ = running_server()
    removed = server.peers[1]
    assert removed.contexts != {}
    server.update_clients([B], NOW + 6)
    assert 1 not in server.peers and removed.contexts == {}
    assert removed not in server.cipher_budget.live
    assert server.datagrams_received([(to_server(a, "203.0.113.2", NOW + 6), A_EP)], NOW + 6).to_tun == []
    assert server.drops["unknown_client"] == 1
    assert server.tun_packets_received([ipv4_packet("203.0.113.1", "203.0.113.2")], NOW + 6).to_network == []
    assert server.drops["no_route"] == 1


def test_a_rekeyed_client_refuses_the_old_key_and_starts_fresh():
    server, a, _ = running_server()
    server.update_clients([ClientEntry(1, KEY_C, KEY_EPOCH, A.addresses, "a"), B], NOW + 6)
    assert server.peers[1].endpoint is None
    # Stamped after the reload, so only the key can refuse it.
    assert server.datagrams_received([(to_server(a, "203.0.113.2", NOW + 8), A_EP)], NOW + 8).to_tun == []
    assert server.drops["auth_failed"] == 1 and server.peers[1].auth_failures == 1
    assert server.peers[1].status()["auth_failures"] == 1 and server.peers[2].auth_failures == 0
    fresh = Peer(1, KEY_C, key_epoch=KEY_EPOCH, server_id=SERVER_ID, send_direction=TO_SERVER, now=NOW + 6)
    assert server.datagrams_received([(to_server(fresh, "203.0.113.2", NOW + 7), A_EP)], NOW + 7).to_tun


def test_a_readdressed_client_routes_by_its_new_address_only():
    server, a, _ = running_server()
    before = server.peers[1]
    server.update_clients([ClientEntry(1, KEY_A, KEY_EPOCH, (net("203.0.113.9/32"),), "a"), B], NOW + 6)
    assert server.peers[1] is not before and server.peers[1].endpoint is None
    assert server.datagrams_received([(to_server(a, "203.0.113.2", NOW + 7), A_EP)], NOW + 7).to_tun == []
    assert server.drops["inner_source_not_allowed"] == 1
    assert server.datagrams_received([(to_server(a, "203.0.113.9", NOW + 7), A_EP)], NOW + 7).to_tun
    assert [e for _, e in server.tun_packets_received([ipv4_packet("203.0.113.1", "203.0.113.9")], NOW + 7).to_network] == [A_EP]


def test_a_new_client_is_heard_and_others_are_untouched():
    server, _, b = running_server()
    kept_b = server.peers[2]
    c_entry = ClientEntry(3, KEY_C, KEY_EPOCH, (net("203.0.113.4/32"),), "c")
    server.update_clients([A, B, c_entry], NOW + 6)
    c = Peer(3, KEY_C, key_epoch=KEY_EPOCH, server_id=SERVER_ID, send_direction=TO_SERVER, now=NOW + 6)
    assert server.datagrams_received([(to_server(c, "203.0.113.4", NOW + 7), ("192.0.2.12", 1))], NOW + 7).to_tun
    assert server.peers[2] is kept_b
    assert server.datagrams_received([(to_server(b, "203.0.113.3", NOW + 7), B_EP)], NOW + 7).to_tun


def test_a_table_with_a_duplicate_id_changes_nothing():
    server, _, _ = running_server()
    before = (dict(server.peers), server.routes)
    with pytest.raises(ValueError, match="client ID 2 is configured twice"):
        server.update_clients([A, B, ClientEntry(2, KEY_C, KEY_EPOCH, (net("203.0.113.5/32"),), "b2")], NOW + 6)
    assert (server.peers, server.routes) == before


def test_retain_lets_go_of_contexts_of_peers_not_kept():
    budget = CipherBudget(limit=8)
    peers = [Peer(i, os.urandom(64), key_epoch=KEY_EPOCH, server_id=1, send_direction=TO_SERVER, now=NOW,
                  budget=budget) for i in range(3)]
    for peer in peers:
        peer.context_for(KEY_EPOCH + 1)
    budget.retain(peers[1:])
    assert peers[0].contexts == {} and budget.live == peers[1:] and all(p.contexts for p in peers[1:])
