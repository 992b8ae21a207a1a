"""Merging TCP segments and UDP datagrams for TUN writes and splitting super-packets on
TUN reads: what merges, what must not, and that the kernel's checksum completion
(NEEDS_CSUM) gives the right TCP and UDP checksums."""

from __future__ import annotations

import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from vpncrypt.core.inner import PartialChecksumPacket, complete_checksum
from vpncrypt.tun.offload import (
    F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, MAX_SEGMENTS, PLAIN, VNET_HEADER, coalesce, ipv4_header_checksum,
    split, split_datagrams,
)

from tests.builders import (
    ACK, CWR, DATAGRAM, FIN, MSS, PSH, SYN, datagrams, flow, fold, kernel_view, make_partial, ones_sum, tcp_checksum,
    tcp_packet, transport_checksum, udp_packet,
)


def assert_valid(packet: bytes) -> None:
    v4 = packet[0] >> 4 == 4
    ip_len = 20 if v4 else 40
    assert int.from_bytes(packet[ip_len + 16:ip_len + 18], "big") == tcp_checksum(packet)
    if v4:
        assert ones_sum(packet[:20]) == 0xFFFF  # IPv4 header checksum
        assert int.from_bytes(packet[2:4], "big") == len(packet)
    else:
        assert int.from_bytes(packet[4:6], "big") + 40 == len(packet)


def test_a_run_with_a_short_last_segment_becomes_one_gso_packet():
    packets = flow(5, last=100)
    packets[-1] = tcp_packet(1000 + 5 * MSS, bytes([5]) * 100, flags=ACK | PSH, ip_id=6)
    [plan] = coalesce(packets)
    (flags, gso_type, hdr_len, gso_size, start, offset), merged = kernel_view(plan)
    assert (flags, gso_type, hdr_len, gso_size, start, offset) == (F_NEEDS_CSUM, GSO_TCPV4, 40, MSS, 20, 16)
    assert_valid(merged)
    assert merged[40:] == b"".join(p[40:] for p in packets)
    assert int.from_bytes(merged[24:28], "big") == 1000  # the first sequence number
    assert merged[33] == ACK | PSH  # PSH carried from the last segment


def test_ipv6_run():
    packets = flow(4, v6=True)
    [plan] = coalesce(packets)
    (_, gso_type, hdr_len, gso_size, start, _), merged = kernel_view(plan)
    assert (gso_type, hdr_len, gso_size, start) == (GSO_TCPV6, 60, MSS, 40)
    assert_valid(merged)
    assert merged[60:] == b"".join(p[60:] for p in packets)


def test_options_stay_and_must_match():
    stamps = [b"\x01\x01\x08\x0a" + struct.pack("!II", 5, 9)] * 3 + [b"\x01\x01\x08\x0a" + struct.pack("!II", 6, 9)]
    packets = []
    seq = 10
    for index, option in enumerate(stamps):
        packets.append(tcp_packet(seq, b"p" * MSS, options=option, ip_id=index))
        seq += MSS
    plans = coalesce(packets)
    assert len(plans) == 2 and len(plans[0]) == 2 + 3  # three merged, the fourth (new timestamp) alone
    header, merged = kernel_view(plans[0])
    assert header[2] == 20 + 32 and merged[40:52] == stamps[0]
    assert_valid(merged)


def test_sequence_wraps():
    packets = flow(3, start=2**32 - MSS)
    [plan] = coalesce(packets)
    assert_valid(kernel_view(plan)[1])


def test_what_must_not_merge_is_written_as_it_is():
    base = flow(2)
    gap = flow(1, start=1000 + 3 * MSS)  # a lost segment in between
    other_flow = flow(1, start=1000 + 2 * MSS, src_port=6000)
    fin = [tcp_packet(1000 + 2 * MSS, b"f" * MSS, flags=ACK | FIN)]
    syn = [tcp_packet(5, b"", flags=SYN)]
    pure_ack = [tcp_packet(1000 + 2 * MSS, b"")]
    udp = [bytes.fromhex("4500001c00000000401100000a0000010a000002") + bytes(8)]
    cases = {
        "gap": base + gap, "other flow": base + other_flow, "fin": base + fin,
        "pure ack": base + pure_ack, "syn": syn + base, "udp": udp + base,
        "reordered": list(reversed(base)),
        "bigger after smaller": flow(1, size=100) + flow(1, start=1100),
    }
    for name, packets in cases.items():
        plans = coalesce(packets)
        written = [b"".join(bytes(p) for p in plan[1:]) for plan in plans]
        if name in ("gap", "other flow", "fin", "pure ack"):
            # the first two still merge; what follows stands alone, unchanged
            assert len(plans) == 2 and plans[1] == [PLAIN, packets[2]], name
        elif name in ("syn", "udp"):
            # what comes first stands alone; the two segments after it merge
            assert len(plans) == 2 and plans[0] == [PLAIN, packets[0]] and len(plans[1]) == 2 + 2, name
        else:
            assert all(plan[0] == PLAIN for plan in plans) and written == packets, name


