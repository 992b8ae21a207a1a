"""Inner IP packets: where they go to, which peer owns an address, and checksums left partial.

Addresses are compared as the raw 4 or 16 bytes of the packet, so the common
case (host routes) is one slice and one dict lookup.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Generic, Iterable, TypeVar

Owner = TypeVar("Owner")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# IPv4 version and header length, total length, flags and fragment offset, protocol.
_IPV4_FIXED = struct.Struct("!BxHxxHxB")


def well_formed(packet: bytes) -> bytes | None:
    """``packet`` if its IP and TCP/UDP headers hold together, cut to its IP
    length; None (malformed) if they do not.

    IPv4 (RFC 791): version 4, IHL at least 5, a total length at least the
    header and at most the bytes there. IPv6 (RFC 8200): 40 + payload length
    at most the bytes there; extension headers are walked when the next
    header is not TCP or UDP, and a chain that runs past the packet is
    malformed. Then, for the packet that carries the transport header (not a
    non-first fragment): TCP (RFC 9293) needs its 20 bytes and a data offset of
    5 to 15 words that fits, UDP (RFC 768) its 8 bytes and, unfragmented, a
    length field from 8 to what is there. Bytes after the IP length are
    padding, not data, and are cut off, as wireguard-go does
    (device/receive.go); a packet the same length comes back as it is, type
    and all (a PartialChecksumPacket stays one)."""
    size = len(packet)
    if size >= 28:
        # The fast way through, for nearly every packet: IPv4 without options,
        # carrying TCP or UDP unfragmented or anything else; IPv6 without
        # extension headers, carrying TCP, UDP or ICMPv6; no padding.
        first, end, fragment, protocol = _IPV4_FIXED.unpack_from(packet)
        if first == 0x45 and end == size:
            if protocol != TCP and protocol != UDP:
                return packet  # ICMP and the rest: no transport header is checked
            if not fragment & 0x3FFF:
                if protocol == UDP:
                    return packet if 8 <= (packet[24] << 8 | packet[25]) <= size - 20 else None
                return packet if size >= 40 and 20 <= (packet[32] >> 4) * 4 <= size - 20 else None
        elif first >> 4 == 6 and size >= 48 and (packet[4] << 8 | packet[5]) == size - 40:
            protocol = packet[6]
            if protocol == UDP:
                return packet if 8 <= (packet[44] << 8 | packet[45]) <= size - 40 else None
            if protocol == TCP:
                return packet if size >= 60 and 20 <= (packet[52] >> 4) * 4 <= size - 40 else None
            if protocol == ICMPV6:
                return packet
    elif size < 20:
        return None
    first = packet[0]
    if first >> 4 == 4:
        start = (first & 0x0F) * 4
        end = packet[2] << 8 | packet[3]
        if start < 20 or end < start or end > size:
            return None
        protocol = packet[9]
        fragment = packet[6] << 8 | packet[7]
        if fragment & 0x1FFF:
            protocol = 0  # a non-first fragment: no transport header to check
        fragmented = fragment & 0x3FFF
    elif first >> 4 == 6 and size >= 40:
        end = 40 + (packet[4] << 8 | packet[5])
        if end > size:
            return None
        protocol, start, fragmented = packet[6], 40, 0
        if protocol != TCP and protocol != UDP:
            walked = ipv6_upper_layer(packet[:end])
            if walked is None:
                return None
            protocol, start, fragmented = walked
            if fragmented:
                protocol = 0  # a non-first fragment
            elif start > 40 and _has_fragment_header(packet):
                fragmented = 1  # a first fragment: the transport length covers all of them
    else:
        return None
    if protocol == TCP:
        if start + 20 > end or not 20 <= (packet[start + 12] >> 4) * 4 <= end - start:
            return None
    elif protocol == UDP:
        if start + 8 > end:
            return None
        if not fragmented and not 8 <= (packet[start + 4] << 8 | packet[start + 5]) <= end - start:
            return None
    if end == size:
        return packet
    return packet[:end] if type(packet) is bytes else type(packet)(packet[:end])


class PartialChecksumPacket(bytes):
    """An IP packet whose TCP or UDP checksum field holds only the folded pseudo-header sum.

    A kernel with checksum offload hands such packets over and takes them back
    (NEEDS_CSUM); they travel as KIND_DATA_PARTIAL so that a receiver without
    offload knows to finish the checksum (``complete_checksum``).
    """

    __slots__ = ()


def ip_end(packet: bytes) -> int:
    """Where the IP packet ends by its own length field (RFC 791 total length;
    RFC 8200 40 + payload length), bytes after it being padding, not data."""
    if packet[0] >> 4 == 4:
        return int.from_bytes(packet[2:4], "big")
    return 40 + int.from_bytes(packet[4:6], "big")


def checksum_location(packet: bytes) -> tuple[int, int] | None:
    """(start of the TCP/UDP header, offset of its checksum field), or None for
    anything else: not TCP or UDP, an IPv4 header shorter than 20 bytes (IHL
    below 5), an IPv4 fragment (which carries no whole segment to sum), or a
    length field that disagrees with the bytes there."""
    size = len(packet)
    if not size:
        return None
    version = packet[0] >> 4
    if version == 4 and size >= 20:
        start, protocol = (packet[0] & 0x0F) * 4, packet[9]
        if start < 20 or int.from_bytes(packet[6:8], "big") & 0x3FFF:  # MF flag or fragment offset
            return None
    elif version == 6 and size >= 40:
        start, protocol = 40, packet[6]
        if protocol != 6 and protocol != 17:
            walked = ipv6_upper_layer(packet)  # past extension headers
            if walked is None or walked[2] or walked[1] > 40 and _has_fragment_header(packet):
                return None  # malformed, or a fragment: no whole segment to sum
            protocol, start, _ = walked
    else:
        return None
    offset = 16 if protocol == 6 else 6 if protocol == 17 else None
    if offset is None or start + offset + 2 > min(size, ip_end(packet)) or ip_end(packet) > size:
        return None
    return start, offset


def complete_checksum(packet: bytes, location: tuple[int, int] | None = None) -> bytes:
    """Finish a partial TCP/UDP checksum in software, as a NIC would; ``location``
    (start of the summed part, offset of the field) if not the usual one.

    The field already holds the pseudo-header sum, so summing the whole
    segment with it and complementing gives the checksum. The one's complement
    sum is the segment as one big integer modulo 0xFFFF, which CPython does in C.
    """
    location = location or checksum_location(packet)
    if location is None:
        return bytes(packet)
    start, offset = location
    segment = packet[start:ip_end(packet)]  # not the padding after the IP length
    if len(segment) % 2:
        segment += b"\0"
    checksum = ~(int.from_bytes(segment, "big") % 0xFFFF) & 0xFFFF  # never 0: a zero sum is 0xFFFF
    if checksum == 0xFFFF and offset == TCP_CHECKSUM_OFFSET:
        checksum = 0  # the same checksum (RFC 1071), as the kernel's csum_fold writes it; UDP keeps
        #               0xFFFF, since 0 there means no checksum (RFC 768)
    field = start + offset
    return packet[:field] + checksum.to_bytes(2, "big") + packet[field + 2:]


# IANA protocol numbers.
TCP = 6
UDP = 17
ICMPV6 = 58
TCP_CHECKSUM_OFFSET = 16  # in the TCP header (RFC 9293); UDP's is 6
TCP_SYN = 0x02
TCP_OPTION_END, TCP_OPTION_NOP, TCP_OPTION_MSS = 0, 1, 2
# RFC 6691: an MSS is the MTU less the fixed IP and TCP headers, options not counted.
MSS_OVERHEAD = {4: 40, 6: 60}
# IPv6 extension headers that carry (next header, length in 8-octet units less one).
IPV6_EXTENSIONS = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
IPV6_FRAGMENT = 44
MAX_IPV6_EXTENSIONS = 8  # more is not a packet anyone sends (RFC 8200 limits each kind to one or two)


def ipv6_upper_layer(packet: bytes) -> tuple[int, int, int] | None:
    """(upper-layer protocol, where its header starts, fragment offset in bytes)
    of an IPv6 packet, past hop-by-hop, routing, destination options and
    fragment headers (RFC 8200, 4.1); or None if a header runs past the
    packet or there are too many. A non-first fragment (offset > 0) carries
    no upper-layer header: the protocol is then what its first fragment carries."""
    size = len(packet)
    if size < 40:
        return None
    protocol, start, fragment_offset = packet[6], 40, 0
    for _ in range(MAX_IPV6_EXTENSIONS):
        if protocol in IPV6_EXTENSIONS:
            if start + 8 > size:
                return None
            protocol, start = packet[start], start + (packet[start + 1] + 1) * 8
        elif protocol == IPV6_FRAGMENT:
            if start + 8 > size:
                return None
            fragment_offset = int.from_bytes(packet[start + 2:start + 4], "big") & 0xFFF8
            protocol, start = packet[start], start + 8
        else:
            return (protocol, start, fragment_offset) if start <= size else None
    return None


def _has_fragment_header(packet: bytes) -> bool:
    """Whether an IPv6 packet's extension headers include a fragment header
    with more fragments to follow (a first fragment)."""
    protocol, start = packet[6], 40
    for _ in range(MAX_IPV6_EXTENSIONS):
        if protocol == IPV6_FRAGMENT:
            return bool(packet[start + 3] & 1)
        if protocol not in IPV6_EXTENSIONS:
            return False
        protocol, start = packet[start], start + (packet[start + 1] + 1) * 8
    return False


def _tcp_start(packet: bytes) -> int | None:
    """Where the TCP header of an unfragmented (or first-fragment-free) TCP
    packet starts, with 20 bytes of it there; None for anything else."""
    size = len(packet)
    if size < 40:
        return None
    version = packet[0] >> 4
    if version == 4:
        start = (packet[0] & 0x0F) * 4
        if packet[9] != TCP or start < 20 or int.from_bytes(packet[6:8], "big") & 0x3FFF:
            return None
    elif version == 6:
        if packet[6] == TCP:
            start = 40
        else:
            walked = ipv6_upper_layer(packet)
            if walked is None or walked[0] != TCP or walked[2]:
                return None
            start = walked[1]
    else:
        return None
    return start if start + 20 <= size else None


def _checksum_adjusted(checksum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 (eqn. 3): HC' = ~(~HC + ~m + m'), over the 16-bit words of
    ``old`` replaced by ``new`` (even-aligned within the summed data)."""
    total = ~checksum & 0xFFFF
    for index in range(0, len(old), 2):
        total += (~int.from_bytes(old[index:index + 2], "big") & 0xFFFF) + int.from_bytes(new[index:index + 2], "big")
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def clamp_mss(packet: bytes, mtu: int) -> bytes:
    """``packet`` with the MSS option of a TCP SYN (or SYN-ACK) lowered to what
    fits an ``mtu``-byte tunnel (``mtu`` less 40 for IPv4, 60 for IPv6), as
    OpenVPN's mssfix does, so that neither end sends segments the tunnel must
    fragment; anything else is returned as it is, and cheaply.

    The TCP checksum is updated incrementally (RFC 1624), so a wrong one stays
    wrong; a PartialChecksumPacket keeps its type and its field (the pseudo-
    header sum there does not cover the options). IPv6 extension headers are
    walked; fragments are left alone."""
    if len(packet) < 40:
        return packet
    version = packet[0] >> 4
    # The fast way out, for every packet that is not a plain SYN: protocol and flags.
    if version == 4:
        if packet[9] != TCP or packet[0] == 0x45 and not packet[33] & TCP_SYN:
            return packet
    elif version == 6:
        if packet[6] == TCP and (len(packet) < 60 or not packet[53] & TCP_SYN):
            return packet
    else:
        return packet
    start = _tcp_start(packet)
    if start is None or not packet[start + 13] & TCP_SYN:
        return packet
    end = min(start + (packet[start + 12] >> 4) * 4, len(packet))
    limit = mtu - MSS_OVERHEAD[version]
    option = start + 20
    while option < end:
        kind = packet[option]
        if kind == TCP_OPTION_END:
            break
        if kind == TCP_OPTION_NOP:
            option += 1
            continue
        if option + 1 >= end or packet[option + 1] < 2:
            break  # a malformed option list: leave it
        length = packet[option + 1]
        if kind == TCP_OPTION_MSS and length == 4 and option + 4 <= end:
            field = option + 2
            if int.from_bytes(packet[field:field + 2], "big") <= limit:
                return packet
            clamped = bytearray(packet)
            clamped[field:field + 2] = limit.to_bytes(2, "big")
            if type(packet) is PartialChecksumPacket:
                return PartialChecksumPacket(clamped)
            # The words that changed, aligned to the TCP header (an option may start at an odd offset).
            first = field - (field - start) % 2
            last = field + 2 + (field + 2 - start) % 2
            checksum_field = start + 16
            checksum = _checksum_adjusted(int.from_bytes(packet[checksum_field:checksum_field + 2], "big"),
                                          bytes(packet[first:last]), bytes(clamped[first:last]))
            clamped[checksum_field:checksum_field + 2] = checksum.to_bytes(2, "big")
            return bytes(clamped)
        option += length
    return packet


