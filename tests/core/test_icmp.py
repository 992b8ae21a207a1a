"""ICMP destination unreachable from the server core (core/icmp.py), in-process.

The answers are checked field by field against RFC 792 / RFC 4443 with a
checksum summed here word by word (not the core's modulo shortcut), the
pseudo-header built here from RFC 8200 8.1.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from vpncrypt.core import drops as reasons
from vpncrypt.core import icmp
from vpncrypt.core.icmp import BURST, MAX_SOURCES, RATE, Unreachable

from tests.builders import (
    A_ADDR, A_EP, B_ADDR, NOW, SERVER_ADDR, SERVER_EP, ipv4_packet, ipv6_packet, make_client, make_server,
    seal_from_a, udp_packet,
)

SERVER6 = "2001:db8::1"
A6 = "2001:db8::2"
TUNNEL = [ipaddress.ip_interface(f"{SERVER_ADDR}/24"), ipaddress.ip_interface(f"{SERVER6}/64")]
NOBODY, NOBODY6 = "203.0.113.99", "2001:db8::99"


def raw(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def word_sum(data: bytes) -> int:
    """RFC 1071 by the book: 16-bit words added with end-around carry."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def responder() -> tuple[Unreachable, dict]:
    return Unreachable(raw(SERVER_ADDR), raw(SERVER6)), reasons.new_counters()