def altered(packet: bytes, offset: int, value: bytes) -> bytes:
    changed = bytearray(packet)
    changed[offset:offset + len(value)] = value
    if changed[0] >> 4 == 4:
        changed[10:12] = ipv4_header_checksum(bytes(changed[:20])).to_bytes(2, "big")
    return bytes(changed)


def test_every_field_a_run_shares_must_match():
    """A segment next in sequence but different in any field the merged header
    would carry for it stands alone."""
    fields = {
        4: {"TOS": (1, b"\x10"), "DF": (6, b"\x00"), "TTL": (8, b"\x20"), "ack": (28, b"\x00\x00\x00\x01"),
            "window": (34, b"\x00\x01")},
        6: {"traffic class": (0, b"\x61"), "flow label": (2, b"\x00\x05"), "hop limit": (7, b"\x20"),
            "ack": (48, b"\x00\x00\x00\x01"), "window": (54, b"\x00\x01")},
    }
    for version, changes in fields.items():
        for name, (offset, value) in changes.items():
            packets = flow(3, v6=version == 6)
            packets[2] = altered(packets[2], offset, value)
            plans = coalesce(packets)
            assert len(plans) == 2 and plans[1] == [PLAIN, packets[2]], (version, name)


def test_a_short_segment_ends_a_run():
    packets = flow(2, last=100) + flow(1, start=1000 + 2 * MSS + 100)
    plans = coalesce(packets)
    assert len(plans) == 2 and len(plans[0]) == 2 + 3 and plans[1] == [PLAIN, packets[3]]


def test_psh_closes_a_run():
    packets = flow(3)
    packets[1] = tcp_packet(1000 + MSS, bytes([1]) * MSS, flags=ACK | PSH, ip_id=2)
    plans = coalesce(packets)
    assert len(plans) == 2 and len(plans[0]) == 2 + 2 and plans[1] == [PLAIN, packets[2]]


def test_merged_packets_stay_under_64_kib():
    packets = flow(60)
    plans = coalesce(packets)
    assert len(plans) == 2
    for plan in plans:
        assert len(kernel_view(plan)[1]) <= 65535
    assert b"".join(kernel_view(p)[1][40:] for p in plans) == b"".join(p[40:] for p in packets)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5)), max_size=40), st.booleans())
def test_any_batch_writes_every_byte_once_in_order(steps, v6):
    """Interleaved flows, sizes and holes: the payload of each flow comes out whole, in order,
    and every packet the kernel gets has valid checksums."""
    seqs = {port: 1000 for port in range(4)}
    packets = []
    for port, kind in steps:
        size = (MSS, MSS, MSS, 200, 0, MSS)[kind]
        if kind == 5:
            seqs[port] += MSS  # a hole: a segment lost
        packets.append(tcp_packet(seqs[port], bytes([port]) * size, src_port=5000 + port, v6=v6))
        seqs[port] += size
    written = [kernel_view(plan)[1] for plan in coalesce(packets)]
    ip_len = 40 if v6 else 20
    for packet in written:
        assert_valid(packet)
    def payloads(stream):
        return {port: b"".join(p[ip_len + 20:] for p in stream if int.from_bytes(p[ip_len:ip_len + 2], "big") == 5000 + port)
                for port in range(4)}
    assert payloads(written) == payloads(packets)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.booleans())
def test_complete_checksum_matches_a_checksum_from_scratch(payload, v6):
    packet = tcp_packet(77, payload, v6=v6)
    assert complete_checksum(make_partial(packet)) == packet


