"""Server and client cores in-process: sealing, opening, filtering, roaming, routing."""

from __future__ import annotations

import ipaddress
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import given, settings
from hypothesis import strategies as st

from vpncrypt.core.client import ClientCore
from vpncrypt.core.inner import REMEMBERED_ADDRESSES, PrefixTable
from vpncrypt.core.peer import Peer
from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.core.wire import (
    KIND_DATA, KIND_KEEPALIVE, MAX_PAYLOAD, TO_CLIENT, TO_SERVER, open_datagram, seal_datagram,
)

from tests.builders import NOW, SERVER_ID, ipv4_packet, ipv6_packet
from tests.builders import LATE_ARRIVALS, Model, deliveries

net = ipaddress.ip_network
A_ADDR, B_ADDR, SERVER_ADDR = "203.0.113.2", "203.0.113.3", "203.0.113.1"
A_EP, A_EP2, B_EP = ("192.0.2.10", 40000), ("198.51.100.20", 40001), ("192.0.2.11", 40002)
SERVER_EP = ("192.0.2.1", 51820)
KEY_A, KEY_B = os.urandom(64), os.urandom(64)


def make_server(now=NOW, **options) -> ServerCore:
    clients = [
        ClientEntry(1, KEY_A, (net(A_ADDR + "/32"), net("2001:db8::2/128")), "a"),
        ClientEntry(2, KEY_B, (net(B_ADDR + "/32"), net("2001:db8:b::/64")), "b"),
    ]
    return ServerCore(SERVER_ID, clients, now, **options)


def make_client(client_id=1, key=KEY_A, now=NOW, **options) -> ClientCore:
    return ClientCore(
        client_id, key, server_id=SERVER_ID, server_endpoint=SERVER_EP,
        routes=[net("203.0.113.0/24"), net("2001:db8::/32")], now=now, **options,
    )


def sender(client_id=1, key=KEY_A, now=NOW, direction=TO_SERVER, server_id=SERVER_ID, counter=None) -> Peer:
    return Peer(client_id, key, server_id=server_id, send_direction=direction, now=now, initial_counter=counter)


def seal_from_a(payloads, now=NOW + 5, peer=None):
    return (peer or sender()).seal(KIND_DATA, payloads, now)


def window_state(peer):
    w = peer.window
    return (w.floor, w.newest_ts, w.newest_counter, bytes(w.ring or b""))


def snapshot(server):
    return {cid: (window_state(p), p.endpoint, p.rx_packets) for cid, p in server.peers.items()}


# --- seal/open round trips --------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(0, MAX_PAYLOAD - 20).flatmap(lambda n: st.binary(min_size=n, max_size=n)))
def test_round_trip_any_payload_size(tail):
    packet = ipv4_packet(A_ADDR, SERVER_ADDR) + tail
    packet = packet[:MAX_PAYLOAD]
    server = make_server()
    [datagram] = seal_from_a([packet])
    assert server.datagrams_received([(datagram, A_EP)], NOW + 5).to_tun == [packet]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=MAX_PAYLOAD), st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF))
def test_batch_seal_is_the_reference_seal(payload, counter, client_id):
    """Peer.seal produces exactly what the spec's reference function does, any payload 0..65535."""
    key = os.urandom(64)
    peer = Peer(client_id, key, server_id=SERVER_ID, send_direction=TO_SERVER, now=NOW, initial_counter=counter)
    [datagram] = peer.seal(KIND_DATA, [payload], NOW + 3)
    expected = seal_datagram(AESSIV(key), KIND_DATA, client_id, (counter + 1) % 2**32, int(NOW) + 3,
                             TO_SERVER, SERVER_ID, payload)
    assert datagram == expected
    assert open_datagram(AESSIV(key), datagram, direction=TO_SERVER, server_id=SERVER_ID, now=NOW + 3)[2] == payload