def udp4(source: str, destination: str, size: int = 100) -> bytes:
    body = bytes(range(256)) * (size // 256 + 1)
    return ipv4_packet(source, destination, struct.pack("!HHHH", 1234, 9, 8 + size, 0) + body[:size], 17)


def udp6(source: str, destination: str, size: int = 100) -> bytes:
    body = bytes(range(256)) * (size // 256 + 1)
    return ipv6_packet(source, destination, struct.pack("!HHHH", 1234, 9, 8 + size, 0) + body[:size], 17)


def check_ipv4_error(error: bytes, source: str, destination: str, quoted: bytes) -> None:
    version_ihl, tos, total, _, _, ttl, protocol, _, src, dst = struct.unpack_from("!BBHHHBBH4s4s", error)
    assert (version_ihl, tos, total, protocol, src, dst) == (0x45, 0xC0, len(error), 1, raw(source), raw(destination))
    assert ttl > 1 and word_sum(error[:20]) == 0xFFFF  # header checksum
    assert error[20:22] == bytes((3, 1))  # destination unreachable, host
    assert error[24:28] == bytes(4)
    assert word_sum(error[20:]) == 0xFFFF  # ICMP checksum
    assert error[28:] == quoted


def check_ipv6_error(error: bytes, source: str, destination: str, quoted: bytes) -> None:
    first, length, next_header, hops, src, dst = struct.unpack_from("!IHBB16s16s", error)
    assert (first >> 28, length, next_header, src, dst) == (6, len(error) - 40, 58, raw(source), raw(destination))
    assert hops > 1
    assert error[40:42] == bytes((1, 3))  # destination unreachable, address unreachable
    assert error[44:48] == bytes(4)
    pseudo = raw(source) + raw(destination) + struct.pack("!I3xB", length, 58)
    assert word_sum(pseudo + error[40:]) == 0xFFFF
    assert error[48:] == quoted


# --- the answer itself ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 100, 519, 520, 521, 1372])
def test_ipv4_answer_quotes_what_fits_in_576_bytes(size):
    unreachable, drops = responder()
    packet = udp4(A_ADDR, NOBODY, size)
    error = unreachable.answer(packet, NOW, drops)
    check_ipv4_error(error, SERVER_ADDR, A_ADDR, packet[:576 - 28])
    assert len(error) == min(576, 28 + len(packet))
    assert unreachable.sent == 1 and not any(drops.values())


@pytest.mark.parametrize("size", [0, 1, 100, 1183, 1184, 1185, 1372])
def test_ipv6_answer_quotes_what_fits_in_1280_bytes(size):
    unreachable, drops = responder()
    packet = udp6(A6, NOBODY6, size)
    error = unreachable.answer(packet, NOW, drops)
    check_ipv6_error(error, SERVER6, A6, packet[:1280 - 48])
    assert len(error) == min(1280, 48 + len(packet))


def test_an_answer_to_the_server_itself_comes_from_the_unreachable_address():
    unreachable, drops = responder()
    packet = udp4(SERVER_ADDR, NOBODY)
    check_ipv4_error(unreachable.answer(packet, NOW, drops), NOBODY, SERVER_ADDR, packet)
    packet = udp6(SERVER6, NOBODY6)
    check_ipv6_error(unreachable.answer(packet, NOW, drops), NOBODY6, SERVER6, packet)


def test_no_address_of_the_family_no_answer_counted():
    unreachable, drops = Unreachable(raw(SERVER_ADDR), None), reasons.new_counters()
    assert unreachable.answer(udp6(A6, NOBODY6), NOW, drops) is None
    assert drops[reasons.ICMP_NO_SOURCE_ADDRESS] == 1 and unreachable.sent == 0
    assert unreachable.answer(udp4(A_ADDR, NOBODY), NOW, drops) is not None


# --- what is never answered -------------------------------------------------------------------------

def icmp4(type_: int, source: str = A_ADDR) -> bytes:
    return ipv4_packet(source, NOBODY, bytes((type_, 0, 0, 0)) + bytes(32), 1)


def icmp6(type_: int, chain: bytes = b"") -> bytes:
    """ICMPv6 of ``type_``, behind a destination options header if ``chain``."""
    message = bytes((type_, 0, 0, 0)) + bytes(32)
    if chain:
        return ipv6_packet(A6, NOBODY6, bytes((58, 0)) + chain + message, 60)
    return ipv6_packet(A6, NOBODY6, message, 58)


@pytest.mark.parametrize("packet", [
    icmp4(3), icmp4(11), icmp4(12), icmp4(5), icmp4(4), icmp4(200),  # errors, and a type nobody knows
    icmp6(1), icmp6(2), icmp6(3), icmp6(4), icmp6(137), icmp6(1, bytes(6)),  # errors, a redirect
    ipv4_packet(A_ADDR, NOBODY, b"\x03", 1)[:20],  # an ICMP message cut before its type
], ids=lambda packet: packet.hex()[:8] + "-" + packet[20:22].hex() + packet[40:42].hex())
def test_icmp_errors_are_never_answered(packet):
    unreachable, drops = responder()
    assert unreachable.answer(packet, NOW, drops) is None
    assert unreachable.sent == 0 and not any(drops.values())


@pytest.mark.parametrize("packet", [icmp4(8), icmp4(0), icmp6(128), icmp6(129), icmp6(128, bytes(6))])
def test_icmp_queries_are_answered(packet):
    unreachable, drops = responder()
    assert unreachable.answer(packet, NOW, drops) is not None


@pytest.mark.parametrize("source, destination", [
    ("0.0.0.0", NOBODY), ("127.0.0.1", NOBODY), ("224.0.0.1", NOBODY), ("240.0.0.1", NOBODY),
    ("255.255.255.255", NOBODY), (A_ADDR, "224.0.0.5"), (A_ADDR, "255.255.255.255"),
    ("::", NOBODY6), ("::1", NOBODY6), ("ff02::1", NOBODY6), (A6, "ff02::1"),
])
def test_no_answer_to_or_from_an_address_that_is_not_one_host(source, destination):
    unreachable, drops = responder()
    make = udp6 if ":" in source else udp4
    assert unreachable.answer(make(source, destination), NOW, drops) is None
    assert unreachable.sent == 0


def fragment4(offset: int, more: bool) -> bytes:
    packet = bytearray(udp4(A_ADDR, NOBODY))
    packet[6:8] = ((0x2000 if more else 0) | offset).to_bytes(2, "big")
    return bytes(packet)


def fragment6(offset: int, more: bool) -> bytes:
    packet = udp6(A6, NOBODY6)
    header = bytes((17, 0)) + ((offset << 3) | more).to_bytes(2, "big") + b"\x12\x34\x56\x78"
    return ipv6_packet(A6, NOBODY6, header + packet[40:], 44)


def test_only_first_fragments_are_answered():
    unreachable, drops = responder()
    assert unreachable.answer(fragment4(1, True), NOW, drops) is None
    assert unreachable.answer(fragment4(1, False), NOW, drops) is None
    assert unreachable.answer(fragment6(1, False), NOW, drops) is None
    assert unreachable.answer(fragment4(0, True), NOW, drops) is not None
    assert unreachable.answer(fragment6(0, True), NOW, drops) is not None


# --- the rate limit ---------------------------------------------------------------------------------

def test_a_burst_then_the_rate_per_source():
    unreachable, drops = responder()
    packet, other = udp4(A_ADDR, NOBODY), udp4(B_ADDR, NOBODY)
    answered = [unreachable.answer(packet, NOW, drops) is not None for _ in range(int(BURST) + 3)]
    assert answered == [True] * int(BURST) + [False] * 3
    assert drops[reasons.ICMP_RATE_LIMITED] == 3
    assert unreachable.answer(other, NOW, drops) is not None  # another source has its own bucket
    assert unreachable.answer(packet, NOW + 0.5 / RATE, drops) is None  # half a token
    assert unreachable.answer(packet, NOW + 1 / RATE, drops) is not None  # one token
    assert unreachable.answer(packet, NOW + 1 / RATE, drops) is None
    # A clock stepped back gives no tokens and breaks nothing.
    assert unreachable.answer(packet, NOW - 1000, drops) is None
    later = NOW - 1000 + BURST / RATE
    assert [unreachable.answer(packet, later, drops) is not None for _ in range(int(BURST) + 1)] == \
        [True] * int(BURST) + [False]


def test_a_flood_gets_the_rate_and_no_more():
    unreachable, drops = responder()
    packet = udp4(A_ADDR, NOBODY)
    seconds, per_second = 20, 1000
    answered = sum(unreachable.answer(packet, NOW + i / per_second, drops) is not None
                   for i in range(seconds * per_second))
    assert answered <= BURST + seconds * RATE
    assert answered + drops[reasons.ICMP_RATE_LIMITED] == seconds * per_second


def test_the_table_of_sources_is_bounded():
    unreachable, drops = responder()
    sources = [str(ipaddress.ip_address("198.51.100.0") + i) for i in range(MAX_SOURCES + 1)]
    sources[-1] = "192.0.2.77"
    for source in sources[:MAX_SOURCES]:
        assert unreachable.answer(udp4(source, NOBODY), NOW, drops) is not None
    newcomer = udp4(sources[-1], NOBODY)
    assert unreachable.answer(newcomer, NOW, drops) is None  # full of sources still within their burst
    assert drops[reasons.ICMP_RATE_LIMITED] == 1
    assert len(unreachable._buckets) == MAX_SOURCES
    refilled = NOW + 1 / RATE + icmp.PRUNE_INTERVAL  # every bucket full again: forgotten
    assert unreachable.answer(newcomer, refilled, drops) is not None
    assert len(unreachable._buckets) == 1


# --- the server core: where the answers go ----------------------------------------------------------

def server_with_a():
    """The server (tunnel 203.0.113.1/24, 2001:db8::1/64) with client a heard from, b not."""
    server = make_server(tunnel=TUNNEL, client_to_client=True)
    server.datagrams_received([(d, A_EP) for d in seal_from_a([udp4(A_ADDR, SERVER_ADDR)])], NOW + 5)
    return server


def opened_by_a(datagrams) -> list[bytes]:
    assert {endpoint for _, endpoint in datagrams} == {A_EP}
    client = make_client()
    return client.datagrams_received([(d, SERVER_EP) for d, _ in datagrams], NOW + 6).to_tun


@pytest.mark.parametrize("destination", [NOBODY, B_ADDR, NOBODY6, "2001:db8:b::5"],
                         ids=["v4 nobody's", "v4 b not heard from", "v6 nobody's", "v6 b not heard from"])
def test_a_clients_packet_that_cannot_be_delivered_is_answered_to_it(destination):
    server = server_with_a()
    packet = (udp6 if ":" in destination else udp4)(A6 if ":" in destination else A_ADDR, destination)
    delivery = server.datagrams_received([(d, A_EP) for d in seal_from_a([packet], NOW + 6)], NOW + 6)
    assert delivery.to_tun == []
    [error] = opened_by_a(delivery.to_network)
    if ":" in destination:
        check_ipv6_error(error, SERVER6, A6, packet)
    else:
        check_ipv4_error(error, SERVER_ADDR, A_ADDR, packet)
    reason = reasons.NO_ROUTE if destination in (NOBODY, NOBODY6) else reasons.NO_ENDPOINT
    assert server.drops[reason] == 1 and server.status()["icmp_sent"] == 1


@pytest.mark.parametrize("destination", [SERVER_ADDR, "198.51.100.7", SERVER6, "2001:db9::1"])
def test_a_clients_packet_to_the_server_or_beyond_the_tunnel_goes_to_the_kernel(destination):
    server = server_with_a()
    packet = (udp6 if ":" in destination else udp4)(A6 if ":" in destination else A_ADDR, destination)
    delivery = server.datagrams_received([(d, A_EP) for d in seal_from_a([packet], NOW + 6)], NOW + 6)
    assert delivery == ([packet], []) and server.status()["icmp_sent"] == 0


def test_a_packet_from_the_tun_device_for_nobody_is_answered_to_its_sender():
    server = server_with_a()
    # From a host behind the server (or the server itself): back to TUN.
    packet = udp4("198.51.100.7", NOBODY)
    delivery = server.tun_packets_received([packet], NOW + 6)
    assert delivery.to_network == []
    [error] = delivery.to_tun
    check_ipv4_error(error, SERVER_ADDR, "198.51.100.7", packet)
    # For client b, never heard from: the same, counted as no_endpoint.
    packet = udp6(SERVER6, "2001:db8:b::5")
    [error] = server.tun_packets_received([packet], NOW + 6).to_tun
    check_ipv6_error(error, "2001:db8:b::5", SERVER6, packet)
    # Forwarded by the kernel from client a: sealed to a at once.
    packet = udp4(A_ADDR, "203.0.113.200")
    delivery = server.tun_packets_received([packet], NOW + 6)
    assert delivery.to_tun == []
    [error] = opened_by_a(delivery.to_network)
    check_ipv4_error(error, SERVER_ADDR, A_ADDR, packet)
    assert (server.drops[reasons.NO_ROUTE], server.drops[reasons.NO_ENDPOINT]) == (2, 1)


def test_a_server_without_tunnel_addresses_counts_instead():
    server = make_server()
    assert server.tun_packets_received([udp4("198.51.100.7", NOBODY)], NOW) == ([], [])
    assert server.drops[reasons.NO_ROUTE] == server.drops[reasons.ICMP_NO_SOURCE_ADDRESS] == 1


def test_the_data_path_is_unchanged_when_nothing_is_answered():
    server = server_with_a()
    packets = [udp_packet(bytes([i]) * 50) for i in range(3)]  # a to the server: for the kernel
    delivery = server.datagrams_received([(d, A_EP) for d in seal_from_a(packets, NOW + 6)], NOW + 6)
    assert delivery.to_network == [] and len(delivery.to_tun) == 3