def test_complete_checksum_udp_and_others():
    udp = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 5, 0, 0, 64, 17, 0,
                                bytes([203, 0, 113, 2]), bytes([203, 0, 113, 1])) + struct.pack("!HHHH", 1, 2, 13, 0) + b"hello")
    partial = make_partial(bytes(udp))
    done = complete_checksum(partial)
    words = ones_sum(bytes([203, 0, 113, 2, 203, 0, 113, 1]) + struct.pack("!HH", 17, 13)) + ones_sum(done[20:])
    assert fold(words) == 0xFFFF and done[26:28] != b"\0\0"
    icmp = bytes.fromhex("45000054000040004001") + bytes(10)
    assert complete_checksum(PartialChecksumPacket(icmp)) == icmp  # nothing to finish


def test_a_lone_partial_packet_is_left_to_the_kernel():
    packet = tcp_packet(5, b"x" * 333)
    [plan] = coalesce([make_partial(packet)])
    header, written = kernel_view(plan)
    assert header[0] == F_NEEDS_CSUM and header[1] == 0 and (header[4], header[5]) == (20, 16)
    assert written == packet


def test_partial_segments_merge_like_full_ones():
    packets = flow(4)
    [plan] = coalesce([make_partial(p) for p in packets])
    assert_valid(kernel_view(plan)[1])


def super_packet(packets: list[bytes]) -> tuple[bytes, int, int]:
    """What the kernel hands over with TSO: the merged packet, its GSO type and MSS."""
    [plan] = coalesce(packets)
    header = VNET_HEADER.unpack(bytes(plan[0]))
    return b"".join(bytes(part) for part in plan[1:]), header[1], header[3]


def test_split_undoes_coalesce_v4_and_v6():
    for v6 in (False, True):
        packets = flow(7, last=500, v6=v6)
        merged, gso_type, mss = super_packet(packets)
        segments = split(merged, gso_type, mss)
        assert all(type(s) is PartialChecksumPacket for s in segments)
        assert [complete_checksum(s) for s in segments] == packets


def test_split_flags_and_ecn():
    packets = flow(3)
    merged, gso_type, mss = super_packet(packets)
    merged = bytearray(merged)
    merged[33] = ACK | PSH | FIN | CWR
    segments = split(bytes(merged), gso_type | 0x80, mss)
    assert [s[33] for s in segments] == [ACK | CWR, ACK, ACK | PSH | FIN]
    for segment in segments:
        assert_valid(complete_checksum(segment))


def test_split_refuses_what_is_not_tcp():
    udp = bytes.fromhex("4500001c00000000401100000a0000010a000002") + bytes(8)
    assert split(udp, 1, 1000) == []


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, MSS), st.integers(0, 2**32 - 1), st.booleans())
@example(16, 1, 3535, True)  # the last segment's TCP checksum is 0 (found by hypothesis)
def test_split_any_super_packet(count, last, start, v6):
    packets = flow(count, start=start, last=last, v6=v6)
    if len(packets) == 1:
        return
    merged, gso_type, mss = super_packet(packets)
    assert [complete_checksum(s) for s in split(merged, gso_type, mss)] == packets


# --- UDP: merged writes (GSO_UDP_L4) and USO reads ---------------------------------------


def assert_valid_udp(packet: bytes) -> None:
    v4 = packet[0] >> 4 == 4
    ip_len = 20 if v4 else 40
    assert int.from_bytes(packet[ip_len + 4:ip_len + 6], "big") == len(packet) - ip_len  # UDP length
    assert int.from_bytes(packet[ip_len + 6:ip_len + 8], "big") == transport_checksum(packet, 17, 6)
    if v4:
        assert ones_sum(packet[:20]) == 0xFFFF
        assert int.from_bytes(packet[2:4], "big") == len(packet)
    else:
        assert int.from_bytes(packet[4:6], "big") + 40 == len(packet)


def test_datagrams_of_one_flow_become_one_udp_gso_packet():
    for v6 in (False, True):
        packets = datagrams(5, last=300, v6=v6)
        ip_len = 40 if v6 else 20
        [plan] = coalesce(packets)
        header, merged = kernel_view(plan)
        assert header == (F_NEEDS_CSUM, GSO_UDP_L4, ip_len + 8, DATAGRAM, ip_len, 6)
        assert_valid_udp(merged)
        assert merged[ip_len + 8:] == b"".join(p[ip_len + 8:] for p in packets)


