"""Path MTU discovery (core/pmtu.py, docs/PROTOCOL.md section 8): the search alone,
the probes on the wire between the two cores, and the "too big" answers checked
with checksums computed here."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from vpncrypt.core import pmtu
from vpncrypt.core.pmtu import (
    BASE, CONFIRMING, ERROR, MAX_PROBES, PMTU_RAISE_TIMER, PROBE_TIMER, SEARCH_COMPLETE, SEARCH_RESOLUTION, SEARCHING,
    PathSearch,
)
from vpncrypt.core.wire import (
    KIND_KEEPALIVE, KIND_PROBE, KIND_PROBE_ACK, OVERHEAD, TO_CLIENT, associated_data, decode_header,
    probe_payload,
)

from tests.builders import (
    A_ADDR, A_EP, ACK, KEY_A, KEY_B, NOW, SERVER_ADDR, SERVER_EP, SERVER_ID, SYN, epoch_aead, ipv4_packet, ipv6_packet,
    make_client, make_server, ones_sum, sender, tcp_packet,
)

BASE6, MAX = 1232, 1444  # an IPv6 underlay and the default mtu of 1420


def run_search(search: PathSearch, path: int, now: float, until: float) -> list[tuple[float, int]]:
    """Drive ``search`` over a path that carries datagrams up to ``path`` bytes both
    ways, answering each probe at once; returns the (time, size) of each probe."""
    sent = []
    while now < until:
        size = search.probe_due(now)
        if size is not None:
            sent.append((now, size))
            if size <= path:
                search.acknowledged(size, now + 0.01)
        now = max(now + 0.01, min(search.next_timer(), until))
    return sent


# --- the search, alone ---------------------------------------------------------------------

def test_a_clean_path_is_confirmed_at_the_maximum_in_three_round_trips():
    search = PathSearch(BASE6, MAX, NOW)
    assert search.confirmed == BASE6 and search.state == BASE and search.next_timer() == NOW
    assert search.probe_due(NOW) == BASE6
    assert search.probe_due(NOW + 0.5) is None  # waiting for its answer
    search.acknowledged(BASE6, NOW + 0.01)
    assert search.state == SEARCHING and search.next_timer() == NOW + 0.01
    assert search.probe_due(NOW + 0.01) == MAX  # the maximum first
    search.acknowledged(MAX, NOW + 0.02)
    assert search.confirmed == MAX and search.state == CONFIRMING
    assert search.probe_due(NOW + 0.02) == MAX  # telling the server, and checking it
    search.acknowledged(MAX, NOW + 0.03)
    assert search.state == SEARCH_COMPLETE and search.next_timer() == NOW + 0.03 + PMTU_RAISE_TIMER
    assert search.probe_due(NOW + 100) is None


def test_a_size_counts_as_lost_after_max_probes_each_given_the_probe_timer():
    search = PathSearch(BASE6, MAX, NOW)
    search.probe_due(NOW)
    search.acknowledged(BASE6, NOW)
    sent = [search.probe_due(NOW)]
    for attempt in range(1, MAX_PROBES):
        assert search.probe_due(NOW + attempt * PROBE_TIMER - 0.01) is None
        sent.append(search.probe_due(NOW + attempt * PROBE_TIMER))
    assert sent == [MAX] * MAX_PROBES and search.confirmed == BASE6
    # The third loss: the maximum is lost, the middle is next.
    assert search.probe_due(NOW + MAX_PROBES * PROBE_TIMER) == (BASE6 + MAX) // 2
    assert search.lost == MAX and search.state == SEARCHING


@pytest.mark.parametrize("path", [1352, 1232, 1300, 1443, 1250])
def test_the_search_ends_within_the_resolution_below_what_the_path_carries(path):
    search = PathSearch(BASE6, MAX, NOW)
    probes = run_search(search, path, NOW, NOW + 60)
    assert search.state == SEARCH_COMPLETE
    assert path - SEARCH_RESOLUTION <= search.confirmed <= path
    assert all(size <= MAX for _, size in probes)
    # Never more than MAX_PROBES of one size in a row, and done in seconds.
    assert probes[-1][0] - NOW < 20


def test_an_acknowledgement_of_another_size_raises_but_does_not_move_the_search():
    search = PathSearch(BASE6, MAX, NOW)
    search.probe_due(NOW)
    search.acknowledged(1300, NOW)  # late, of an earlier probe
    assert search.confirmed == 1300 and search.state == BASE and search.outstanding
    search.acknowledged(1200, NOW)  # smaller than what is confirmed: nothing
    assert search.confirmed == 1300


def test_a_black_hole_found_by_the_confirmation_falls_back_to_the_base():
    search = PathSearch(BASE6, MAX, NOW)
    run_search(search, MAX, NOW, NOW + 10)
    assert search.state == SEARCH_COMPLETE and search.confirmed == MAX
    raised = search.next_timer()
    # The path shrank (a new route, a tunnel on the way) and says nothing.
    assert search.probe_due(raised) == MAX and search.state == CONFIRMING
    for attempt in range(1, MAX_PROBES):
        assert search.probe_due(raised + attempt * PROBE_TIMER) == MAX
    assert search.probe_due(raised + MAX_PROBES * PROBE_TIMER) == BASE6
    assert search.state == BASE and search.confirmed == BASE6
    run_search(search, 1352, raised + MAX_PROBES * PROBE_TIMER, raised + 60)
    assert search.state == SEARCH_COMPLETE and 1352 - SEARCH_RESOLUTION <= search.confirmed <= 1352


def test_after_the_raise_timer_a_larger_path_is_found():
    search = PathSearch(BASE6, MAX, NOW)
    run_search(search, 1300, NOW, NOW + 60)
    assert search.confirmed <= 1300
    # Before the raise timer, nothing is sent even though the path grew.
    assert run_search(search, MAX, NOW + 60, NOW + PMTU_RAISE_TIMER - 60) == []
    probes = run_search(search, MAX, NOW + PMTU_RAISE_TIMER - 60, NOW + PMTU_RAISE_TIMER + 60)
    assert search.confirmed == MAX and search.state == SEARCH_COMPLETE
    assert probes[0][1] <= 1300 and probes[1][1] == MAX  # confirm what it had, then the maximum


def test_with_nothing_getting_through_error_probes_the_base_every_probe_timer():
    """RFC 8899 section 5.2: ERROR is left when probes no longer detect the
    error. It used to wait PMTU_RAISE_TIMER (600 s) for the server to be heard."""
    search = PathSearch(BASE6, MAX, NOW)
    assert run_search(search, 0, NOW, NOW + 30) == [(NOW + i * PROBE_TIMER, BASE6) for i in range(30)]
    assert search.state == ERROR and search.confirmed == BASE6 and search.outstanding


def test_error_searches_on_from_the_first_base_probe_acknowledged():
    search = PathSearch(BASE6, MAX, NOW)
    run_search(search, 0, NOW, NOW + 10)
    assert search.state == ERROR
    # The path comes back: the next base probe is answered, and the search goes on.
    assert search.probe_due(NOW + 10) == BASE6
    search.acknowledged(BASE6, NOW + 10.01)
    assert search.state == SEARCHING and search.probe_due(NOW + 10.01) == MAX
    run_search(search, 1352, NOW + 10.01, NOW + 60)
    assert search.state == SEARCH_COMPLETE and 1352 - SEARCH_RESOLUTION <= search.confirmed <= 1352


def test_error_starts_over_at_once_when_the_server_is_heard():
    search = PathSearch(BASE6, MAX, NOW)
    run_search(search, 0, NOW, NOW + 10.5)
    assert search.state == ERROR and search.next_timer() == NOW + 11
    search.heard(NOW + 10.5)
    assert search.state == BASE and search.next_timer() == NOW + 10.5 and not search.outstanding
    assert search.probe_due(NOW + 10.5) == BASE6
    search.heard(NOW + 10.6)  # outside ERROR: nothing changes
    assert search.outstanding and search.state == BASE and search.next_timer() == NOW + 11.5


def test_a_maximum_below_the_base_is_both():
    search = PathSearch(BASE6, 1100, NOW)
    assert search.probe_due(NOW) == 1100
    search.acknowledged(1100, NOW)
    assert search.probe_due(NOW) == 1100 and search.state == CONFIRMING


def test_a_clock_step_moves_the_probe_timer():
    search = PathSearch(BASE6, MAX, NOW)
    search.probe_due(NOW)
    search.stepped(-100)
    assert search.next_timer() == NOW + PROBE_TIMER - 100


def test_base_and_maximum_sizes_per_underlay():
    assert pmtu.base_size(4) == 1252 and pmtu.base_size(6) == 1232
    assert pmtu.max_size(6, 1420) == 1444 and pmtu.max_size(4, 65535) == 65507 and pmtu.max_size(6, 65535) == 65527


# --- probes between the two cores ----------------------------------------------------------

def probes_in(datagrams):
    return [(d, e) for d, e in datagrams if d[0] >> 2 == KIND_PROBE]


def test_probe_and_acknowledgement_between_the_cores():
    server, client = make_server(), make_client(mtu=1420)
    out = client.handle_timer(NOW + 1)
    [(probe, to)] = probes_in(out)
    assert to == SERVER_EP and len(probe) == BASE6
    delivery = server.datagrams_received([(d, A_EP) for d, _ in out], NOW + 1)
    assert delivery.to_tun == []  # the padding goes nowhere
    [(ack, to)] = delivery.to_network
    assert to == A_EP and len(ack) == BASE6 and decode_header(ack).kind == KIND_PROBE_ACK
    assert server.path_mtu[server.peers[1]] == BASE6 - OVERHEAD
    assert server.peers[1].endpoint == A_EP  # moved as by any datagram
    assert server.peers[1].rx_packets == 0  # nothing delivered
    assert client.datagrams_received([(ack, SERVER_EP)], NOW + 1.01) == ([], [])
    assert client.path.state == SEARCHING and client.path.confirmed == BASE6
    # The next probe is the maximum, telling the server what is confirmed so far.
    [(probe, _)] = client.handle_timer(NOW + 1.01)
    assert len(probe) == 1444
    [(ack, _)] = server.datagrams_received([(probe, A_EP)], NOW + 1.02).to_network
    assert len(ack) == 1444
    client.datagrams_received([(ack, SERVER_EP)], NOW + 1.03)
    [(probe, _)] = client.handle_timer(NOW + 1.03)  # the confirmation
    server.datagrams_received([(probe, A_EP)], NOW + 1.04)
    assert server.path_mtu[server.peers[1]] == 1420
    assert server.status()["clients"][0]["path_mtu"] == 1420 and client.status()["path_mtu"] == 1420


def test_a_replayed_or_forged_probe_is_dropped_counted_and_not_acknowledged():
    server, client = make_server(), make_client(mtu=1420)
    [(probe, _)] = probes_in(client.handle_timer(NOW + 1))
    assert len(server.datagrams_received([(probe, A_EP)], NOW + 1).to_network) == 1
    assert server.datagrams_received([(probe, ("198.51.100.66", 9))], NOW + 1).to_network == []
    assert server.drops["replayed"] == 1 and server.peers[1].endpoint == A_EP
    forged = probe[:7] + bytes([probe[7] ^ 0x40]) + probe[8:]  # another counter: not replayed, not authentic
    assert server.datagrams_received([(forged, A_EP)], NOW + 1).to_network == []
    assert server.drops["auth_failed"] == 1
    # An acknowledgement sent back to the server, and a probe sent to a client: not their kinds.
    ack = server.datagrams_received([(probes_in(client.handle_timer(NOW + 2))[0][0], A_EP)], NOW + 2).to_network[0][0]
    assert server.datagrams_received([(ack, A_EP)], NOW + 2).to_network == []
    assert server.drops["unknown_kind"] == 1
    client.datagrams_received([(probe, SERVER_EP)], NOW + 2)
    assert client.drops["unknown_kind"] == 1


@pytest.mark.parametrize("fields, size", [((1300, 1232), 1299), ((1300, 1232), 1301), ((28, 0), 29)])
def test_an_authentic_probe_whose_size_is_not_its_length_is_bad_probe(fields, size):
    server = make_server()
    payload = struct.pack("!HH", *fields) + bytes(size - OVERHEAD - 4)
    [probe] = sender().seal(KIND_PROBE, [payload], NOW + 1)
    assert server.datagrams_received([(probe, A_EP)], NOW + 1) == ([], [])
    assert server.drops["bad_probe"] == 1 and server.peers[1] not in server.path_mtu


def test_a_probe_too_short_for_its_fields_is_refused_before_the_cipher():
    server = make_server()
    [probe] = sender().seal(KIND_PROBE, [b"\0\x1b\0"], NOW + 1)  # 27 bytes
    server.datagrams_received([(probe, A_EP)], NOW + 1)
    assert server.drops["bad_length"] == 1 and server.drops["auth_failed"] == 0


def test_a_reported_size_is_kept_within_the_base_and_the_configured_mtu():
    server = make_server(mtu=1420)
    for confirmed, kept in ((100, 1208), (1444, 1420), (1300, 1276)):
        [probe] = sender(counter=confirmed).seal(KIND_PROBE, [probe_payload(1444, confirmed)], NOW + 1)
        server.datagrams_received([(probe, A_EP)], NOW + 1)
        assert server.path_mtu[server.peers[1]] == kept


def test_the_probe_ack_is_sealed_for_the_client_like_data():
    server = make_server()
    [probe] = sender().seal(KIND_PROBE, [probe_payload(1300, 1232)], NOW + 1)
    [(ack, _)] = server.datagrams_received([(probe, A_EP)], NOW + 1).to_network
    assert decode_header(ack).kind == KIND_PROBE_ACK and decode_header(ack).client_id == 1
    opened = epoch_aead(KEY_A, NOW + 1).decrypt(
        ack[8:], [associated_data(ack[:8], TO_CLIENT, server.server_id, int(NOW + 1))])
    assert opened == (1300).to_bytes(2, "big") + bytes(1300 - OVERHEAD - 2)


# --- the effective MTU, and "too big" answers ------------------------------------------------

def ipv4_df(src, dst, size, flags=0x4000):
    packet = bytearray(ipv4_packet(src, dst, bytes(size - 28)))
    packet[6:8] = flags.to_bytes(2, "big")
    return bytes(packet)


def check_ipv4_too_big(answer: bytes, packet: bytes, mtu: int) -> None:
    """Parsed and summed here, apart from the builder: RFC 792 / RFC 1191."""
    assert answer[0] == 0x45 and answer[9] == 1 and int.from_bytes(answer[2:4], "big") == len(answer) <= 576
    assert ones_sum(answer[:20]) == 0xFFFF  # the header checksum holds
    assert answer[12:16] == packet[16:20] and answer[16:20] == packet[12:16]
    icmp = answer[20:]
    assert icmp[0] == 3 and icmp[1] == 4 and int.from_bytes(icmp[6:8], "big") == mtu
    assert ones_sum(icmp) == 0xFFFF
    assert icmp[8:] == packet[:len(icmp) - 8]


def check_ipv6_too_big(answer: bytes, packet: bytes, mtu: int) -> None:
    """RFC 4443 section 3.2, its checksum over the RFC 8200 pseudo-header."""
    assert answer[0] >> 4 == 6 and answer[6] == 58 and len(answer) <= 1280
    assert int.from_bytes(answer[4:6], "big") == len(answer) - 40
    assert answer[8:24] == packet[24:40] and answer[24:40] == packet[8:24]
    icmp = answer[40:]
    pseudo = answer[8:40] + struct.pack("!I3xB", len(icmp), 58)
    assert icmp[0] == 2 and icmp[1] == 0 and int.from_bytes(icmp[4:8], "big") == mtu
    assert ones_sum(pseudo + icmp) == 0xFFFF
    assert icmp[8:] == packet[:len(icmp) - 8]


def test_the_client_answers_packets_too_big_for_the_path_and_sends_the_rest():
    client = make_client(mtu=1420)  # nothing confirmed yet: the base, 1232 - 24
    big4 = ipv4_df(A_ADDR, SERVER_ADDR, 1400)
    fragmentable = ipv4_df(A_ADDR, SERVER_ADDR, 1400, flags=0)
    big6 = ipv6_packet("2001:db8::2", "2001:db8::1", bytes(1400 - 48))
    small6 = ipv6_packet("2001:db8::2", "2001:db8::1", bytes(1280 - 48))  # every IPv6 path carries 1280
    fits = ipv4_df(A_ADDR, SERVER_ADDR, 1208)
    to_tun, to_network = client.tun_packets_received([big4, fragmentable, big6, small6, fits], NOW)
    assert len(to_network) == 3 and client.drops["packet_too_big"] == 2
    check_ipv4_too_big(to_tun[0], big4, 1208)
    check_ipv6_too_big(to_tun[1], big6, 1208)


def test_too_big_answers_are_rate_limited():
    client = make_client(mtu=1420)
    big = ipv4_df(A_ADDR, SERVER_ADDR, 1400)
    to_tun, _ = client.tun_packets_received([big] * 20, NOW)
    assert len(to_tun) == pmtu.BURST and client.drops["packet_too_big"] == 20
    assert len(client.tun_packets_received([big] * 5, NOW + 2).to_tun) == 2  # RATE a second


def test_the_server_keeps_to_what_each_client_reported():
    server = make_server(mtu=1420)
    client = make_client(mtu=1420)
    server.datagrams_received([(d, A_EP) for d, _ in client.handle_timer(NOW + 1)], NOW + 1)  # reports 1232
    big = ipv4_df(SERVER_ADDR, A_ADDR, 1400)
    to_tun, to_network = server.tun_packets_received([big, ipv4_df(SERVER_ADDR, A_ADDR, 1208)], NOW + 1)
    assert len(to_network) == 1 and server.drops["packet_too_big"] == 1
    check_ipv4_too_big(to_tun[0], big, 1208)
    # A client that has not reported gets the configured MTU: nothing answered.
    server.datagrams_received([(d, ("192.0.2.11", 1))
                               for d in sender(client_id=2, key=KEY_B).seal(KIND_KEEPALIVE, [b""], NOW + 1)], NOW + 1)
    assert len(server.tun_packets_received([ipv4_df(SERVER_ADDR, "203.0.113.3", 1420)], NOW + 1).to_network) == 1


def test_what_the_server_sends_a_client_beyond_its_confirmed_size():
    """docs/PROTOCOL.md 8: with 1232 bytes confirmed, an IPv4 packet without DF
    and an IPv6 packet of 1280 bytes go whole, in datagrams above it, and an
    acknowledgement is as large as its probe; none above the MTU plus 24."""
    server = make_server(mtu=1420)
    [probe] = sender().seal(KIND_PROBE, [probe_payload(1444, 1232)], NOW + 1)
    [(ack, _)] = server.datagrams_received([(probe, A_EP)], NOW + 1).to_network
    assert len(ack) == 1444 and server.path_mtu[server.peers[1]] == 1232 - OVERHEAD
    whole = [ipv4_packet(SERVER_ADDR, A_ADDR, bytes(1420 - 20)),  # no DF
             ipv6_packet("2001:db8::1", "2001:db8::2", bytes(1280 - 40))]
    too_big = [ipv4_df(SERVER_ADDR, A_ADDR, 1300), ipv6_packet("2001:db8::1", "2001:db8::2", bytes(1281 - 40))]
    to_tun, to_network = server.tun_packets_received(whole + too_big, NOW + 1)
    assert [len(datagram) for datagram, _ in to_network] == [1420 + OVERHEAD, 1280 + OVERHEAD]
    assert len(to_tun) == 2 and server.drops["packet_too_big"] == 2  # answered instead


def test_tcp_mss_follows_the_effective_mtu():
    """A SYN's MSS option (at byte 40, right after the IPv4 and TCP headers) is
    clamped to the effective MTU less 40, by the client and by the server."""
    syn = tcp_packet(0, b"", flags=SYN, options=bytes([2, 4]) + (1380).to_bytes(2, "big"))
    client = make_client(mtu=1420)  # confirmed: the base so far, 1232 over IPv6, 1252 over IPv4
    client_four = make_client(mtu=1420, underlay_version=4)
    for core, mss in ((client, 1208 - 40), (client_four, 1228 - 40)):
        [(datagram, _)] = core.tun_packets_received([syn], NOW).to_network
        [opened] = make_server().datagrams_received([(datagram, A_EP)], NOW + 1).to_tun
        assert opened[40:42] == bytes([2, 4]) and int.from_bytes(opened[42:44], "big") == mss
    server = make_server(mtu=1420)
    [probe] = sender().seal(KIND_PROBE, [probe_payload(1300, 1300)], NOW + 1)
    server.datagrams_received([(probe, A_EP)], NOW + 1)
    back = tcp_packet(0, b"", flags=SYN | ACK, options=bytes([2, 4]) + (1380).to_bytes(2, "big"), to=A_ADDR)
    [(datagram, _)] = server.tun_packets_received([back], NOW + 1).to_network
    opened = epoch_aead(KEY_A, NOW + 1).decrypt(datagram[8:], [associated_data(datagram[:8], TO_CLIENT, SERVER_ID,
                                                                               int(NOW + 1))])
    assert int.from_bytes(opened[42:44], "big") == 1300 - 24 - 40


def test_too_big_is_never_sent_about_an_icmp_error_or_a_fragment():
    error = bytearray(ipv4_df(A_ADDR, SERVER_ADDR, 1400))
    error[9] = 1
    error[20] = 3  # destination unreachable
    assert pmtu.too_big(bytes(error), 1208) is None
    fragment = ipv4_df(A_ADDR, SERVER_ADDR, 1400, flags=0x4000 | 10)
    assert pmtu.too_big(fragment, 1208) is None
    multicast = ipv6_packet("2001:db8::2", "ff02::1", bytes(1400))
    assert pmtu.too_big(multicast, 1208) is None
    echo = bytearray(error)
    echo[20] = 8
    assert pmtu.too_big(bytes(echo), 1208) is not None
    assert ipaddress.ip_address(pmtu.too_big(bytes(echo), 1208)[12:16]) == ipaddress.ip_address(SERVER_ADDR)


def test_a_replayed_or_forged_acknowledgement_confirms_nothing():
    server, client = make_server(), make_client(mtu=1420)
    [(probe, _)] = probes_in(client.handle_timer(NOW + 1))
    [(ack, _)] = server.datagrams_received([(probe, A_EP)], NOW + 1).to_network
    forged = ack[:7] + bytes([ack[7] ^ 0x40]) + ack[8:]
    assert client.datagrams_received([(forged, SERVER_EP)], NOW + 1) == ([], [])
    assert client.drops["auth_failed"] == 1 and client.path.state == BASE and client.path.outstanding
    client.datagrams_received([(ack, SERVER_EP)], NOW + 1)
    assert client.path.state == SEARCHING
    [(probe, _)] = client.handle_timer(NOW + 1)  # the maximum, in flight
    client.datagrams_received([(ack, SERVER_EP)], NOW + 1.5)  # the base's acknowledgement again
    assert client.drops["replayed"] == 1 and client.path.confirmed == BASE6 and client.path.outstanding


def test_a_restarted_client_whose_base_probes_were_refused_leaves_error_by_itself():
    """Flaky test_paths at 1280 bytes: a client restarted within the second of
    its previous start refuses the server's datagrams until they pass its
    restart bound (docs/PROTOCOL.md section 6.1); its three base probes'
    acknowledgements fell there, and it waited in ERROR for traffic to make
    the server heard. Now its timer alone finds the path: no packet from TUN."""
    bound = int(NOW) + 3  # the previous instance accepted the server's datagrams up to NOW + 2
    server, client = make_server(), make_client(mtu=1420, restart_bounds={1: bound})
    states, sent, now = [], [], NOW
    for _ in range(100):  # bounded: a search that never ends fails below
        for probe, _ in probes_in(client.handle_timer(now)):
            sent.append((now, len(probe)))
            for ack, _ in server.datagrams_received([(probe, A_EP)], now).to_network:
                client.datagrams_received([(ack, SERVER_EP)], now)
        table = client.bounds_to_save()
        if table is not None:  # written, as the daemon does at once for a held datagram
            client.bounds_saved(table, now)
        states.append(client.path.state)
        if client.path.state == SEARCH_COMPLETE:
            break
        now = max(now + 0.01, client.next_timer())
    assert ERROR in states and client.drops["superseded"] == 4  # NOW + 0, 1, 2 (then ERROR) and 3
    assert client.path.state == SEARCH_COMPLETE and client.path.confirmed == MAX
    # A base probe a second until one is answered past the bound, which moves the
    # search on at once (not heard first, which would start it over).
    assert [size for _, size in sent] == [BASE6] * 5 + [MAX, MAX]
    assert [at for at, _ in sent] == pytest.approx([NOW + i for i in range(5)] + [NOW + 4.01, NOW + 4.02])


def test_suspicion_confirms_at_once_only_when_the_search_is_complete():
    search = PathSearch(BASE6, MAX, NOW)
    search.suspect(NOW)  # searching anyway: nothing changes
    assert search.state == BASE and search.probe_due(NOW) == BASE6
    run_search(search, MAX, NOW, NOW + 10)
    assert search.state == SEARCH_COMPLETE
    search.suspect(NOW + 20)
    assert search.state == CONFIRMING and search.probe_due(NOW + 20) == MAX


def complete_client(path: int = 1444):
    """A client whose search ended at ``path`` bytes, with its server."""
    server, client = make_server(), make_client(mtu=1420)
    now = NOW + 1
    for _ in range(100):  # bounded: a search that never ends fails here
        for probe, _ in probes_in(client.handle_timer(now)):
            if len(probe) <= path:
                for ack, _ in server.datagrams_received([(probe, A_EP)], now).to_network:
                    client.datagrams_received([(ack, SERVER_EP)], now)
        if client.path.state == SEARCH_COMPLETE:
            return server, client, now
        now = max(now + 0.01, client.path.next_timer())
    raise AssertionError(f"the search did not end: {client.path.state}")


def test_data_unanswered_for_the_silence_finds_a_path_that_shrank():
    server, client, now = complete_client()
    assert client.path.confirmed == MAX
    # The path shrinks; the client sends data, and hears nothing back.
    client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], now)
    assert client.next_timer() == now + pmtu.BLACK_HOLE_SILENCE
    assert probes_in(client.handle_timer(now + pmtu.BLACK_HOLE_SILENCE - 0.01)) == []
    [(probe, _)] = probes_in(client.handle_timer(now + pmtu.BLACK_HOLE_SILENCE))
    assert len(probe) == MAX and client.path.state == CONFIRMING
    later = now + pmtu.BLACK_HOLE_SILENCE
    for attempt in range(1, MAX_PROBES):
        assert [len(p) for p, _ in probes_in(client.handle_timer(later + attempt))] == [MAX]
    [(probe, _)] = probes_in(client.handle_timer(later + MAX_PROBES))  # lost 3 times: back to the base
    assert len(probe) == BASE6 and client.path.confirmed == BASE6
    server.datagrams_received([(probe, A_EP)], later + MAX_PROBES)
    assert server.path_mtu[server.peers[1]] == BASE6 - OVERHEAD  # told at once


def test_data_that_is_answered_raises_no_suspicion():
    server, client, now = complete_client()
    [(datagram, _)] = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], now).to_network
    [(reply, _)] = server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR)], now).to_network
    client.datagrams_received([(reply, SERVER_EP)], now + 0.1)
    assert client.next_timer() > now + pmtu.BLACK_HOLE_SILENCE
    assert probes_in(client.handle_timer(now + pmtu.BLACK_HOLE_SILENCE)) == []
    assert client.path.state == SEARCH_COMPLETE
