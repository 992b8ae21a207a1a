"""Inner packets: the prefix table that says which peer owns an address."""

from __future__ import annotations

import ipaddress

from vpncrypt.core.inner import REMEMBERED_ADDRESSES, PartialChecksumPacket, PrefixTable


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
    assert len(table.remembered) <= REMEMBERED_ADDRESSES  # bounded, whatever is looked up


# --- partial checksums: what counts as a whole TCP/UDP segment -----------------------

def test_the_checksum_covers_the_segment_up_to_the_ip_length_not_padding_after_it():
    """Issue 10: bytes after the IP total length (link padding) are not summed."""
    from tests.builders import make_partial, tcp_checksum, tcp_packet
    from vpncrypt.core.inner import complete_checksum

    for v6 in (False, True):
        packet = tcp_packet(1000, b"payload!", v6=v6)
        finished = complete_checksum(make_partial(packet))
        field = (20 if not v6 else 40) + 16
        assert int.from_bytes(finished[field:field + 2], "big") == tcp_checksum(packet)
        padded = complete_checksum(PartialChecksumPacket(bytes(make_partial(packet)) + b"\x01\x02\x03"))
        assert padded[:len(packet)] == finished and padded[len(packet):] == b"\x01\x02\x03"


def test_fragments_short_headers_and_lying_lengths_have_no_checksum_location():
    from tests.builders import tcp_packet
    from vpncrypt.core.inner import checksum_location

    packet = bytearray(tcp_packet(1000, b"x" * 40))
    assert checksum_location(bytes(packet)) == (20, 16)
    for offset, value in ((6, b"\x20\x00"), (6, b"\x00\x05")):  # more fragments; a fragment offset
        fragment = bytearray(packet)
        fragment[offset:offset + 2] = value
        assert checksum_location(bytes(fragment)) is None
    short = bytearray(packet)
    short[0] = 0x44  # IHL 4: a header shorter than 20 bytes
    assert checksum_location(bytes(short)) is None
    longer = bytearray(packet)
    longer[2:4] = (len(packet) + 1).to_bytes(2, "big")  # claims more than is there
    assert checksum_location(bytes(longer)) is None
    assert checksum_location(bytes(packet[:30])) is None


# --- TCP MSS clamping (issue 13), IPv6 extension headers ---------------------------------

import struct  # noqa: E402

import pytest  # noqa: E402

from tests.builders import ACK, SYN, make_partial, ones_sum, tcp_packet  # noqa: E402
from vpncrypt.core.inner import clamp_mss, ipv6_upper_layer  # noqa: E402

MSS_OPTION = b"\x02\x04\x05\xb4"  # MSS 1460
OTHER_OPTIONS = b"\x01\x03\x03\x07"  # NOP, window scale 7


def with_extensions(packet: bytes, headers: list[tuple[int, bytes]]) -> bytes:
    """An IPv6 packet with extension headers inserted before its upper layer:
    ``headers`` is (type, body after next-header byte) each, in order."""
    assert packet[0] >> 4 == 6
    upper = packet[40:]
    chain, kinds = b"", [kind for kind, _ in headers] + [packet[6]]
    for index, (_, body) in enumerate(headers):
        chain += bytes([kinds[index + 1]]) + body
    header = bytearray(packet[:40])
    header[6] = kinds[0]
    header[4:6] = (len(chain) + len(upper)).to_bytes(2, "big")
    return bytes(header) + chain + upper


def destination_options(pad: int = 6) -> tuple[int, bytes]:
    """An 8-byte destination options header: hdr ext len 0, then PadN."""
    return 60, b"\x00" + b"\x01" + bytes([pad - 2]) + bytes(pad - 2)


def tcp_checksum_ok(packet: bytes) -> bool:
    """The TCP checksum of ``packet`` checks out, wherever its TCP header is."""
    if packet[0] >> 4 == 4:
        start = (packet[0] & 0x0F) * 4
        segment = packet[start:]
        pseudo = packet[12:20] + struct.pack("!HH", 6, len(segment))
    else:
        protocol, start, _ = ipv6_upper_layer(packet)
        segment = packet[start:]
        pseudo = packet[8:40] + struct.pack("!IxxxB", len(segment), 6)
    return (ones_sum(pseudo) + ones_sum(segment)) % 0xFFFF == 0


