"""The client core in-process: what it accepts from its server, keepalives, and a
server name looked up again."""

from __future__ import annotations

from vpncrypt.core.client import ClientCore

from tests.builders import (
    KEY_EPOCH,
    A_ADDR, A_EP, KEY_A, NOW, SERVER_ADDR, SERVER_EP, SERVER_ID, ipv4_packet, make_client, make_server, net,
    seal_from_a, without_path_search,
)


def test_datagram_from_server_is_not_accepted_by_the_client_of_another_server():
    server = make_server()
    server.datagrams_received([(seal_from_a([ipv4_packet(A_ADDR, SERVER_ADDR)])[0], A_EP)], NOW + 5)
    [(datagram, _)] = server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR)], NOW + 5).to_network
    other = ClientCore(1, KEY_A, key_epoch=KEY_EPOCH, server_id=SERVER_ID + 1, server_endpoint=SERVER_EP,
                       routes=[net("203.0.113.0/24")], now=NOW)
    assert other.datagrams_received([(datagram, SERVER_EP)], NOW + 5).to_tun == []
    assert other.drops["auth_failed"] == 1 and other.server.auth_failures == 1
    # ... and a client's own datagram reflected back to it fails too.
    client = make_client()
    [(own, _)] = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 5).to_network
    assert client.datagrams_received([(own, SERVER_EP)], NOW + 5).to_tun == []
    assert client.drops["auth_failed"] == 1


def test_client_round_trip_and_source_filter():
    server = make_server()
    client = make_client()
    server.datagrams_received(client.handle_timer(NOW + 1), NOW + 1)
    inside = ipv4_packet(SERVER_ADDR, A_ADDR, b"in")
    outside = ipv4_packet("198.51.100.7", A_ADDR, b"not routed to the tunnel")
    out = server.tun_packets_received([inside, outside], NOW + 2).to_network
    assert client.datagrams_received([(d, SERVER_EP) for d, _ in out], NOW + 2) == ([inside], [])
    assert client.drops["inner_source_not_allowed"] == 1


def test_client_keepalive_timer():
    client = without_path_search(make_client(keepalive_interval=25))
    assert client.next_timer() == 0.0  # the first keepalive is due at once
    assert len(client.handle_timer(NOW)) == 1
    assert client.next_timer() == NOW + 25
    assert client.handle_timer(NOW + 24.9) == []
    [(keepalive, endpoint)] = client.handle_timer(NOW + 25)
    assert len(keepalive) == 24 and endpoint == SERVER_EP
    client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 40).to_network
    assert client.next_timer() == NOW + 65  # data counts as a sign of life


def test_client_keepalive_off():
    client = without_path_search(make_client(keepalive_interval=0))
    assert len(client.handle_timer(NOW)) == 1  # one at start, even so
    # Only the keys' next step is due, and it sends nothing.
    assert client.next_timer() == client.key_timer.due and client.handle_timer(NOW + 1000) == []


def test_a_server_looked_up_again_moves_only_when_its_address_is_gone():
    client = make_client()
    assert client.server_resolved([]) is None  # nothing known: stay
    assert client.server_resolved([("192.0.2.9", 51820), SERVER_EP]) is None  # still among them: no hop
    assert client.server.endpoint == SERVER_EP
    assert client.server_resolved([("192.0.2.9", 51820), ("192.0.2.8", 51820)]) == ("192.0.2.9", 51820)
    assert client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW).to_network[0][1] == ("192.0.2.9", 51820)
    six = make_client()
    six.server.endpoint = ("2001:db8::1", 51820, 0, 0)
    assert six.server_resolved([("2001:db8::1", 51820, 0, 0)]) is None
    assert six.server_resolved([("2001:db8::1", 51821, 0, 0)]) == ("2001:db8::1", 51821, 0, 0)  # the port counts


def test_the_server_address_never_follows_a_datagram_source():
    """A copy of a server datagram raced from another address is accepted (it is
    authentic and new) but the client keeps sending to the configured server."""
    server = make_server()
    client = make_client()
    server.datagrams_received(client.handle_timer(NOW + 1), NOW + 1)
    [(datagram, _)] = server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR)], NOW + 2).to_network
    raced_from = ("198.51.100.66", 4444)
    assert client.datagrams_received([(datagram, raced_from)], NOW + 2).to_tun
    assert client.server.endpoint == SERVER_EP and client.server.roams == 0
    assert client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 3).to_network[0][1] == SERVER_EP