def test_udp_runs_end_where_the_kernel_could_not_cut_the_same_datagrams_back():
    def plan_sizes(packets, **options):
        return [len(plan) - 2 if plan[0] != PLAIN else 0 for plan in coalesce(packets, **options)]
    one_flow = datagrams(3)
    cases = {
        "other port": (one_flow + datagrams(1, src_port=9), [3, 0]),
        "other TTL": (one_flow + datagrams(1, ttl=9), [3, 0]),
        "other TOS": (one_flow + datagrams(1, tos=0x10), [3, 0]),
        "no DF": (one_flow + datagrams(1, frag=0), [3, 0]),
        "v6 traffic class": (datagrams(3, v6=True) + datagrams(1, v6=True, tos=0x10), [3, 0]),
        "v6 hop limit": (datagrams(3, v6=True) + datagrams(1, v6=True, ttl=9), [3, 0]),
        "bigger after smaller": (datagrams(1, size=100) + datagrams(1), [0, 0]),
        "short ends the run": (datagrams(2, last=10) + datagrams(2), [3, 2]),
        "empty datagram": (datagrams(2) + datagrams(1, size=0) + datagrams(2), [2, 0, 2]),
        "fragment": (datagrams(2) + datagrams(1, frag=0x2000) + datagrams(2), [2, 0, 2]),
        "TCP between": (datagrams(2) + flow(1) + datagrams(2), [2, 0, 2]),
        "64 datagrams at most": (datagrams(MAX_SEGMENTS + 1, size=100), [MAX_SEGMENTS, 0]),
        "64 KiB at most": (datagrams(60), [54, 6]),  # 28 + 54 * 1200 <= 65535
    }
    for name, (packets, expected) in cases.items():
        assert plan_sizes(packets) == expected, name
    assert plan_sizes(datagrams(3), merge_datagrams=False) == [0, 0, 0]
    assert plan_sizes(datagrams(2) + flow(2), merge_datagrams=False) == [0, 0, 2]


def test_merged_udp_keeps_every_byte_and_valid_checksums():
    packets = datagrams(MAX_SEGMENTS + 10, size=700) + datagrams(3, v6=True) + datagrams(2, last=1)
    written = [kernel_view(plan)[1] for plan in coalesce(packets)]
    for packet in written:
        assert_valid_udp(packet)
    def payload(stream):
        return b"".join(p[(20 if p[0] >> 4 == 4 else 40) + 8:] for p in stream)
    assert payload(written) == payload(packets)


def udp_super_packet(packets: list[bytes]) -> tuple[bytes, int]:
    """What the kernel hands over with USO: the merged packet and the datagram size."""
    [plan] = coalesce(packets)
    header = VNET_HEADER.unpack(bytes(plan[0]))
    assert header[1] == GSO_UDP_L4
    return b"".join(bytes(part) for part in plan[1:]), header[3]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, DATAGRAM), st.booleans())
def test_split_datagrams_undoes_any_merge(count, last, v6):
    packets = datagrams(count, last=last, v6=v6)
    merged, size = udp_super_packet(packets)
    parts = split_datagrams(merged, size)
    assert all(type(part) is PartialChecksumPacket for part in parts)
    assert [complete_checksum(part) for part in parts] == packets


def test_split_datagrams_refuses_what_is_not_udp():
    merged, gso_type, mss = super_packet(flow(3))
    assert split_datagrams(merged, mss) == []
    assert split_datagrams(udp_packet(b""), 100) == []


