"""Inner IP packets: where they go to, which peer owns an address, and checksums left partial.

Addresses are compared as the raw 4 or 16 bytes of the packet, so the common
case (host routes) is one slice and one dict lookup.
"""

from __future__ import annotations

import ipaddress
from typing import Generic, Iterable, TypeVar

Owner = TypeVar("Owner")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def destination_address(packet: bytes) -> bytes | None:
    """The raw destination address of an IPv4 or IPv6 packet, or None if malformed."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return packet[16:20]
    if version == 6 and len(packet) >= 40:
        return packet[24:40]
    return None


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
    checksum = ~(int.from_bytes(segment, "big") % 0xFFFF) & 0xFFFF or 0xFFFF
    field = start + offset
    return packet[:field] + checksum.to_bytes(2, "big") + packet[field + 2:]


REMEMBERED_ADDRESSES = 4096


class PrefixTable(Generic[Owner]):
    """Longest-prefix match from raw addresses to owners; host routes in O(1)."""

    def __init__(self) -> None:
        self.hosts: dict[bytes, Owner] = {}
        # (address length, prefix length, network as int, mask as int, owner),
        # longest prefix first.
        self._prefixes: list[tuple[int, int, int, int, Owner]] = []
        # Answers of the prefix search, by address: a client's one prefix route
        # (the whole tunnel) is searched for every packet otherwise.
        self._remembered: dict[bytes, Owner | None] = {}

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
        self._remembered.clear()

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
            return self._remembered[address]
        except KeyError:
            pass
        size = len(address)
        value = int.from_bytes(address, "big")
        owner = None
        for length, _, network, mask, candidate in self._prefixes:
            if length == size and value & mask == network:
                owner = candidate
                break
        if len(self._remembered) >= REMEMBERED_ADDRESSES:
            self._remembered.clear()  # bounded, whatever the addresses seen
        self._remembered[address] = owner
        return owner