def mss_of(packet: bytes) -> int:
    start = (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else ipv6_upper_layer(packet)[1]
    index = packet.index(b"\x02\x04", start + 20)
    return int.from_bytes(packet[index + 2:index + 4], "big")


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("options", [MSS_OPTION + OTHER_OPTIONS, OTHER_OPTIONS + MSS_OPTION,
                                     b"\x01" + MSS_OPTION + b"\x01\x01\x00"])  # the last: MSS at an odd offset
@pytest.mark.parametrize("flags", [SYN, SYN | ACK])
def test_a_syn_mss_is_clamped_to_the_tunnel_and_its_checksum_stays_right(v6, options, flags):
    packet = tcp_packet(1000, b"", flags=flags, v6=v6, options=options)
    assert tcp_checksum_ok(packet)
    clamped = clamp_mss(packet, 1420)
    assert mss_of(clamped) == (1360 if v6 else 1380)
    assert tcp_checksum_ok(clamped)
    assert len(clamped) == len(packet) and type(clamped) is bytes
    differing = [i for i in range(len(packet)) if packet[i] != clamped[i]]
    assert len(differing) <= 4  # the MSS and the checksum, nothing else
    assert clamp_mss(clamped, 1420) == clamped  # already small enough: untouched
    assert clamp_mss(packet, 1500 + (20 if v6 else 0)) == packet  # 1460 fits


def test_checksum_corner_cases_of_the_incremental_update():
    """Every MSS value over the limit, with source ports that make the checksum
    sweep its range (0x0000 and 0xFFFF included), stays right (RFC 1624)."""
    for port in range(0, 65536, 97):
        for mss in (1381, 1460, 0xFFFF):
            options = b"\x02\x04" + mss.to_bytes(2, "big")
            packet = tcp_packet(1000, b"", flags=SYN, options=options, src_port=port)
            clamped = clamp_mss(packet, 1420)
            assert mss_of(clamped) == 1380 and tcp_checksum_ok(clamped), (port, mss)


def test_what_is_not_a_syn_with_a_large_mss_is_returned_as_it_is():
    assert clamp_mss(tcp_packet(1000, b"x" * 100, flags=ACK, options=MSS_OPTION), 1280) == \
        tcp_packet(1000, b"x" * 100, flags=ACK, options=MSS_OPTION)
    no_mss = tcp_packet(1000, b"", flags=SYN, options=OTHER_OPTIONS)
    assert clamp_mss(no_mss, 1280) is no_mss
    for broken in (b"\x03\x00\x05\xb4", b"\x01\x01\x02\x04"):  # a zero-length option; a cut MSS
        packet = tcp_packet(1000, b"", flags=SYN, options=broken)
        assert clamp_mss(packet, 1280) == packet
    fragment = bytearray(tcp_packet(1000, b"", flags=SYN, options=MSS_OPTION))
    fragment[6:8] = b"\x20\x00"  # more fragments
    assert clamp_mss(bytes(fragment), 1280) == bytes(fragment)
    for other in (b"", b"\x45" * 10, bytes(60), b"\x60" + bytes(45)):
        assert clamp_mss(other, 1280) == other


@pytest.mark.parametrize("v6", [False, True])
def test_a_partial_checksum_syn_keeps_its_type_and_field(v6):
    """With offloads the kernel may hand over a SYN whose field holds the
    pseudo-header sum only: the options are not in it, so it stays as it is."""
    packet = make_partial(tcp_packet(1000, b"", flags=SYN, v6=v6, options=MSS_OPTION))
    clamped = clamp_mss(packet, 1420)
    assert type(clamped) is PartialChecksumPacket and mss_of(clamped) == (1360 if v6 else 1380)
    field = (20 if not v6 else 40) + 16
    assert clamped[field:field + 2] == packet[field:field + 2]


@pytest.mark.parametrize("headers", [
    [destination_options()],
    [(0, b"\x00\x01\x04\x00\x00\x00\x00")],  # hop-by-hop, PadN
    [(0, b"\x00\x01\x04\x00\x00\x00\x00"), (43, b"\x00\x00\x00\x00\x00\x00\x00"), destination_options()],
    [(44, b"\x00\x00\x00\x12\x34\x56\x78")],  # an atomic fragment: offset 0, no more fragments
])
def test_ipv6_extension_headers_are_walked(headers):
    packet = with_extensions(tcp_packet(1000, b"", flags=SYN, v6=True, options=MSS_OPTION), headers)
    protocol, start, offset = ipv6_upper_layer(packet)
    assert protocol == 6 and start == 40 + 8 * len(headers) and offset == 0
    assert tcp_checksum_ok(packet)
    clamped = clamp_mss(packet, 1420)
    assert mss_of(clamped) == 1360 and tcp_checksum_ok(clamped)


def test_ipv6_headers_that_run_past_the_packet_or_never_end_are_refused():
    base = tcp_packet(1000, b"", flags=SYN, v6=True, options=MSS_OPTION)
    long_header = with_extensions(base, [(60, b"\xff" + bytes(6))])  # claims 2048 bytes
    assert ipv6_upper_layer(long_header) is None
    assert clamp_mss(long_header, 1280) == long_header
    chain = with_extensions(base, [destination_options()] * 9)
    assert ipv6_upper_layer(chain) is None
    later_fragment = with_extensions(base, [(44, b"\x00\x00\x08\x12\x34\x56\x78")])  # offset 8
    assert ipv6_upper_layer(later_fragment)[2] == 8
    assert clamp_mss(later_fragment, 1280) == later_fragment
    assert ipv6_upper_layer(base[:39]) is None


def test_the_server_core_clamps_syns_both_ways():
    """Every TCP flow through the tunnel passes the server: a SYN from a client
    and a SYN-ACK to it both leave the server core with the MSS clamped."""
    from tests.builders import A_ADDR, A_EP, KEY_A, NOW, SERVER_ID, epoch_aead, make_server, seal_from_a
    from vpncrypt.core.wire import TO_CLIENT, open_datagram

    server = make_server(mtu=1400)
    syn = tcp_packet(1000, b"", flags=SYN, options=MSS_OPTION)  # client a to the server
    [datagram] = seal_from_a([syn])
    [delivered] = server.datagrams_received([(datagram, A_EP)], NOW + 5).to_tun
    assert mss_of(delivered) == 1360 and tcp_checksum_ok(delivered)
    syn_ack = tcp_packet(1000, b"", flags=SYN | ACK, options=MSS_OPTION, to=A_ADDR)
    [(out, endpoint)] = server.tun_packets_received([syn_ack], NOW + 6).to_network
    opened = open_datagram(epoch_aead(KEY_A, NOW + 6), out, direction=TO_CLIENT, server_id=SERVER_ID, now=NOW + 6)[2]
    assert endpoint == A_EP and mss_of(opened) == 1360 and tcp_checksum_ok(opened)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("protocol, written", [("tcp", 0x0000), ("udp", 0xFFFF)])
def test_a_checksum_that_comes_out_zero_is_0_for_tcp_and_0xffff_for_udp(v6, protocol, written):
    """A segment whose sum is one's complement -0: TCP gets 0 (as the kernel's
    csum_fold writes it; RFC 1071), UDP 0xFFFF (0 means no checksum, RFC 768)."""
    from vpncrypt.core.inner import complete_checksum

    from tests.builders import udp_packet

    packet = tcp_packet(1, bytes(64), v6=v6) if protocol == "tcp" else udp_packet(bytes(64), v6=v6)
    ip_len = 40 if v6 else 20
    field = ip_len + (16 if protocol == "tcp" else 6)
    first = complete_checksum(make_partial(packet))
    checksum = int.from_bytes(first[field:field + 2], "big")
    # Add the checksum into a payload word: the sum becomes 0xFFFF, the checksum 0.
    word = len(packet) - 2
    zeroed = bytearray(packet)
    total = int.from_bytes(zeroed[word:], "big") + checksum
    zeroed[word:] = ((total & 0xFFFF) + (total >> 16)).to_bytes(2, "big")
    finished = complete_checksum(make_partial(bytes(zeroed)))
    assert int.from_bytes(finished[field:field + 2], "big") == written
