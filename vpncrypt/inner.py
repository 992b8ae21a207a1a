"""Inner IP packets: where they go to, and which peer owns an address.

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


class PrefixTable(Generic[Owner]):
    """Longest-prefix match from raw addresses to owners; host routes in O(1)."""

    def __init__(self) -> None:
        self.hosts: dict[bytes, Owner] = {}
        # (address length, prefix length, network as int, mask as int, owner),
        # longest prefix first.
        self._prefixes: list[tuple[int, int, int, int, Owner]] = []

    def add(self, network: Network, owner: Owner) -> None:
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

    def add_all(self, networks: Iterable[Network], owner: Owner) -> None:
        for network in networks:
            self.add(network, owner)

    def lookup(self, address: bytes) -> Owner | None:
        owner = self.hosts.get(address)
        if owner is not None or not self._prefixes:
            return owner
        size = len(address)
        value = int.from_bytes(address, "big")
        for length, _, network, mask, candidate in self._prefixes:
            if length == size and value & mask == network:
                return candidate
        return None
