"""ICMP destination unreachable for inner packets the server cannot deliver.

A router that has no route for a packet tells its sender at once (RFC 1812,
5.2.7.1), and so does WireGuard's kernel module for a peer with no endpoint;
without it a TCP connect to an address nobody owns waits out its whole
timeout. The codes are chosen for what Linux makes of them: ICMPv4 type 3
code 1 (host unreachable) is EHOSTUNREACH in ``icmp_err_convert``
(net/ipv4/icmp.c), ICMPv6 type 1 code 3 (address unreachable, RFC 4443 3.1)
is EHOSTUNREACH in ``tab_unreach`` (net/ipv6/icmp.c); ``tcp_v4_err`` and
``tcp_v6_err`` end a connect in SYN-SENT on either, so it fails at once with
"No route to host".

Never answered (RFC 1812 4.3.2.7, RFC 4443 2.4(e)): an ICMP error (or an
ICMPv6 redirect), a non-first fragment, a packet to a multicast or broadcast
address, or from one that does not name a single host (unspecified,
loopback, multicast, broadcast, IPv4 class E). Each source gets a token
bucket, so a flood of packets to nowhere gets a few answers a second.
"""

from __future__ import annotations

import struct
from collections import Counter

from . import drops as reasons
from .inner import ICMPV6, ipv6_upper_layer

# RFC 792 / RFC 4443 type and code of "destination unreachable, host / address".
ICMPV4 = 1
ICMPV4_UNREACHABLE, ICMPV4_HOST_UNREACHABLE = 3, 1
ICMPV6_UNREACHABLE, ICMPV6_ADDRESS_UNREACHABLE = 1, 3
ICMPV6_REDIRECT = 137  # informational by number, but never answered (RFC 4443 2.4(e.2))
# ICMPv4 messages that are not errors (RFC 792, RFC 950): echo reply, echo,
# router advertisement and solicitation, timestamp, information and address
# mask requests and replies. Anything else, an unknown type too, is taken as
# an error and not answered, as Linux does (icmp_pointers[].error).
ICMPV4_QUERIES = frozenset((0, 8, 9, 10, 13, 14, 15, 16, 17, 18))
# How much of the invoking packet an error quotes: as much as keeps the error
# within 576 bytes for IPv4 (RFC 1812 4.3.2.3) and within the minimum IPv6
# MTU, 1280 bytes (RFC 4443 2.4(c), RFC 8200 5).
IPV4_ERROR_LIMIT = 576
IPV6_ERROR_LIMIT = 1280
TTL = 64  # Linux's default ip_default_ttl and hop_limit
TOS_INTERNETWORK_CONTROL = 0xC0  # precedence 6 for ICMP errors (RFC 1812 4.3.2.5)
# The token bucket per source address: RATE answers a second after a burst
# of BURST, Linux's defaults for its own ICMP errors (net.ipv4.icmp_ratelimit
# and net.ipv6.icmp.ratelimit, 1000 ms a token; XRLIM_BURST_FACTOR 6 in
# net/ipv4/icmp.c).
RATE = 1.0
BURST = 6.0
# At most this many sources are tracked; when full, buckets that have filled
# up again (the same as no bucket) are forgotten, at most once a second, and a
# new source is refused until there is room.
MAX_SOURCES = 1024
PRUNE_INTERVAL = 1.0

_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")


def internet_checksum(data: bytes) -> int:
    """The RFC 1071 checksum: the one's complement of the one's complement sum
    of 16-bit words, an odd byte padded with zero. The sum is the data as one
    integer modulo 0xFFFF, which CPython computes in C."""
    if len(data) % 2:
        data += b"\0"
    return ~(int.from_bytes(data, "big") % 0xFFFF) & 0xFFFF or 0xFFFF


def answerable(packet: bytes) -> bool:
    """Whether an ICMP error may answer ``packet`` at all (RFC 1812 4.3.2.7,
    RFC 4443 2.4(e)): not an ICMP error or redirect, not a non-first
    fragment, not to or from multicast or broadcast, not from an unspecified
    or loopback source. Shared by every ICMP error this core sends."""
    return _v4_answerable(packet) if packet[0] >> 4 == 4 else _v6_answerable(packet)


def _v4_answerable(packet: bytes) -> bool:
    source, destination = packet[12], packet[16]
    if source == 0 or source == 127 or source >= 224 or destination >= 224:
        return False  # "this network", loopback, multicast, class E, broadcast
    if int.from_bytes(packet[6:8], "big") & 0x1FFF:
        return False  # a non-first fragment
    if packet[9] == ICMPV4:
        start = (packet[0] & 0x0F) * 4
        return start < len(packet) and packet[start] in ICMPV4_QUERIES
    return True


