"""Inner packet sanity (inner.well_formed): IP, TCP and UDP lengths checked before
routing, after decryption (inner_malformed) and from the TUN device (tun_malformed)."""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpncrypt.core import drops as reasons
from vpncrypt.core.inner import PartialChecksumPacket, well_formed

from tests.builders import (
    A_ADDR, A_EP, NOW, SERVER_ADDR, ipv4_packet, ipv6_packet, make_server, seal_from_a, tcp_packet, udp_packet,
)

A6, SERVER6 = "2001:db8::2", "2001:db8::1"
TCP4, TCP6 = tcp_packet(1, b"data"), tcp_packet(1, b"data", v6=True)
UDP4, UDP6 = udp_packet(b"data"), udp_packet(b"data", v6=True)


def changed(packet: bytes, offset: int, value: bytes) -> bytes:
    return packet[:offset] + value + packet[offset + len(value):]


def tcp_offset(packet: bytes, words: int, start: int = 20) -> bytes:
    return changed(packet, start + 12, bytes([words << 4]))


def with_dest_options(packet: bytes, length_byte: int = 0) -> bytes:
    """``packet`` (IPv6) with an 8-byte destination options header (its length
    byte ``length_byte``: 0 is 8 bytes) before its upper layer."""
    header = bytes((packet[6], length_byte, 1, 4, 0, 0, 0, 0))
    return ipv6_packet(A6, SERVER6, header + packet[40:], 60)


def with_ipv4_options(packet: bytes, options: bytes) -> bytes:
    """An IPv4 ``packet`` (no options) with ``options`` (a multiple of 4 bytes) added."""
    header = bytearray(packet[:20])
    header[0] = 0x45 + len(options) // 4
    header[2:4] = (len(packet) + len(options)).to_bytes(2, "big")
    return bytes(header) + options + packet[20:]