def test_parse_segment_takes_only_what_it_can_merge_back():
    """Malformed or unmergeable packets of every shape are written as they are."""
    v4, v6 = datagrams(1)[0], datagrams(1, v6=True)[0]
    tcp4, tcp6 = flow(1)[0], flow(1, v6=True)[0]
    unmergeable = {
        "tiny": v4[:27],
        "v4 udp length short": altered(v4, 24, (len(v4) - 21).to_bytes(2, "big")),
        "v4 total length off": v4 + b"\0",
        "v4 options": bytes([0x46]) + v4[1:],
        "v4 tcp truncated": tcp4[:39],
        "v4 not tcp or udp": altered(tcp4, 9, b"\x2f"),
        "v6 too short": v6[:48],
        "v6 udp length off": altered(v6, 44, (len(v6) - 41).to_bytes(2, "big")),
        "v6 payload length off": v6 + b"\0",
        "v6 tcp truncated": tcp6[:59],
        "v6 extension header": altered(tcp6, 6, b"\x00"),
        "version 5": bytes([0x55]) + tcp4[1:],
        "tcp offset too small": altered(tcp4, 32, b"\x40"),
    }
    for name, packet in unmergeable.items():
        assert coalesce([packet, packet]) == [[PLAIN, packet], [PLAIN, packet]], name


def test_split_refuses_what_the_kernel_does_not_hand_over():
    merged, gso_type, mss = super_packet(flow(3, v6=True))
    assert split(altered(merged, 6, b"\x11"), gso_type, mss) == []  # IPv6, not TCP
    assert split(merged[:60], gso_type, mss) == []  # no payload
    assert split(merged, gso_type, 0) == []
    assert split_datagrams(udp_super_packet(datagrams(3, v6=True))[0], 0) == []


# --- IPv6 extension headers (issue 13) -----------------------------------------------------

DEST_OPTIONS = (60, b"\x00\x01\x04\x00\x00\x00\x00")  # 8 bytes: PadN
HOP_BY_HOP = (0, b"\x00\x01\x04\x00\x00\x00\x00")
ROUTING = (43, b"\x00\x00\x00\x00\x00\x00\x00")  # type 0, no segments left (walked, not acted on)
FRAGMENT = (44, b"\x00\x00\x01\x12\x34\x56\x78")  # offset 0, more fragments
CHAINS = [[DEST_OPTIONS], [HOP_BY_HOP], [HOP_BY_HOP, ROUTING, DEST_OPTIONS],
          [(60, b"\x01" + b"\x01\x0c" + bytes(12))]]  # a 16-byte one


def with_extensions(packet: bytes, headers: list[tuple[int, bytes]]) -> bytes:
    """``packet`` (IPv6) with ``headers`` ((type, body after the next-header byte)
    each) between its fixed header and its upper layer. The TCP/UDP checksum
    stays right: the pseudo-header holds the upper-layer length."""
    kinds = [kind for kind, _ in headers] + [packet[6]]
    chain = b"".join(bytes([kinds[index + 1]]) + body for index, (_, body) in enumerate(headers))
    header = bytearray(packet[:40])
    header[6] = kinds[0]
    header[4:6] = (len(chain) + len(packet) - 40).to_bytes(2, "big")
    return bytes(header) + chain + packet[40:]


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(1, MSS), st.sampled_from(CHAINS))
def test_split_walks_ipv6_extension_headers(count, last, chain):
    """A TCP super-packet with destination options, hop-by-hop or routing headers:
    every segment carries them, with the right payload length and checksum. Before,
    the splitter took a 40-byte header and returned nothing: a silent drop."""
    packets = flow(count, last=last, v6=True)
    merged, gso_type, mss = super_packet(packets)
    segments = split(with_extensions(merged, chain), gso_type, mss)
    assert all(type(s) is PartialChecksumPacket for s in segments)
    assert [complete_checksum(s) for s in segments] == [with_extensions(p, chain) for p in packets]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, DATAGRAM), st.sampled_from(CHAINS))
def test_split_datagrams_walks_ipv6_extension_headers(count, last, chain):
    packets = datagrams(count, last=last, v6=True)
    merged, size = udp_super_packet(packets)
    parts = split_datagrams(with_extensions(merged, chain), size)
    assert [complete_checksum(part) for part in parts] == [with_extensions(p, chain) for p in packets]


def test_splitters_refuse_a_fragment_header_or_a_broken_chain():
    packets = flow(3, v6=True)
    merged, gso_type, mss = super_packet(packets)
    udp_merged, size = udp_super_packet(datagrams(3, v6=True))
    for chain in ([FRAGMENT], [DEST_OPTIONS, FRAGMENT], [(60, b"\xff" + bytes(6))]):  # the last runs past the end
        assert split(with_extensions(merged, chain)[:3000], gso_type, mss) == []
        assert split_datagrams(with_extensions(udp_merged, chain)[:3000], size) == []