def test_ipv6_round_trip_and_routing():
    server = make_server()
    packet = ipv6_packet("2001:db8:b::77", "2001:db8::1", b"hello")
    [datagram] = sender(2, KEY_B).seal(KIND_DATA, [packet], NOW + 5)
    assert server.datagrams_received([(datagram, B_EP)], NOW + 5).to_tun == [packet]
    reply = ipv6_packet("2001:db8::1", "2001:db8:b::77", b"back")
    [(out, endpoint)] = server.tun_packets_received([reply], NOW + 6)
    assert endpoint == B_EP
    assert open_datagram(AESSIV(KEY_B), out, direction=TO_CLIENT, server_id=SERVER_ID, now=NOW + 6)[2] == reply


# --- every corruption is rejected and changes nothing ------------------------------

@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_single_bit_flip_is_rejected_without_state_change(data):
    packet = ipv4_packet(A_ADDR, SERVER_ADDR, b"payload" * 20)
    server = make_server()
    datagrams = seal_from_a([packet, packet])
    server.datagrams_received([(datagrams[0], A_EP)], NOW + 5)
    before = snapshot(server)
    bit = data.draw(st.integers(0, len(datagrams[1]) * 8 - 1))
    flipped = bytearray(datagrams[1])
    flipped[bit // 8] ^= 1 << (bit % 8)
    out = server.datagrams_received([(bytes(flipped), A_EP2)], NOW + 5)
    assert out.to_tun == [] and out.to_network == []
    assert snapshot(server) == before
    assert sum(server.drops.values()) == 1


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_truncation_and_extension_are_rejected(data):
    packet = ipv4_packet(A_ADDR, SERVER_ADDR, b"z" * 60)
    [datagram] = seal_from_a([packet])
    if data.draw(st.booleans()):
        changed = datagram[: data.draw(st.integers(0, len(datagram) - 1))]
    else:
        changed = datagram + data.draw(st.binary(min_size=1, max_size=64))
    server = make_server()
    before = snapshot(server)
    assert server.datagrams_received([(changed, A_EP)], NOW + 5).to_tun == []
    assert snapshot(server) == before


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_are_dropped_and_counted(garbage):
    server = make_server()
    before = snapshot(server)
    out = server.datagrams_received([(garbage, A_EP)], NOW + 5)
    assert out == ([], [])
    assert snapshot(server) == before
    assert sum(server.drops.values()) == 1


@pytest.mark.parametrize("change, reason", [
    (dict(key=os.urandom(64)), "auth_failed"),                  # valid client ID, wrong key
    (dict(server_id=SERVER_ID + 1), "auth_failed"),             # meant for another server
    (dict(direction=TO_CLIENT), "auth_failed"),                 # reflected
    (dict(client_id=9), "unknown_client"),
    (dict(now=NOW + 400), "outside_time_window"),
])
def test_rejections_with_reason(change, reason):
    server = make_server()
    options = dict(client_id=1, key=KEY_A, now=NOW, direction=TO_SERVER, server_id=SERVER_ID)
    options.update(change)
    seal_time = options["now"] + 5
    peer = sender(**options)
    [datagram] = peer.seal(KIND_DATA, [ipv4_packet(A_ADDR, SERVER_ADDR)], seal_time)
    assert server.datagrams_received([(datagram, A_EP)], NOW + 5).to_tun == []
    assert server.drops[reason] == 1
    assert server.peers[1].endpoint is None


def test_datagram_from_server_is_not_accepted_by_the_client_of_another_server():
    server = make_server()
    server.datagrams_received([(seal_from_a([ipv4_packet(A_ADDR, SERVER_ADDR)])[0], A_EP)], NOW + 5)
    [(datagram, _)] = server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR)], NOW + 5)
    other = ClientCore(1, KEY_A, server_id=SERVER_ID + 1, server_endpoint=SERVER_EP,
                       routes=[net("203.0.113.0/24")], now=NOW)
    assert other.datagrams_received([(datagram, SERVER_EP)], NOW + 5) == []
    assert other.drops["auth_failed"] == 1
    # ... and a client's own datagram reflected back to it fails too.
    client = make_client()
    [(own, _)] = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 5)
    assert client.datagrams_received([(own, SERVER_EP)], NOW + 5) == []
    assert client.drops["auth_failed"] == 1


