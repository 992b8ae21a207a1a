"""The server's decisions, without I/O: which client a datagram is from, where a packet goes.

Input: batches of (datagram, address) from the UDP socket and batches of IP
packets from the TUN device, each with ``now``. Output: packets for the TUN
device and (datagram, address) pairs for the socket. Nothing here is answered
that did not authenticate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from . import drops as reasons
from .inner import Network, PrefixTable, destination_address
from .peer import CipherBudget, Peer
from .receive import open_datagrams
from .wire import DEFAULT_TIME_WINDOW, KIND_DATA, TO_CLIENT, TO_SERVER


@dataclass(frozen=True)
class ClientEntry:
    """A client as configured: what the server must know before its first datagram."""

    client_id: int
    key: bytes = field(repr=False)
    addresses: tuple[Network, ...]
    name: str = ""


class Delivery(NamedTuple):
    to_tun: list[bytes]
    to_network: list[tuple[bytes, Any]]


class ServerCore:
    """Client table and routing for one server ID."""

    def __init__(
        self,
        server_id: int,
        clients: Iterable[ClientEntry],
        now: float,
        *,
        time_window: int = DEFAULT_TIME_WINDOW,
        client_to_client: bool = False,
        cipher_budget: CipherBudget | None = None,
    ) -> None:
        self.server_id = server_id
        self.time_window = time_window
        self.client_to_client = client_to_client
        self.drops = reasons.new_counters()
        self.peers: dict[int, Peer] = {}
        self.routes: PrefixTable[Peer] = PrefixTable()
        self.cipher_budget = cipher_budget or CipherBudget()
        for entry in clients:
            if entry.client_id in self.peers:
                raise ValueError(f"client ID {entry.client_id} is configured twice")
            peer = Peer(
                entry.client_id, entry.key, server_id=server_id, send_direction=TO_CLIENT,
                now=now, name=entry.name, budget=self.cipher_budget,
            )
            self.peers[entry.client_id] = peer
            self.routes.add_all(entry.addresses, peer)

    def datagrams_received(self, datagrams: Iterable[tuple[bytes, Any]], now: float) -> Delivery:
        """Open datagrams from clients; inner packets go to TUN or, client to client, back out."""
        opened = open_datagrams(
            datagrams, now, direction=TO_SERVER, server_id=self.server_id,
            find_peer=self.peers.get, sources=self.routes,
            time_window=self.time_window, drops=self.drops,
        )
        to_tun: list[bytes] = []
        forward: list[bytes] = []
        hosts_get = self.routes.hosts.get
        longest_match = self.routes.longest_match
        for sender, packet in opened:
            # open_datagrams checked the source, so the IP header is whole.
            destination = packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]
            owner = hosts_get(destination)
            if owner is None:
                owner = longest_match(destination)
            if owner is None or owner is sender:
                to_tun.append(packet)
            elif self.client_to_client:
                forward.append(packet)
            else:
                self.drops[reasons.CLIENT_TO_CLIENT_DENIED] += 1
        return Delivery(to_tun, self.tun_packets_received(forward, now) if forward else [])

    def tun_packets_received(self, packets: Iterable[bytes], now: float) -> list[tuple[bytes, Any]]:
        """Seal packets for the clients that own their destination addresses."""
        by_peer: dict[Peer, list[bytes]] = {}
        lookup = self.routes.lookup
        for packet in packets:
            destination = destination_address(packet)
            peer = lookup(destination) if destination is not None else None
            if peer is None:
                self.drops[reasons.NO_ROUTE] += 1
            elif peer.endpoint is None:
                self.drops[reasons.NO_ENDPOINT] += 1
            else:
                by_peer.setdefault(peer, []).append(packet)
        out: list[tuple[bytes, Any]] = []
        for peer, batch in by_peer.items():
            endpoint = peer.endpoint
            out.extend((datagram, endpoint) for datagram in peer.seal(KIND_DATA, batch, now))
        return out

    def status(self) -> dict[str, Any]:
        return {
            "server_id": self.server_id,
            "clients": [peer.status() for peer in self.peers.values()],
            "drops": dict(self.drops),
        }
