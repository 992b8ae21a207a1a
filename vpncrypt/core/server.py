"""The server's decisions, without I/O: which client a datagram is from, where a packet goes.

Input: batches of (datagram, address) from the UDP socket and batches of IP
packets from the TUN device, each with ``now``. Output: packets for the TUN
device and (datagram, address) pairs for the socket. Nothing here is answered
that did not authenticate.

Each client tells the server in its path MTU probes the datagram size it has
confirmed to get through both ways (core/pmtu.py, docs/PROTOCOL.md section
8); the server acknowledges each probe with a datagram of the same size, and
keeps what goes to that client, and the MSS of its TCP flows, within it.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from . import Datagrams, Delivery, SavedState
from . import drops as reasons
from .icmp import Unreachable
from .inner import Network, PrefixTable, clamp_mss, well_formed
from .epochs import DEFAULT_EPOCH_SECONDS, SERVER_HOLD_RETRY, KeyTimer
from .filtered import FilteredIds
from .peer import CipherBudget, Peer
from .pmtu import TooBigAnswers, base_size, needs_answer
from .receive import open_datagrams
from .restart import RestartBounds
from .wire import (
    DEFAULT_TIME_WINDOW, KIND_DATA, KIND_PROBE_ACK, MAX_PAYLOAD, OVERHEAD, TO_CLIENT, TO_SERVER, probe_ack_payload,
    seal_time_answer,
)

# The smallest confirmed size a client's probe may set: the base of an IPv6
# underlay (pmtu.base_size), below which no client reports.
MIN_REPORTED = base_size(6)


@dataclass(frozen=True)
class ClientEntry:
    """A client as configured: what the server must know before its first datagram.

    ``addresses`` are the tunnel networks it may send from and that route to it
    (host addresses, or prefixes for a network behind it)."""

    client_id: int
    key: bytes = field(repr=False)  # the key of epoch ``key_epoch`` (epochs.py)
    key_epoch: int
    addresses: tuple[Network, ...]
    name: str = ""


class ServerCore(SavedState):
    """Client table and routing for one server ID.

    ``now`` is Unix seconds (see ``vpncrypt.core``); ``time_window`` seconds a
    timestamp may differ from it; ``restart_bounds`` the bounds saved by the
    previous run (restart.py), or None to keep none, and
    ``restart_state_lost`` that they should exist but do not; ``mtu`` the
    largest inner packet, so a datagram longer than ``mtu`` + 24 bytes is
    dropped (bad_length) before any cipher work; ``epoch_seconds`` the length
    of a key epoch (epochs.py), as the clients have it; ``tunnel`` the
    server's tunnel addresses with their prefixes (the config's ``tunnel``),
    the first of each family being the source of its ICMP errors (none of a
    family: none sent). Raises ValueError for
    a client ID given twice or a key of the wrong length; everything after
    construction is counted in ``drops``, never raised.
    """

    def __init__(
        self,
        server_id: int,
        clients: Iterable[ClientEntry],
        now: float,
        *,
        time_window: int = DEFAULT_TIME_WINDOW,
        client_to_client: bool = False,
        cipher_budget: CipherBudget | None = None,
        restart_bounds: Mapping[int, int] | None = None,
        restart_state_lost: bool = False,
        mtu: int = MAX_PAYLOAD,
        epoch_seconds: int = DEFAULT_EPOCH_SECONDS,
        tunnel: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = (),
    ) -> None:
        self.server_id = server_id
        self.epoch_seconds = epoch_seconds
        self.key_timer = KeyTimer(now, epoch_seconds, retry=SERVER_HOLD_RETRY)
        self.time_window = time_window
        self.max_datagram = mtu + OVERHEAD  # longer ones are refused before any cipher work
        self.mtu = mtu  # TCP SYNs both ways have their MSS clamped to it (every flow passes the server)
        self.client_to_client = client_to_client
        self.drops = reasons.new_counters()
        self.peers: dict[int, Peer] = {}
        self.routes: PrefixTable[Peer] = PrefixTable()
        self._addresses: dict[int, tuple[Network, ...]] = {}
        self.cipher_budget = cipher_budget or CipherBudget()
        self.restart = RestartBounds(restart_bounds, restart_state_lost)
        tunnel = tuple(tunnel)
        # The tunnel networks (True) but the server's own addresses (False): a
        # client's packet to an address there that no client owns has nowhere
        # to go, and is answered here rather than left to the kernel, which
        # drops it without a word if it does not forward.
        self.tunnel: PrefixTable[bool] = PrefixTable()
        for interface in tunnel:
            self.tunnel.add(interface.network, True)
            self.tunnel.hosts[interface.ip.packed] = False
        own = {interface.version: interface.ip.packed for interface in reversed(tunnel)}
        self.unreachable = Unreachable(own.get(4), own.get(6))
        self.filtered = FilteredIds()  # client IDs flooded with forgeries, for the kernel to refuse
        # The effective MTU to each client that has reported one in a probe
        # (the configured ``mtu`` for the others), and the "too big" answers.
        self.path_mtu: dict[Peer, int] = {}
        self.too_big = TooBigAnswers(now)
        self.update_clients(clients, now)
        self.key_timer.advance(self.peers.values(), now)

    def update_clients(self, entries: Iterable[ClientEntry], now: float) -> None:
        """Make ``entries`` the client table, as a live reload needs.

        A client whose key and addresses are unchanged keeps its peer (replay
        window, endpoint, counters; a new name is taken). A removed client is
        gone at once, its cipher context with it. A new, re-keyed or
        re-addressed client starts fresh, refusing anything stamped before
        ``now``. Raises ValueError (and changes nothing) for a client ID given
        twice or a key of the wrong length.
        """
        entries = list(entries)
        peers: dict[int, Peer] = {}
        for entry in entries:
            if entry.client_id in peers:
                raise ValueError(f"client ID {entry.client_id} is configured twice")
            kept = self.peers.get(entry.client_id)
            if (kept is not None and self._addresses.get(entry.client_id) == entry.addresses
                    and kept.keys.same_chain(entry.key, entry.key_epoch)):
                kept.name = entry.name
                peers[entry.client_id] = kept
            else:
                peers[entry.client_id] = peer = Peer(
                    entry.client_id, entry.key, key_epoch=entry.key_epoch, server_id=self.server_id,
                    send_direction=TO_CLIENT, now=now, name=entry.name, budget=self.cipher_budget,
                    time_window=self.time_window, epoch_seconds=self.epoch_seconds,
                )
                self.key_timer.unsaved = True
                self.key_timer.adopt(peer)
                self.restart.start_peer(peer, now)
        routes: PrefixTable[Peer] = PrefixTable()
        for entry in entries:
            routes.add_all(entry.addresses, peers[entry.client_id])
        self.cipher_budget.retain(peers.values())
        self.peers = peers
        self.routes = routes
        kept = set(peers.values())
        self.path_mtu = {peer: mtu for peer, mtu in self.path_mtu.items() if peer in kept}
        self._addresses = {entry.client_id: entry.addresses for entry in entries}

    def datagrams_received(self, datagrams: Iterable[tuple[bytes, Any]], now: float) -> Delivery:
        """Open datagrams from clients; inner packets go to TUN or, client to
        client, back out sealed. What fails a check is counted in ``drops``; a
        packet to an address of the tunnel networks that neither the server nor
        a client owns, or to a client not heard from yet, is answered as in
        ``tun_packets_received``."""
        skewed: list = []
        limited: list[Peer] = []
        probes: list = []
        opened = open_datagrams(
            datagrams, now, direction=TO_SERVER, server_id=self.server_id,
            find_peer=self.peers.get, sources=self.routes,
            time_window=self.time_window, drops=self.drops, unsaved=self.restart.unsaved, held=self.restart.held,
            max_datagram=self.max_datagram, skewed=skewed, limited=limited, probes=probes,
        )
        if limited:
            for peer, count in Counter(limited).items():
                self.filtered.refused(peer.client_id, count, now)
        to_tun: list[bytes] = []
        forward: list[bytes] = []
        hosts_get = self.routes.hosts.get
        longest_match = self.routes.longest_match
        tunnel_lookup = self.tunnel.lookup
        path_mtu = self.path_mtu.get
        mtu = self.mtu
        for sender, packet in opened:
            packet = clamp_mss(packet, path_mtu(sender, mtu))
            # open_datagrams checked the source, so the IP header is whole.
            destination = packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]
            owner = hosts_get(destination)
            if owner is None:
                owner = longest_match(destination)
            if owner is None:
                if tunnel_lookup(destination):
                    forward.append(packet)  # in the tunnel, not the server's, no client's: answered there
                else:
                    to_tun.append(packet)
            elif owner is sender:
                to_tun.append(packet)
            elif self.client_to_client:
                forward.append(packet)
            else:
                self.drops[reasons.CLIENT_TO_CLIENT_DENIED] += 1
        if forward:
            forwarded = self.tun_packets_received(forward, now)
            to_tun += forwarded.to_tun
            to_network = forwarded.to_network
        else:
            to_network = []
        if skewed:
            to_network += self._time_answers(skewed, now)
        if probes:
            to_network += self._probe_acks(probes, now)
        if opened or probes:
            self.key_timer.heard(now)
        return Delivery(to_tun, to_network)

    def _probe_acks(self, probes: list, now: float) -> Datagrams:
        """Take each client's confirmed size (never below MIN_REPORTED nor above
        the configured MTU's) and acknowledge each probe with a datagram of its
        size, to the address it came from."""
        acks: Datagrams = []
        for peer, size, confirmed, address in probes:
            self.path_mtu[peer] = min(max(confirmed, MIN_REPORTED), self.max_datagram) - OVERHEAD
            [ack] = peer.seal(KIND_PROBE_ACK, [probe_ack_payload(size)], now)
            acks.append((ack, address))
        return acks

    def _time_answers(self, skewed: list, now: float) -> Datagrams:
        """Answer authentic datagrams from clients whose clocks are off with the
        server's time, each to the address it came from (the endpoint does not move)."""
        answers: Datagrams = []
        for peer, ts, counter, address in skewed:
            peer.clock_offset, peer.clock_offset_at = ts - now, now
            epoch = ts // peer.epoch_seconds
            aead = peer.contexts.get(epoch) or peer.context_for(epoch)
            answers.append((seal_time_answer(aead, peer.client_id, counter, ts, self.server_id, int(now * 1000)),
                            address))
        return answers

    def tun_packets_received(self, packets: Iterable[bytes], now: float) -> Delivery:
        """Seal packets for the clients that own their destination addresses.

        A packet whose headers do not hold together is counted (tun_malformed).
        A destination nobody owns (no_route), or a client not heard from yet
        (no_endpoint), is counted and answered with ICMP destination
        unreachable (icmp.py) to its source; a packet larger than the
        effective MTU to its client that may not be fragmented
        (pmtu.needs_answer) is counted (packet_too_big) and answered with ICMP
        "too big" (pmtu.py), and TCP SYNs have their MSS clamped to it. An
        answer is sealed to the client that owns its destination (the
        packet's source) if it has an endpoint, else written back to TUN for
        the kernel to deliver."""
        by_peer: dict[Peer, list[bytes]] = {}
        to_tun: list[bytes] = []
        lookup = self.routes.lookup
        path_mtu = self.path_mtu.get
        mtu = self.mtu
        for packet in packets:
            packet = well_formed(packet)
            if packet is None:
                self.drops[reasons.TUN_MALFORMED] += 1
                continue
            destination = packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]
            peer = lookup(destination)
            if peer is not None and peer.endpoint is not None:
                peer_mtu = path_mtu(peer, mtu)
                if len(packet) <= peer_mtu or not needs_answer(packet, peer_mtu):
                    by_peer.setdefault(peer, []).append(clamp_mss(packet, peer_mtu))
                    continue
                self.drops[reasons.PACKET_TOO_BIG] += 1
                error = self.too_big.answer(packet, peer_mtu, now)
            else:
                self.drops[reasons.NO_ROUTE if peer is None else reasons.NO_ENDPOINT] += 1
                error = self.unreachable.answer(packet, now, self.drops)
            if error is not None:
                sender = lookup(error[16:20] if error[0] >> 4 == 4 else error[24:40])
                if sender is not None and sender.endpoint is not None:
                    by_peer.setdefault(sender, []).append(error)
                else:
                    to_tun.append(error)
        out: Datagrams = []
        for peer, batch in by_peer.items():
            endpoint = peer.endpoint
            out.extend((datagram, endpoint) for datagram in peer.seal(KIND_DATA, batch, now))
        return Delivery(to_tun, out)

    def bounds_saved(self, table: Mapping[int, int], now: float) -> Delivery:
        """``table`` from ``bounds_to_save`` is durably written: the datagrams
        that waited for it are opened again."""
        self.restart.saved(table, self.peers)
        held, self.restart.held = self.restart.held, []
        return self.datagrams_received(held, now) if held else Delivery([], [])

    @property
    def filter_version(self) -> int:
        """Changes whenever ``filtered_client_ids`` does."""
        return self.filtered.version

    def saved_peers(self) -> Iterable[Peer]:
        """Every client's peer: the state files keep a bound and a key for each."""
        return self.peers.values()

    def filtered_client_ids(self) -> list[int]:
        """Client IDs whose datagrams the transport should have the kernel drop
        now, sorted (core/filtered.py): a flood of forgeries names them."""
        return self.filtered.client_ids()

    def next_timer(self) -> float | None:
        """When the keys must next move forward, a filtered client ID be let
        go or restart bounds be kept ahead, whichever is first (Unix seconds)."""
        due = self.key_timer.due
        for deadline in (self.filtered.next_expiry(), self.restart.keep_ahead_due):
            if deadline is not None and deadline < due:
                due = deadline
        return due

    def handle_timer(self, now: float) -> Datagrams:
        """Erase the keys ``now`` no longer needs (as far as a client vouches
        for ``now``: epochs.KeyTimer), let go of filtered client
        IDs whose hold ended and keep the restart bounds of clients that paused
        ahead of their clocks (restart.keep_ahead); the server sends nothing
        by itself."""
        self.key_timer.advance(self.peers.values(), now)  # nothing before it is due
        self.filtered.expire(now)
        self.restart.keep_ahead(self.peers, now)
        return []

    def clock_stepped(self, delta: float) -> None:
        """Timers keep their pace in real time: filtered client IDs keep the
        length of their hold, and a client may earn its next time answer
        TIME_ANSWER_INTERVAL after its last, not a step later. (Keys are
        erased only as far as a client vouches for the clock: epochs.KeyTimer.)"""
        for peer in self.peers.values():
            peer.time_answer_due += delta
        self.key_timer.stepped(delta)
        self.filtered.stepped(delta)
        self.restart.stepped(delta)

    def status(self) -> dict[str, Any]:
        """Per client its counters and raw endpoint, the drops and the ICMP
        errors sent; no key material."""
        return {
            "server_id": self.server_id,
            "clients": [dict(peer.status(), path_mtu=self.path_mtu.get(peer, self.mtu))
                        for peer in self.peers.values()],
            "drops": dict(self.drops),
            "icmp_sent": self.unreachable.sent,
            "kernel_filter": self.filter_status(),
        }

    def filter_status(self) -> dict[str, Any]:
        """The client IDs the kernel is asked to refuse (their datagrams are
        not seen, so not counted, while they are), and how often one more did not fit."""
        return {"client_ids": self.filtered.client_ids(), "full": self.filtered.full}