def with_tcp_options(packet: bytes, options: bytes) -> bytes:
    """An IPv4 TCP ``packet`` (no options) with TCP ``options`` (a multiple of 4 bytes) added."""
    header = bytearray(packet[:40])
    header[2:4] = (len(packet) + len(options)).to_bytes(2, "big")
    header[32] = (5 + len(options) // 4) << 4
    return bytes(header) + options + packet[40:]


def fragment4(packet: bytes, offset: int, more: bool) -> bytes:
    return changed(packet, 6, ((0x2000 if more else 0) | offset).to_bytes(2, "big"))


def fragment6(packet: bytes, offset: int, more: bool) -> bytes:
    header = bytes((packet[6], 0)) + ((offset << 3) | more).to_bytes(2, "big") + b"\x00\x00\x00\x01"
    return ipv6_packet(A6, SERVER6, header + packet[40:], 44)


WHOLE = {
    "udp4": UDP4, "tcp4": TCP4, "udp6": UDP6, "tcp6": TCP6,
    "tcp4 with options": with_tcp_options(TCP4, bytes((1, 1, 1, 1, 1, 1, 1, 0))),
    "ipv4 options": with_ipv4_options(UDP4, bytes((1, 1, 1, 0))),
    "tcp6 behind destination options": with_dest_options(TCP6),
    "udp6 behind destination options": with_dest_options(UDP6),
    "icmp, not looked into": ipv4_packet(A_ADDR, SERVER_ADDR, b"\x08", 1),
    "a non-first ipv4 fragment": fragment4(ipv4_packet(A_ADDR, SERVER_ADDR, b"xy", 6), 10, False),
    "a first ipv4 fragment of udp": fragment4(changed(UDP4, 24, b"\x05\xdc"), 0, True),  # UDP length: all fragments
    "a non-first ipv6 fragment": fragment6(ipv6_packet(A6, SERVER6, b"xy", 6), 10, False),
    "a first ipv6 fragment of udp": fragment6(changed(UDP6, 44, b"\x05\xdc"), 0, True),
    "an opaque protocol": ipv4_packet(A_ADDR, SERVER_ADDR),
    # Past 28 bytes (the fast way through): a ping each way, and a fragment of one.
    "an icmp echo": ipv4_packet(A_ADDR, SERVER_ADDR, b"\x08\x00" + bytes(62), 1),
    "an icmpv6 echo": ipv6_packet(A6, SERVER6, b"\x80\x00" + bytes(62), 58),
    "a non-first ipv4 fragment of icmp": fragment4(ipv4_packet(A_ADDR, SERVER_ADDR, bytes(64), 1), 10, False),
}

MALFORMED = {
    "empty": b"",
    "19 bytes": UDP4[:19],
    "version 5": bytes([0x55]) + UDP4[1:],
    "ipv6 of 39 bytes": UDP6[:39],
    "ihl 4": bytes([0x44]) + UDP4[1:],
    "ipv4 total length past the end": changed(UDP4, 2, (len(UDP4) + 1).to_bytes(2, "big")),
    "ipv4 total length inside the header": changed(UDP4, 2, (19).to_bytes(2, "big")),
    "ipv4 options past the total length": bytes([0x4F]) + UDP4[1:],
    "ipv6 payload length past the end": changed(UDP6, 4, (len(UDP6) - 39).to_bytes(2, "big")),
    "tcp4 of 19 bytes": ipv4_packet(A_ADDR, SERVER_ADDR, TCP4[20:39], 6),
    "tcp4 data offset 4": tcp_offset(TCP4, 4),
    "tcp4 data offset past the end": tcp_offset(TCP4, 7),
    "tcp6 data offset 0": tcp_offset(TCP6, 0, 40),
    "tcp6 behind options, cut": with_dest_options(TCP6)[:60],
    "udp4 of 7 bytes": ipv4_packet(A_ADDR, SERVER_ADDR, UDP4[20:27], 17),
    "udp4 length 7": changed(UDP4, 24, (7).to_bytes(2, "big")),
    "udp4 length past the end": changed(UDP4, 24, (len(UDP4) - 19).to_bytes(2, "big")),
    "udp6 length 0": changed(UDP6, 44, bytes(2)),
    "ipv6 options running past the end": with_dest_options(UDP6, 9),
    "a first ipv4 fragment cut inside tcp": fragment4(ipv4_packet(A_ADDR, SERVER_ADDR, TCP4[20:30], 6), 0, True),
}


@pytest.mark.parametrize("name", list(WHOLE))
def test_whole_packets_pass_as_they_are(name):
    packet = WHOLE[name]
    assert well_formed(packet) is packet


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_packets_are_refused(name):
    assert well_formed(MALFORMED[name]) is None


@pytest.mark.parametrize("packet", [UDP4, TCP6, PartialChecksumPacket(TCP4)])
def test_bytes_after_the_ip_length_are_cut_off_and_the_type_kept(packet):
    padded = type(packet)(packet + b"\0pad")
    cut = well_formed(padded)
    assert cut == packet and type(cut) is type(packet)


def test_the_cores_count_what_they_refuse():
    server = make_server()
    bad = MALFORMED["tcp4 data offset 4"]
    server.datagrams_received([(d, A_EP) for d in seal_from_a([bad, TCP4[:20] + TCP4[20:]])], NOW + 5)
    assert server.drops[reasons.INNER_MALFORMED] == 1
    assert server.tun_packets_received([bad, MALFORMED["udp4 length 7"]], NOW + 5) == ([], [])
    assert server.drops[reasons.TUN_MALFORMED] == 2


def test_padding_is_cut_before_delivery():
    server = make_server()
    padded = changed(UDP4, 12, bytes(map(int, A_ADDR.split(".")))) + b"\0\0"
    delivery = server.datagrams_received([(d, A_EP) for d in seal_from_a([padded])], NOW + 5)
    assert delivery.to_tun == [padded[:-2]]


# --- anything at all ---------------------------------------------------------------------------

@st.composite
def damaged(draw) -> bytes:
    """A real packet, then cut, extended, or a header byte set to anything."""
    packet = draw(st.sampled_from(list(WHOLE.values()) + list(MALFORMED.values())))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["cut", "extend", "set"]))
        if how == "cut":
            packet = packet[:draw(st.integers(0, len(packet)))]
        elif how == "extend":
            packet += draw(st.binary(max_size=20))
        elif packet:
            index = draw(st.integers(0, min(len(packet), 80) - 1))
            packet = packet[:index] + bytes([draw(st.integers(0, 255))]) + packet[index + 1:]
    return packet


@settings(max_examples=400, deadline=None)
@given(st.one_of(damaged(), st.binary(max_size=120)))
def test_any_bytes_never_raise_and_what_passes_holds_together(packet):
    result = well_formed(packet)
    if result is None:
        return
    assert packet.startswith(result)
    version = result[0] >> 4
    if version == 4:
        assert struct.unpack_from("!H", result, 2)[0] == len(result) >= (result[0] & 0x0F) * 4 >= 20
    else:
        assert version == 6 and 40 + struct.unpack_from("!H", result, 4)[0] == len(result)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(damaged(), st.binary(max_size=120)), max_size=8))
def test_the_server_core_delivers_or_counts_each_packet_once(packets):
    """From the TUN device: each packet is sealed, or counted once (tun_malformed,
    no_route, no_endpoint); never an exception."""
    server = make_server()
    before = Counter(server.drops)
    out = server.tun_packets_received(packets, NOW)
    counted = Counter(server.drops) - before
    routed = {reasons.TUN_MALFORMED, reasons.NO_ROUTE, reasons.NO_ENDPOINT}
    assert sum(counted[r] for r in routed) + len(out.to_network) == len(packets)
    assert counted[reasons.TUN_MALFORMED] == sum(well_formed(p) is None for p in packets)
