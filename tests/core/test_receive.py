"""Opening datagrams (vpncrypt.core.receive), through the server's receive path: every
corruption rejected with its reason and no state change, replays, roaming, and the
checks on the inner packet."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpncrypt.core.wire import KIND_DATA, KIND_KEEPALIVE, TO_CLIENT, TO_SERVER

from tests.builders import (
    A_ADDR, A_EP, A_EP2, B_ADDR, KEY_A, LATE_ARRIVALS, NOW, SERVER_ADDR, SERVER_ID, Model, deliveries, ipv4_packet,
    keepalives, make_client, make_server, seal_from_a, sender,
)


def window_state(peer):
    w = peer.window
    return (w.floor, w.newest_ts, w.newest_counter, bytes(w.ring or b""))


def snapshot(server):
    return {cid: (window_state(p), p.endpoint, p.rx_packets) for cid, p in server.peers.items()}


# --- every corruption is rejected and changes nothing ---------------------------------

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
    per_client = {"auth_failed": "auth_failures", "outside_time_window": "time_drops"}.get(reason)
    if per_client:  # the client named in the header is charged with it
        assert server.peers[1].status()[per_client] == 1 and server.peers[2].status()[per_client] == 0


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


@pytest.mark.usefixtures("each_cipher")  # a replay is the compiled path's; with cryptography's, the Python loop's
@pytest.mark.parametrize("counter, reason", [(5000, "superseded"), (10, "counter_too_old")])
def test_a_client_stamping_behind_what_was_accepted_is_charged_with_it(counter, reason):
    """A client restarted with its clock behind its last run's stamps: its
    datagrams are refused as superseded or counter_too_old (its new random
    counter ahead of the newest or far behind it), and those authenticated for
    a time answer (one every 2 s at most) are counted by name (stale_drops),
    so that the server's log can say why it is not heard. Anyone can name the
    client in clear: stale forgeries count as nothing by name, and one
    authenticated that fails is charged as a forgery."""
    server = make_server()
    first = sender(now=NOW, counter=3000)
    sealed = [(d, A_EP) for d in first.seal(KIND_DATA, [ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 30)]
    server.datagrams_received(sealed, NOW + 30)
    server.datagrams_received(sealed, NOW + 31)  # replayed: not stale
    restarted = sender(now=NOW + 9, counter=counter)  # its clock put right: 20 s behind its last stamps
    for second in range(10, 13):  # authenticated at 10.5 and 12.5, not at 11.5: 2 s apart
        [datagram] = restarted.seal(KIND_KEEPALIVE, [b""], NOW + second)
        assert server.datagrams_received([(datagram, A_EP)], NOW + second + 0.5).to_tun == []
    forger = sender(key=os.urandom(64), now=NOW + 13, counter=counter)
    forged = [(forger.seal(KIND_KEEPALIVE, [b""], NOW + 13)[0], A_EP) for _ in range(20)]
    server.datagrams_received(forged, NOW + 13.5)  # between two time answers: not one authenticated
    [forged] = forger.seal(KIND_KEEPALIVE, [b""], NOW + 14)
    server.datagrams_received([(forged, A_EP)], NOW + 14.5)  # answered with the time if authentic: it is not
    assert server.drops[reason] == 23 and server.drops["auth_failed"] == 1 and server.drops["replayed"] == 1
    assert server.peers[1].status()["stale_drops"] == 2 and server.peers[2].status()["stale_drops"] == 0
    assert server.peers[1].auth_failures == 1


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


# --- roaming --------------------------------------------------------------------------

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
    out = server.datagrams_received([(d, A_EP) for d, _ in keepalives(client.handle_timer(NOW + 1))], NOW + 1)
    assert out == ([], []) and server.peers[1].endpoint == A_EP


def test_a_forged_datagram_from_another_address_never_moves_a_client():
    server = make_server()
    [datagram] = seal_from_a([ipv4_packet(A_ADDR, SERVER_ADDR)])
    server.datagrams_received([(datagram, A_EP)], NOW + 5)
    forged = sender(key=os.urandom(64)).seal(KIND_DATA, [ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 6)[0]
    server.datagrams_received([(forged, A_EP2)], NOW + 6)
    assert server.peers[1].endpoint == A_EP


# --- the inner packet -----------------------------------------------------------------

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


def test_partial_checksum_packets_keep_their_mark_across_the_tunnel():
    from vpncrypt.core.inner import PartialChecksumPacket
    from vpncrypt.core.wire import KIND_DATA_PARTIAL, decode_header

    server = make_server()
    tcp = ipv4_packet(A_ADDR, SERVER_ADDR, bytes(12) + b"\x50" + bytes(7) + b"data", proto=6)
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