def test_keepalive_with_a_body_is_bad_length_and_unknown_kinds_are_refused():
    server = make_server()
    peer = sender()
    [keepalive] = peer.seal(KIND_KEEPALIVE, [b"x"], NOW + 5)
    [other_kind] = peer.seal(0x14, [ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 5)
    server.datagrams_received([(keepalive, A_EP), (other_kind, A_EP)], NOW + 5)
    assert server.drops["bad_length"] == 1 and server.drops["unknown_kind"] == 1
    assert server.peers[1].endpoint is None


# --- replay and time ------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(deliveries())
def test_server_accepts_exactly_what_the_window_model_accepts(case):
    """The same model as test_replay, through the whole open path (its inlined fast path included)."""
    start, per_second, order = case
    t0 = int(NOW) + 1
    server = make_server()
    model = Model(floor=t0)
    peer = sender(counter=start - 1)
    packet = ipv4_packet(A_ADDR, SERVER_ADDR)
    sealed = {}
    for index in sorted(set(order)):
        ts = t0 + index // per_second
        peer.counter = (start + index - 1) % 2**32
        [sealed[index]] = peer.seal(KIND_DATA, [packet], ts)
    for index in order:
        ts = t0 + index // per_second
        accepted = len(server.datagrams_received([(sealed[index], A_EP)], ts).to_tun) == 1
        assert accepted == model.offer(index, ts), (index, ts)

def test_exact_replay_is_dropped_even_reordered():
    server = make_server()
    datagrams = seal_from_a([ipv4_packet(A_ADDR, SERVER_ADDR, bytes([i])) for i in range(10)])
    order = [3, 1, 2, 0, 9, 4, 5, 8, 6, 7]
    out = server.datagrams_received([(datagrams[i], A_EP) for i in order], NOW + 5)
    assert len(out.to_tun) == 10
    again = server.datagrams_received([(datagrams[i], A_EP) for i in order], NOW + 6)
    assert again.to_tun == [] and server.drops["replayed"] == 10


def test_duplicates_inside_one_batch_are_dropped():
    server = make_server()
    [datagram] = seal_from_a([ipv4_packet(A_ADDR, SERVER_ADDR)])
    assert len(server.datagrams_received([(datagram, A_EP)] * 3, NOW + 5).to_tun) == 1
    assert server.drops["replayed"] == 2


def test_server_restart_accepts_new_traffic_and_refuses_old():
    server = make_server(now=NOW)
    client = make_client(now=NOW)
    old = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 10)
    assert len(server.datagrams_received(old, NOW + 10).to_tun) == 1
    restarted = make_server(now=NOW + 10.5)
    assert restarted.datagrams_received(old, NOW + 11).to_tun == []  # a replay after the restart
    assert restarted.drops["superseded"] == 1
    new = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 11)
    assert len(restarted.datagrams_received(new, NOW + 11).to_tun) == 1


def test_client_restart_is_accepted_and_its_old_datagrams_are_not():
    server = make_server()
    first = sender(now=NOW, counter=1000)
    old = first.seal(KIND_DATA, [ipv4_packet(A_ADDR, SERVER_ADDR)] * 3, NOW + 5)
    server.datagrams_received([(d, A_EP) for d in old], NOW + 5)
    second = sender(now=NOW + 5.2, counter=10)  # restarted within the same second, counter behind
    new = second.seal(KIND_DATA, [ipv4_packet(A_ADDR, SERVER_ADDR)] * 3, NOW + 5.3)
    assert len(server.datagrams_received([(d, A_EP2) for d in new], NOW + 5.3).to_tun) == 3
    assert server.peers[1].endpoint == A_EP2
    assert server.datagrams_received([(d, A_EP) for d in old], NOW + 6).to_tun == []
    assert server.peers[1].endpoint == A_EP2


def test_client_sends_non_decreasing_timestamps_when_its_clock_steps_back():
    client = make_client()
    server = make_server()
    a = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 50)
    b = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 20)  # clock stepped back
    assert len(server.datagrams_received(a + b, NOW + 50).to_tun) == 2


# --- roaming --------------------------------------------------------------------------------