def _v6_answerable(packet: bytes) -> bool:
    source = packet[8:24]
    if source[0] == 0xFF or packet[24] == 0xFF or not any(source[:15]) and source[15] <= 1:
        return False  # multicast either way, unspecified (::) or loopback (::1) source
    walked = ipv6_upper_layer(packet)
    if walked is None or walked[2]:
        return False  # a header chain that runs past the packet, or a non-first fragment
    protocol, start, _ = walked
    if protocol == ICMPV6:
        return start < len(packet) and packet[start] >= 128 and packet[start] != ICMPV6_REDIRECT
    return True


class Unreachable:
    """Builds the ICMP destination-unreachable answers of the server.

    ``ipv4`` and ``ipv6`` are the raw source addresses of the answers (the
    server's own tunnel address of each family, 4 and 16 bytes), or None for
    a family the server has none of: its packets are then not answered and
    counted (icmp_no_source_address). An answer to the server's own address
    (a local sender) comes from the unreachable address instead, the one
    source its kernel takes from the TUN device. ``sent`` counts the answers
    built.
    """

    def __init__(self, ipv4: bytes | None, ipv6: bytes | None) -> None:
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self.sent = 0
        self._buckets: dict[bytes, list[float]] = {}  # source -> [tokens, wall-clock Unix seconds of the last look]
        self._pruned = float("-inf")

    def answer(self, packet: bytes, now: float, drops: Counter) -> bytes | None:
        """The ICMP error for ``packet`` (a well-formed IP packet that could not
        be delivered, see inner.well_formed) addressed to its source, or None:
        for a packet never answered, silently; for a family without a source
        address (icmp_no_source_address) or a source over its rate
        (icmp_rate_limited), counted in ``drops``. ``now`` is wall-clock Unix
        seconds; the buckets take a clock stepped back as no time passed."""
        if packet[0] >> 4 == 4:
            if not _v4_answerable(packet):
                return None
            own = self.ipv4
            destination = packet[12:16]
        else:
            if not _v6_answerable(packet):
                return None
            own = self.ipv6
            destination = packet[8:24]
        if own is None:
            drops[reasons.ICMP_NO_SOURCE_ADDRESS] += 1
            return None
        if destination == own:
            # From the server itself: Linux drops a packet that arrives with its
            # own address as the source (a martian, fib_validate_source in
            # net/ipv4/fib_frontend.c), so the unreachable address answers.
            own = packet[16:20] if len(own) == 4 else packet[24:40]
        if not self._allowed(destination, now):
            drops[reasons.ICMP_RATE_LIMITED] += 1
            return None
        self.sent += 1
        if len(own) == 4:
            return self._ipv4_error(own, destination, packet)
        return self._ipv6_error(own, destination, packet)

    def _allowed(self, source: bytes, now: float) -> bool:
        """Take a token from ``source``'s bucket if it has one."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= MAX_SOURCES:
                self._prune(now)
                if len(self._buckets) >= MAX_SOURCES:
                    return False
            self._buckets[source] = [BURST - 1, now]
            return True
        tokens = min(BURST, bucket[0] + max(now - bucket[1], 0.0) * RATE)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1
        return True

    def _prune(self, now: float) -> None:
        """Forget the buckets that are full again; at most once a PRUNE_INTERVAL,
        so that a full table of busy sources does not cost a scan per packet."""
        if now - self._pruned < PRUNE_INTERVAL and now >= self._pruned:
            return
        self._pruned = now
        self._buckets = {source: bucket for source, bucket in self._buckets.items()
                         if bucket[0] + max(now - bucket[1], 0.0) * RATE < BURST}

    @staticmethod
    def _ipv4_error(own: bytes, destination: bytes, packet: bytes) -> bytes:
        message = bytearray((ICMPV4_UNREACHABLE, ICMPV4_HOST_UNREACHABLE, 0, 0, 0, 0, 0, 0))
        message += packet[:IPV4_ERROR_LIMIT - 20 - 8]
        message[2:4] = internet_checksum(bytes(message)).to_bytes(2, "big")
        header = bytearray(_IPV4_HEADER.pack(0x45, TOS_INTERNETWORK_CONTROL, 20 + len(message), 0, 0, TTL, ICMPV4,
                                             0, own, destination))
        header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
        return bytes(header + message)

    @staticmethod
    def _ipv6_error(own: bytes, destination: bytes, packet: bytes) -> bytes:
        message = bytearray((ICMPV6_UNREACHABLE, ICMPV6_ADDRESS_UNREACHABLE, 0, 0, 0, 0, 0, 0))
        message += packet[:IPV6_ERROR_LIMIT - 40 - 8]
        # The pseudo-header (RFC 8200 8.1): addresses, upper-layer length, next header.
        pseudo = own + destination + len(message).to_bytes(4, "big") + bytes((0, 0, 0, ICMPV6))
        message[2:4] = internet_checksum(pseudo + bytes(message)).to_bytes(2, "big")
        return _IPV6_HEADER.pack(6 << 28, len(message), ICMPV6, TTL, own, destination) + bytes(message)
