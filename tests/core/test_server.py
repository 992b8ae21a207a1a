"""The server core in-process: round trips, restarts, routing by address, client to
client, status, configuration."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.core.wire import KIND_DATA, MAX_PAYLOAD, TO_CLIENT, open_datagram

from tests.builders import (
    epoch_aead,
    KEY_EPOCH,
    A_ADDR, A_EP, B_ADDR, B_EP, KEY_A, KEY_B, NOW, SERVER_ADDR, SERVER_EP, SERVER_ID, ipv4_packet, ipv6_packet,
    make_client, make_server, seal_from_a, sender,
)


# --- seal/open round trips ------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(0, MAX_PAYLOAD - 20).flatmap(lambda n: st.binary(min_size=n, max_size=n)))
def test_round_trip_any_payload_size(tail):
    packet = ipv4_packet(A_ADDR, SERVER_ADDR, tail)
    server = make_server()
    [datagram] = seal_from_a([packet])
    assert server.datagrams_received([(datagram, A_EP)], NOW + 5).to_tun == [packet]


def test_ipv6_round_trip_and_routing():
    server = make_server()
    packet = ipv6_packet("2001:db8:b::77", "2001:db8::1", b"hello")
    [datagram] = sender(2, KEY_B).seal(KIND_DATA, [packet], NOW + 5)
    assert server.datagrams_received([(datagram, B_EP)], NOW + 5).to_tun == [packet]
    reply = ipv6_packet("2001:db8::1", "2001:db8:b::77", b"back")
    [(out, endpoint)] = server.tun_packets_received([reply], NOW + 6).to_network
    assert endpoint == B_EP
    assert open_datagram(epoch_aead(KEY_B, NOW + 6), out, direction=TO_CLIENT, server_id=SERVER_ID, now=NOW + 6)[2] == reply


def test_server_restart_accepts_new_traffic_and_refuses_old():
    server = make_server(now=NOW)
    client = make_client(now=NOW)
    old = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 10).to_network
    assert len(server.datagrams_received(old, NOW + 10).to_tun) == 1
    restarted = make_server(now=NOW + 10.5)
    assert restarted.datagrams_received(old, NOW + 11).to_tun == []  # a replay after the restart
    assert restarted.drops["superseded"] == 1
    new = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 11).to_network
    assert len(restarted.datagrams_received(new, NOW + 11).to_tun) == 1


# --- routing by address ---------------------------------------------------------------

def test_prefix_routes_and_longest_match():
    server = make_server()
    [datagram] = sender(2, KEY_B).seal(KIND_DATA, [ipv6_packet("2001:db8:b::5", "2001:db8::1")], NOW + 5)
    assert len(server.datagrams_received([(datagram, B_EP)], NOW + 5).to_tun) == 1
    # client a's /128 inside nothing of b's; a cannot send from b's /64
    [spoof] = seal_from_a([ipv6_packet("2001:db8:b::5", "2001:db8::1")])
    assert server.datagrams_received([(spoof, A_EP)], NOW + 5).to_tun == []


def test_tun_packets_route_by_destination():
    server = make_server()
    assert server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR)], NOW).to_network == []
    assert server.drops["no_endpoint"] == 1
    assert server.tun_packets_received([ipv4_packet(SERVER_ADDR, "203.0.113.99"), b"", b"\x45"], NOW).to_network == []
    assert server.drops["no_route"] == 1
    assert server.drops["tun_malformed"] == 2
    server.datagrams_received(make_client().handle_timer(NOW + 1), NOW + 1)
    [(datagram, endpoint)] = server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR)], NOW + 1).to_network
    assert endpoint == SERVER_EP and len(datagram) == 20 + 24


@pytest.mark.parametrize("allowed", [True, False])
def test_client_to_client(allowed):
    server = make_server(client_to_client=allowed)
    client_b = make_client(2, KEY_B)
    server.datagrams_received([(d, B_EP) for d, _ in client_b.handle_timer(NOW + 1)], NOW + 1)
    packet = ipv4_packet(A_ADDR, B_ADDR, b"to b")
    out = server.datagrams_received([(d, A_EP) for d in seal_from_a([packet])], NOW + 5)
    assert out.to_tun == []
    if allowed:
        [(datagram, endpoint)] = out.to_network
        assert endpoint == B_EP
        assert client_b.datagrams_received([(datagram, SERVER_EP)], NOW + 5).to_tun == [packet]
    else:
        assert out.to_network == [] and server.drops["client_to_client_denied"] == 1


# --- status and configuration ---------------------------------------------------------

def test_status_has_no_secrets():
    server = make_server()
    text = repr(server.status()) + repr(make_client().status()) + repr(server.peers[1].status())
    for secret in (KEY_A, KEY_B):
        assert secret.hex() not in text and repr(secret) not in text
    assert "drops" in server.status() and server.status()["clients"][0]["name"] == "a"


def test_duplicate_client_ids_are_refused():
    with pytest.raises(ValueError, match="client ID 1 is configured twice"):
        ServerCore(SERVER_ID, [ClientEntry(1, KEY_A, KEY_EPOCH, ()), ClientEntry(1, KEY_B, KEY_EPOCH, ())], NOW)