def test_endpoint_follows_the_newest_authenticated_datagram():
    server = make_server()
    peer = sender()
    d1, d2, d3 = peer.seal(KIND_DATA, [ipv4_packet(A_ADDR, SERVER_ADDR)] * 3, NOW + 5)
    server.datagrams_received([(d1, A_EP)], NOW + 5)
    assert server.peers[1].endpoint == A_EP
    server.datagrams_received([(d3, A_EP2)], NOW + 5)
    assert server.peers[1].endpoint == A_EP2 and server.peers[1].roams == 1
    server.datagrams_received([(d2, A_EP)], NOW + 5)  # older, reordered: accepted, does not move
    assert server.peers[1].endpoint == A_EP2
    server.datagrams_received([(d3, A_EP)], NOW + 5)  # replayed from elsewhere
    assert server.peers[1].endpoint == A_EP2


def test_keepalive_moves_the_endpoint_and_reaches_no_tun():
    server = make_server()
    client = make_client()
    out = server.datagrams_received([(d, A_EP) for d, _ in client.start(NOW + 1)], NOW + 1)
    assert out == ([], []) and server.peers[1].endpoint == A_EP


def test_a_forged_datagram_from_another_address_never_moves_a_client():
    server = make_server()
    [datagram] = seal_from_a([ipv4_packet(A_ADDR, SERVER_ADDR)])
    server.datagrams_received([(datagram, A_EP)], NOW + 5)
    forged = sender(key=os.urandom(64)).seal(KIND_DATA, [ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 6)[0]
    server.datagrams_received([(forged, A_EP2)], NOW + 6)
    assert server.peers[1].endpoint == A_EP


# --- cryptokey routing -------------------------------------------------------------------

def test_inner_source_must_belong_to_the_sender():
    server = make_server()
    spoofed = seal_from_a([ipv4_packet(B_ADDR, SERVER_ADDR), ipv4_packet("192.0.2.99", SERVER_ADDR)])
    assert server.datagrams_received([(d, A_EP) for d in spoofed], NOW + 5).to_tun == []
    assert server.drops["inner_source_not_allowed"] == 2


def test_malformed_inner_packets_are_dropped():
    server = make_server()
    bad = seal_from_a([b"", b"\x45" + bytes(10), b"\x60" + bytes(30), b"\x15" + bytes(40)])
    assert server.datagrams_received([(d, A_EP) for d in bad], NOW + 5).to_tun == []
    assert server.drops["inner_malformed"] == 4


def test_prefix_routes_and_longest_match():
    server = make_server()
    [datagram] = sender(2, KEY_B).seal(KIND_DATA, [ipv6_packet("2001:db8:b::5", "2001:db8::1")], NOW + 5)
    assert len(server.datagrams_received([(datagram, B_EP)], NOW + 5).to_tun) == 1
    # client a's /128 inside nothing of b's; a cannot send from b's /64
    [spoof] = seal_from_a([ipv6_packet("2001:db8:b::5", "2001:db8::1")])
    assert server.datagrams_received([(spoof, A_EP)], NOW + 5).to_tun == []


def test_prefix_table_answers_stay_right_when_remembered():
    table: PrefixTable[str] = PrefixTable()
    table.add(ipaddress.ip_network("203.0.113.0/24"), "tunnel")
    inside, outside = ipaddress.ip_address("203.0.113.77").packed, ipaddress.ip_address("198.51.100.1").packed
    assert [table.lookup(inside), table.lookup(outside)] * 2 == ["tunnel", None] * 2
    table.add(ipaddress.ip_network("203.0.113.64/26"), "narrower")  # a longer match now wins
    table.add(ipaddress.ip_network("198.51.100.0/24"), "other")
    assert [table.lookup(inside), table.lookup(outside)] == ["narrower", "other"]
    for host in range(2 * REMEMBERED_ADDRESSES):
        address = ipaddress.ip_address(int(ipaddress.ip_address("203.0.113.0")) + host % 256).packed
        assert table.lookup(address) == ("narrower" if 64 <= host % 256 < 128 else "tunnel")
        assert table.lookup((host).to_bytes(16, "big")) is None
    assert len(table._remembered) <= REMEMBERED_ADDRESSES  # bounded, whatever is looked up


def test_tun_packets_route_by_destination():
    server = make_server()
    assert server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR)], NOW) == []
    assert server.drops["no_endpoint"] == 1
    assert server.tun_packets_received([ipv4_packet(SERVER_ADDR, "203.0.113.99"), b"", b"\x45"], NOW) == []
    assert server.drops["no_route"] == 3
    server.datagrams_received(make_client().start(NOW + 1), NOW + 1)
    [(datagram, endpoint)] = server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR)], NOW + 1)
    assert endpoint == SERVER_EP and len(datagram) == 20 + 24