REMEMBERED_ADDRESSES = 4096


class PrefixTable(Generic[Owner]):
    """Longest-prefix match from raw addresses to owners; host routes in O(1)."""

    def __init__(self) -> None:
        self.hosts: dict[bytes, Owner] = {}
        # (address length, prefix length, network as int, mask as int, owner),
        # longest prefix first.
        self._prefixes: list[tuple[int, int, int, int, Owner]] = []
        # Answers of the prefix search, by address: a client's one prefix route
        # (the whole tunnel) is searched for every packet otherwise. The
        # compiled path (vpncrypt/_batch.c) looks here before it calls
        # longest_match: the dict is cleared, never replaced.
        self.remembered: dict[bytes, Owner | None] = {}

    def add(self, network: Network, owner: Owner) -> None:
        """Route ``network`` to ``owner``; a later equal prefix does not replace an earlier one."""
        if network.prefixlen == network.max_prefixlen:
            self.hosts[network.network_address.packed] = owner
            return
        entry = (
            network.max_prefixlen // 8,
            network.prefixlen,
            int(network.network_address),
            int(network.netmask),
            owner,
        )
        self._prefixes.append(entry)
        self._prefixes.sort(key=lambda e: e[1], reverse=True)
        self.remembered.clear()

    def add_all(self, networks: Iterable[Network], owner: Owner) -> None:
        """``add`` each of ``networks``."""
        for network in networks:
            self.add(network, owner)

    def lookup(self, address: bytes) -> Owner | None:
        """The owner of the longest route holding ``address`` (4 or 16 raw bytes), or None."""
        owner = self.hosts.get(address)
        if owner is not None:
            return owner
        return self.longest_match(address)

    def longest_match(self, address: bytes) -> Owner | None:
        """The owner of the longest prefix route that holds ``address``; host routes
        are not searched (hot paths look in ``hosts`` first themselves)."""
        if not self._prefixes:
            return None
        try:
            return self.remembered[address]
        except KeyError:
            pass
        size = len(address)
        value = int.from_bytes(address, "big")
        owner = None
        for length, _, network, mask, candidate in self._prefixes:
            if length == size and value & mask == network:
                owner = candidate
                break
        if len(self.remembered) >= REMEMBERED_ADDRESSES:
            self.remembered.clear()  # bounded, whatever the addresses seen
        self.remembered[address] = owner
        return owner