def test_partial_checksums_are_found_past_extension_headers():
    """A partial-checksum packet with extension headers (a split segment) is
    finished where its TCP or UDP header is, by either end."""
    from vpncrypt.core.inner import checksum_location

    for packet in (flow(1, v6=True)[0], datagrams(1, v6=True)[0]):
        for chain in CHAINS:
            extended = with_extensions(packet, chain)
            start = 40 + sum(8 * (1 + body[0]) for _, body in chain)
            assert checksum_location(extended)[0] == start
            assert complete_checksum(make_partial_at(extended, start)) == extended
        assert checksum_location(with_extensions(packet, [FRAGMENT])) is None


def make_partial_at(packet: bytes, start: int) -> PartialChecksumPacket:
    """``packet`` with its TCP/UDP checksum field holding the pseudo-header sum only."""
    from vpncrypt.core.inner import checksum_location

    _, offset = checksum_location(packet)
    protocol = 6 if offset == 16 else 17
    length = len(packet) - start
    pseudo = fold(ones_sum(packet[8:40]) + protocol + length)
    partial = bytearray(packet)
    partial[start + offset:start + offset + 2] = pseudo.to_bytes(2, "big")
    return PartialChecksumPacket(bytes(partial))


# --- What no kernel hands over: refused, never an exception -----------------------------------


def long_tcp(payload_len: int, v6: bool) -> bytes:
    """A TCP packet with ``payload_len`` bytes of payload whose length field may not
    hold it (the splitters read the segment size, never that field)."""
    packet = tcp_packet(1, b"", v6=v6)
    return packet + bytes(payload_len)


def test_the_splitters_refuse_truncated_and_malformed_super_packets():
    """Every prefix too short for the headers and a byte of payload gives [],
    as do an IPv4 header under 20 bytes (IHL below 5), an IP version other than
    the GSO type's, and a first segment too long for its 16-bit length field.
    Before, the shortest raised IndexError, IHL 0 to 2 struct.error, and IHL 3
    or 4 cut segments out of the TCP header."""
    merged, gso_type, mss = super_packet(flow(3))
    merged6, gso_type6, mss6 = super_packet(flow(3, v6=True))
    udp, size = udp_super_packet(datagrams(3))
    udp6, size6 = udp_super_packet(datagrams(3, v6=True))
    for cut in range(41):
        assert split(merged[:cut], gso_type, mss) == [], cut
    for cut in range(29):
        assert split_datagrams(udp[:cut], size) == [], cut
    for cut in range(61):
        assert split(merged6[:cut], gso_type6, mss6) == [], cut
    for cut in range(49):
        assert split_datagrams(udp6[:cut], size6) == [], cut
    for ihl in range(5):
        assert split(bytes([0x40 | ihl]) + merged[1:], gso_type, mss) == [], ihl
        assert split_datagrams(bytes([0x40 | ihl]) + udp[1:], size) == [], ihl
    assert split(merged6, GSO_TCPV4, mss6) == [] and split(merged, GSO_TCPV6, mss) == []
    assert split_datagrams(bytes([0x50]) + udp[1:], size) == []  # neither IPv4 nor IPv6
    biggest4 = 65535 - 40  # the payload of the largest IPv4 segment
    assert len(split(long_tcp(biggest4, v6=False), GSO_TCPV4, 65535)) == 1
    assert split(long_tcp(biggest4 + 1, v6=False), GSO_TCPV4, 65535) == []
    assert len(split(long_tcp(biggest4 + 1, v6=False), GSO_TCPV4, biggest4)) == 2
    assert len(split(long_tcp(65535 - 20, v6=True), GSO_TCPV6, 65535)) == 1
    assert split(long_tcp(65535 - 19, v6=True), GSO_TCPV6, 65535) == []


def test_a_partial_packet_without_a_checksum_to_finish_is_written_plain():
    """A PartialChecksumPacket where checksum_location finds no TCP or UDP
    checksum goes as it is, as tun.finished leaves it (before: TypeError)."""
    for packet in (bytes.fromhex("45000054000040004001") + bytes(10), b"", b"\x60" + bytes(20)):
        partial = PartialChecksumPacket(packet)
        assert coalesce([partial]) == [[PLAIN, partial]]