@pytest.mark.parametrize("allowed", [True, False])
def test_client_to_client(allowed):
    server = make_server(client_to_client=allowed)
    client_b = make_client(2, KEY_B)
    server.datagrams_received([(d, B_EP) for d, _ in client_b.start(NOW + 1)], NOW + 1)
    packet = ipv4_packet(A_ADDR, B_ADDR, b"to b")
    out = server.datagrams_received([(d, A_EP) for d in seal_from_a([packet])], NOW + 5)
    assert out.to_tun == []
    if allowed:
        [(datagram, endpoint)] = out.to_network
        assert endpoint == B_EP
        assert client_b.datagrams_received([(datagram, SERVER_EP)], NOW + 5) == [packet]
    else:
        assert out.to_network == [] and server.drops["client_to_client_denied"] == 1


# --- client core --------------------------------------------------------------------------

def test_client_round_trip_and_source_filter():
    server = make_server()
    client = make_client()
    server.datagrams_received(client.start(NOW + 1), NOW + 1)
    inside = ipv4_packet(SERVER_ADDR, A_ADDR, b"in")
    outside = ipv4_packet("198.51.100.7", A_ADDR, b"not routed to the tunnel")
    out = server.tun_packets_received([inside, outside], NOW + 2)
    assert client.datagrams_received([(d, SERVER_EP) for d, _ in out], NOW + 2) == [inside]
    assert client.drops["inner_source_not_allowed"] == 1


def test_client_keepalive_timer():
    client = make_client(keepalive_interval=25)
    assert client.next_timer() is None
    assert len(client.start(NOW)) == 1
    assert client.next_timer() == NOW + 25
    assert client.handle_timer(NOW + 24.9) == []
    [(keepalive, endpoint)] = client.handle_timer(NOW + 25)
    assert len(keepalive) == 24 and endpoint == SERVER_EP
    client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 40)
    assert client.next_timer() == NOW + 65  # data counts as a sign of life


def test_client_keepalive_off():
    client = make_client(keepalive_interval=0)
    client.start(NOW)
    assert client.next_timer() is None and client.handle_timer(NOW + 1000) == []


def test_status_has_no_secrets():
    server = make_server()
    text = repr(server.status()) + repr(make_client().status()) + repr(server.peers[1].status())
    for secret in (KEY_A, KEY_B):
        assert secret.hex() not in text and repr(secret) not in text
    assert "drops" in server.status() and server.status()["clients"][0]["name"] == "a"


def test_duplicate_client_ids_are_refused():
    with pytest.raises(ValueError, match="client ID 1 is configured twice"):
        ServerCore(SERVER_ID, [ClientEntry(1, KEY_A, ()), ClientEntry(1, KEY_B, ())], NOW)


def test_key_length_is_checked():
    with pytest.raises(ValueError, match="64 bytes"):
        Peer(1, b"short", server_id=1, send_direction=TO_SERVER, now=NOW)



def test_server_fast_path_clears_the_ring_as_it_slides():
    from tests.builders import long_run_with_late_arrivals

    server = make_server()
    peer = sender(counter=0)
    packet = ipv4_packet(A_ADDR, SERVER_ADDR)

    def offer(counter, index):
        peer.counter = (counter - 1) % 2**32
        [datagram] = peer.seal(KIND_DATA, [packet], NOW + 5)
        return len(server.datagrams_received([(datagram, A_EP)], NOW + 5).to_tun)

    assert long_run_with_late_arrivals(offer, 2**32 - 5000) == LATE_ARRIVALS


def test_a_client_that_just_started_hears_the_server_at_once():
    """The server stamps its replies no older than the newest it heard from the client,
    which is at or above the client's replay floor: no second of silence after a start."""
    server = make_server(now=NOW)
    client = make_client(now=NOW + 100.2)
    server.datagrams_received([(d, A_EP) for d, _ in client.start(NOW + 100.3)], NOW + 100.3)
    out = server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR)], NOW + 100.4)
    assert len(client.datagrams_received([(d, SERVER_EP) for d, _ in out], NOW + 100.4)) == 1
    assert client.drops["superseded"] == 0


def test_partial_checksum_packets_keep_their_mark_across_the_tunnel():
    from vpncrypt.core.inner import PartialChecksumPacket
    from vpncrypt.core.wire import KIND_DATA_PARTIAL, decode_header

    server = make_server()
    tcp = ipv4_packet(A_ADDR, SERVER_ADDR, bytes(20) + b"data", proto=6)
    partial = PartialChecksumPacket(tcp)
    [plain_datagram, partial_datagram] = seal_from_a([tcp, partial])
    assert decode_header(partial_datagram).kind == KIND_DATA_PARTIAL
    assert decode_header(plain_datagram).kind == KIND_DATA
    out = server.datagrams_received([(plain_datagram, A_EP), (partial_datagram, A_EP)], NOW + 5).to_tun
    assert [type(p) for p in out] == [bytes, PartialChecksumPacket] and out == [tcp, tcp]


def test_a_partial_mark_on_a_packet_with_no_checksum_to_finish_is_malformed():
    from vpncrypt.core.inner import PartialChecksumPacket

    server = make_server()
    icmp = ipv4_packet(A_ADDR, SERVER_ADDR, b"ping", proto=1)
    [datagram] = seal_from_a([PartialChecksumPacket(icmp)])
    assert server.datagrams_received([(datagram, A_EP)], NOW + 5).to_tun == []
    assert server.drops["inner_malformed"] == 1


def test_cipher_contexts_stay_within_their_budget_and_come_back_when_needed():
    from vpncrypt.core.peer import CipherBudget

    keys = {i: os.urandom(64) for i in range(10)}
    entries = [ClientEntry(i, keys[i], (net(f"2001:db8:5::{i + 2}/128"),)) for i in range(10)]
    server = ServerCore(SERVER_ID, entries, NOW, cipher_budget=CipherBudget(limit=4))
    senders = {i: sender(i, keys[i]) for i in range(10)}
    for rounds in range(3):
        for i in range(10):
            packet = ipv6_packet(f"2001:db8:5::{i + 2}", "2001:db8:5::1", bytes([i]))
            [datagram] = senders[i].seal(KIND_DATA, [packet], NOW + 5 + rounds)
            assert server.datagrams_received([(datagram, A_EP)], NOW + 5 + rounds).to_tun == [packet]
            live = [p for p in server.peers.values() if p.aead is not None]
            assert len(live) <= 4 and server.peers[i].aead is not None
    # Sealing for a client whose context was given up makes it again.
    [(datagram, _)] = server.tun_packets_received([ipv6_packet("2001:db8:5::1", "2001:db8:5::2")], NOW + 9)
    assert open_datagram(AESSIV(keys[0]), datagram, direction=TO_CLIENT, server_id=SERVER_ID, now=NOW + 9)
    assert sum(p.aead is not None for p in server.peers.values()) <= 4


def test_a_server_looked_up_again_moves_only_when_its_address_is_gone():
    client = make_client()
    assert client.server_resolved([]) is None  # nothing known: stay
    assert client.server_resolved([("192.0.2.9", 51820), SERVER_EP]) is None  # still among them: no hop
    assert client.server.endpoint == SERVER_EP
    assert client.server_resolved([("192.0.2.9", 51820), ("192.0.2.8", 51820)]) == ("192.0.2.9", 51820)
    assert client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW)[0][1] == ("192.0.2.9", 51820)
    six = make_client()
    six.server.endpoint = ("2001:db8::1", 51820, 0, 0)
    assert six.server_resolved([("2001:db8::1", 51820, 0, 0)]) is None
    assert six.server_resolved([("2001:db8::1", 51821, 0, 0)]) == ("2001:db8::1", 51821, 0, 0)  # the port counts
