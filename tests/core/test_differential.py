"""The batch opener against the reference, datagram by datagram.

``vpncrypt.core.receive.open_datagrams``, as ServerCore and ClientCore call it (their
own call, watched), inlines its checks for speed; here it must decide exactly what
docs/PROTOCOL.md (version 2) section 5 decides, as assembled from the reference parts:
``wire.open_datagram`` for length, kind, time and authentication, with the key of the
timestamp's epoch from ``epochs.epoch_key`` (section 1.1), a ``replay.ReplayWindow``
driven only through ``check`` and ``commit``, and the checks on the inner packet
(step 10) written out with ``ipaddress``. The same datagrams go to both: each must be
accepted with the same payload (and the same partial-checksum mark) or dropped for the
same reason, endpoints must move alike, and a server must pick the same datagrams to
answer with its time.

Version 2's rules that are not in ``wire.open_datagram`` the reference states itself:

- A client takes time answers (kind 0x24) aside before any check (sections 5, 7.1):
  they never reach open_datagrams. What the client makes of them is
  test_time_answer.py's; here it must only count each, once.
- Step 4 on a server (section 7.1): a datagram from a known client outside the time
  window, whose epoch's key the server holds, is authenticated at most once per
  TIME_ANSWER_INTERVAL per client, and only with failure credit left. If authentic it
  is answered (and still dropped, outside_time_window, the endpoint unmoved); if not,
  it counts as auth_failed and spends credit.
- Step 6, the failure budget: a token bucket per client ID, FAILURE_BURST failures at
  once, then FAILURE_RATE a second, spent by every authentication failure, the time
  answer's too. An ID without credit has its datagrams refused unopened
  (auth_failures_limited), after the replay window and before the cipher.
- Path MTU probes (section 8): a server takes probes (0x25), a client their
  acknowledgements (0x26); after step 9, one whose probed size (its first two
  bytes) is not its datagram's length is bad_probe; any other is accepted and
  delivers nothing.
- Step 7: an epoch whose key the receiver no longer holds (its configured key is of a
  later epoch, or the key of ``start - 512``'s epoch replaced it) is
  outside_time_window.

Single datagrams go to fresh receivers, started long before, so that their replay
windows accept whatever the time window lets through; sequences go to one receiver,
with a clock that does not go back (a clock stepped back is test_clock_steps.py's,
and the budget's refill across one too). The cores keep no restart state here, and
no key timer runs: a receiver holds the keys it started with.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections import Counter
from typing import Any, NamedTuple
from unittest import mock

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import given, settings
from hypothesis import strategies as st

from vpncrypt.core import client as client_module
from vpncrypt.core import drops as reasons
from vpncrypt.core import server as server_module
from vpncrypt.core.client import ClientCore
from vpncrypt.core.epochs import DEFAULT_EPOCH_SECONDS, epoch_key, next_epoch_key
from vpncrypt.core.inner import PartialChecksumPacket
from vpncrypt.core.peer import FAILURE_BURST, FAILURE_RATE
from vpncrypt.core.receive import TIME_ANSWER_INTERVAL, open_datagrams
from vpncrypt.core.replay import REORDERED, REPLAYED, SUPERSEDED, TOO_OLD, WINDOW, ReplayWindow
from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.core.wire import (
    DEFAULT_TIME_WINDOW, KIND_DATA, KIND_DATA_PARTIAL, KIND_KEEPALIVE, KIND_PROBE, KIND_PROBE_ACK, KIND_TIME_ANSWER,
    KINDS, MAX_DATAGRAM, OVERHEAD, TIME_ANSWER_PAYLOAD, TIMESTAMP_MOD, TO_CLIENT, TO_SERVER, VERSION_1_KINDS, Rejected,
    decode_header, open_datagram, seal_datagram,
)

from tests.builders import (
    A_ADDR, B_ADDR, CHANGE, KEY_A, KEY_B, KEY_EPOCH, LATE_ARRIVALS, MASK, NOW, SERVER_ADDR, SERVER_EP, SERVER_ID,
    changed, epoch_cipher, ipv4_packet, ipv6_packet, long_run_with_late_arrivals, net, seal, sender, spec_rebuild,
    spec_replay, spec_vectors, tcp, udp,
)

START = NOW - 1000  # receivers start long before: their floor refuses nothing the time window lets in
CLIENTS = (
    ClientEntry(1, KEY_A, KEY_EPOCH, (net(A_ADDR + "/32"), net("2001:db8::2/128")), "a"),
    ClientEntry(2, KEY_B, KEY_EPOCH, (net(B_ADDR + "/32"), net("2001:db8:b::/64")), "b"),
)
ROUTES = (net("203.0.113.0/24"), net("2001:db8::/32"))  # where a client lets its server send from
OTHER_KEY = os.urandom(64)
SOURCE = ("192.0.2.10", 40000)
DIRECTIONS = pytest.mark.parametrize("direction", [TO_SERVER, TO_CLIENT], ids=["to server", "to client"])

ACCEPTED, DROPPED = "accepted", "dropped"
ASIDE = ("aside",)  # the verdict on a time answer to a client: taken aside, never opened here
# The cores open with each AES-SIV class in turn; the reference always with cryptography's.
pytestmark = pytest.mark.usefixtures("each_cipher")
WINDOW_DROPS = {REPLAYED: reasons.REPLAYED, TOO_OLD: reasons.COUNTER_TOO_OLD, SUPERSEDED: reasons.SUPERSEDED}


class CipherReached(Exception):
    """The reference passed every check before the cipher; carries the AD it built."""


class NoCipher:
    def decrypt(self, data, associated_data):
        raise CipherReached(associated_data[0])


class Reference:
    """A receiver as docs/PROTOCOL.md section 5 lists its checks, from the reference parts.

    ``owned``: client ID -> (key, the epoch of that key, networks it may send from). A
    server moves a client's endpoint to where its newest datagram came from, and
    answers a client whose clock is off; a client keeps its server's address from the
    config (``follow_source``) and takes time answers aside. ``max_datagram``: the
    cores refuse datagrams longer than their MTU + 24 as bad_length too.
    ``answers``: (client ID, timestamp, counter, address) of each datagram a server
    answered with its time, in order."""

    def __init__(self, direction: int, server_id: int, owned: dict, start: float, time_window: int,
                 endpoints: dict, max_datagram: int, epoch_seconds: int) -> None:
        self.direction, self.server_id, self.time_window = direction, server_id, time_window
        self.is_server = self.follow_source = direction == TO_SERVER
        self.max_datagram, self.epoch_seconds = max_datagram, epoch_seconds
        self.keys = {client_id: (key, key_epoch) for client_id, (key, key_epoch, _) in owned.items()}
        # 1.1: an end holds the key of the epoch of now - 512 (at start) and derives later ones;
        # a key configured for a later epoch is all it has.
        erased_before = (int(start) - TIMESTAMP_MOD // 2) // epoch_seconds
        self.oldest = {client_id: max(key_epoch, erased_before) for client_id, (_, key_epoch) in self.keys.items()}
        self.windows = {client_id: ReplayWindow(floor=int(start) + 1) for client_id in owned}
        self.sources = [(network, client_id) for client_id, (_, _, networks) in owned.items() for network in networks]
        self.endpoints = dict(endpoints)
        self.credit = {client_id: float(FAILURE_BURST) for client_id in owned}
        self.credit_time = {client_id: start for client_id in owned}
        self.answer_due = {client_id: float("-inf") for client_id in owned}
        self.answers: list[tuple] = []

    def _open(self, cipher, datagram: bytes, now: float, time_window: int):
        return open_datagram(cipher, datagram, direction=self.direction, server_id=self.server_id, now=now,
                             time_window=time_window)

    def cipher(self, client_id: int, ts: int) -> AESSIV | None:
        """The context of ``ts``'s epoch, or None if this receiver has erased its key."""
        epoch = ts // self.epoch_seconds
        if epoch < self.oldest[client_id]:
            return None
        return epoch_cipher(*self.keys[client_id], epoch)

    def credit_left(self, client_id: int, now: float) -> bool:
        """6: the bucket, refilled for the time since it was last looked at, holds a failure."""
        earned = max(0.0, now - self.credit_time[client_id]) * FAILURE_RATE
        self.credit[client_id] = min(float(FAILURE_BURST), self.credit[client_id] + earned)
        self.credit_time[client_id] = now
        return self.credit[client_id] >= 1

    def offer(self, datagram: bytes, address: Any, now: float) -> tuple:
        # 0: a client takes time answers aside first, whatever their length.
        if not self.is_server and datagram and datagram[0] >> 2 == KIND_TIME_ANSWER:
            return ASIDE
        # 1: length, the MTU's bound included.
        if len(datagram) > self.max_datagram:
            return DROPPED, reasons.BAD_LENGTH
        # 1, 2: length and kind (old_version for version 1's). The reference checks time
        # next, but the client ID comes first (3): ask it with a window no rebuilt
        # timestamp is outside of (they lie within 512 s of now) and a cipher it must
        # not get to; the AD it would have used holds the full timestamp.
        try:
            self._open(NoCipher(), datagram, now, TIMESTAMP_MOD // 2)
        except Rejected as rejected:
            return DROPPED, rejected.reason
        except CipherReached as reached:
            ts = int.from_bytes(reached.args[0][13:21], "big")
        header = decode_header(datagram)
        client_id = header.client_id
        if client_id not in self.windows:
            return DROPPED, reasons.UNKNOWN_CLIENT
        # 4: time, still without the cipher.
        try:
            self._open(NoCipher(), datagram, now, self.time_window)
        except Rejected as rejected:
            assert rejected.reason == reasons.OUTSIDE_TIME_WINDOW
            return DROPPED, self.time_answer(datagram, ts, address, now, reasons.OUTSIDE_TIME_WINDOW)
        except CipherReached:
            pass
        # 5: the replay window, checked without changing it.
        window = self.windows[client_id]
        verdict = window.check(ts, header.counter)
        if verdict in (SUPERSEDED, TOO_OLD):  # a peer behind in time may learn the time too
            return DROPPED, self.time_answer(datagram, ts, address, now, WINDOW_DROPS[verdict])
        if verdict < 0:
            return DROPPED, WINDOW_DROPS[verdict]
        # 6: the failure budget.
        if not self.credit_left(client_id, now):
            return DROPPED, reasons.AUTH_FAILURES_LIMITED
        # 7: authenticate and decrypt, with the key of the timestamp's epoch.
        cipher = self.cipher(client_id, ts)
        if cipher is None:
            return DROPPED, reasons.OUTSIDE_TIME_WINDOW
        try:
            _, opened_ts, payload = self._open(cipher, datagram, now, self.time_window)
        except Rejected as rejected:
            assert rejected.reason == reasons.AUTH_FAILED
            self.credit[client_id] -= 1
            return DROPPED, rejected.reason
        assert opened_ts == ts
        # 8: no restart state here. 9: only now, state; the newest datagram moves the endpoint.
        window.commit(ts, header.counter, verdict)
        if verdict != REORDERED and self.follow_source:
            self.endpoints[client_id] = address
        if header.kind == KIND_KEEPALIVE:
            return ACCEPTED, b"", False
        if header.kind in (KIND_PROBE, KIND_PROBE_ACK):
            fields = struct.unpack_from("!HH" if header.kind == KIND_PROBE else "!H", payload) + (0,)
            if fields[0] != len(datagram):
                return DROPPED, reasons.BAD_PROBE
            return ACCEPTED, b"", False
        partial = header.kind == KIND_DATA_PARTIAL
        reason = self.inner_reason(payload, client_id, partial)
        return (DROPPED, reason) if reason else (ACCEPTED, reference_well_formed(payload), partial)

    def time_answer(self, datagram: bytes, ts: int, address: Any, now: float, reason: str) -> str:
        """4 and 5, on a server (section 7.1): the drop reason of a datagram outside the
        time window or below the restart floor (``reason``), perhaps authenticated
        first, and answered if authentic."""
        header = decode_header(datagram)
        client_id = header.client_id
        if not self.is_server or now < self.answer_due[client_id]:
            return reason
        cipher = self.cipher(client_id, ts)
        if cipher is None or not self.credit_left(client_id, now):
            return reason
        self.answer_due[client_id] = now + TIME_ANSWER_INTERVAL
        try:
            # As a receiver whose clock read ts would open it: the rebuilt timestamp in the AD.
            self._open(cipher, datagram, ts, 0)
        except Rejected as rejected:
            assert rejected.reason == reasons.AUTH_FAILED
            self.credit[client_id] -= 1
            return reasons.AUTH_FAILED
        self.answers.append((client_id, ts, header.counter, address))
        return reason

    def inner_reason(self, packet: bytes, client_id: int, partial: bool) -> str | None:
        """10: a well-formed IPv4 or IPv6 packet (``reference_well_formed``) from an
        address the sender owns (the longest prefix decides). For the
        partial-checksum kind (section 2, and inner.checksum_location), TCP or UDP
        right after an IP header of at least 20 bytes, whole: not a fragment, and
        past the checksum field."""
        packet = reference_well_formed(packet)
        if packet is None:
            return reasons.INNER_MALFORMED
        version = packet[0] >> 4
        if version == 4:
            source, start, protocol = ipaddress.IPv4Address(packet[12:16]), (packet[0] & 0x0F) * 4, packet[9]
        else:
            source, start, protocol = ipaddress.IPv6Address(packet[8:24]), 40, packet[6]
        owners = sorted((network.prefixlen, owner) for network, owner in self.sources if source in network)
        if not owners or owners[-1][1] != client_id:
            return reasons.INNER_SOURCE_NOT_ALLOWED
        if partial:
            field = {6: 16, 17: 6}.get(protocol)
            fragment = int.from_bytes(packet[6:8], "big") & 0x3FFF if version == 4 else 0
            if field is None or start < 20 or fragment or start + field + 2 > len(packet):
                return reasons.INNER_MALFORMED
        return None


def reference_well_formed(packet: bytes) -> bytes | None:
    """Section 5, step 10, written out apart from inner.well_formed: the packet cut
    to its IP length, or None. IPv4: version 4, a header of 20 bytes or more,
    total length from the header's to the bytes there. IPv6: 40 + payload length
    at most the bytes there; hop-by-hop (0), routing (43), destination options
    (60) and fragment (44) headers walked, at most 8, all within that length.
    Then the transport header, unless the packet is a fragment other than the
    first: TCP (6) 20 bytes with a data offset of 5 words or more within the
    packet; UDP (17) 8 bytes, and, in an unfragmented packet, a length field
    from 8 to the bytes after the IP headers."""
    if len(packet) < 20 or packet[0] >> 4 not in (4, 6):
        return None
    if packet[0] >> 4 == 4:
        header, length = (packet[0] & 0x0F) * 4, int.from_bytes(packet[2:4], "big")
        if header < 20 or not header <= length <= len(packet):
            return None
        packet = packet[:length]
        flags_offset = int.from_bytes(packet[6:8], "big")
        later_fragment, fragmented = flags_offset & 0x1FFF != 0, flags_offset & 0x3FFF != 0
        protocol = packet[9]
    else:
        if len(packet) < 40 or 40 + int.from_bytes(packet[4:6], "big") > len(packet):
            return None
        packet = packet[:40 + int.from_bytes(packet[4:6], "big")]
        protocol, header, later_fragment, fragmented, hops = packet[6], 40, False, False, 0
        while protocol in (0, 43, 60, 44):
            hops += 1
            if hops > 8 or header + 8 > len(packet):
                return None
            if protocol == 44:
                fragmented = True
                later_fragment = later_fragment or int.from_bytes(packet[header + 2:header + 4], "big") >> 3 != 0
                protocol, header = packet[header], header + 8
            else:
                protocol, header = packet[header], header + 8 * (packet[header + 1] + 1)
            if header > len(packet):
                return None
    if later_fragment:
        return packet
    rest = len(packet) - header
    if protocol == 6 and (rest < 20 or not 20 <= 4 * (packet[header + 12] >> 4) <= rest):
        return None
    if protocol == 17 and (rest < 8 or not fragmented
                           and not 8 <= int.from_bytes(packet[header + 4:header + 6], "big") <= rest):
        return None
    return packet


class Opened(NamedTuple):
    """One call of open_datagrams: how many datagrams it was given, what it delivered,
    (payload, partial mark) in order, what it counted, and which datagrams it picked to
    answer with the server's time, (client ID, timestamp, counter, address)."""

    offered: int
    delivered: list
    counted: Counter
    answered: list


CALLS: list[Opened] = []


def watched_open_datagrams(datagrams: Any, *args: Any, **kwargs: Any) -> list:
    datagrams = list(datagrams)
    drops, skewed = kwargs["drops"], kwargs.get("skewed")
    before, answers_before = Counter(drops), len(skewed) if skewed is not None else 0
    opened = open_datagrams(datagrams, *args, **kwargs)
    answered = [(peer.client_id, ts, counter, address)
                for peer, ts, counter, address in (skewed or [])[answers_before:]]
    delivered = [(bytes(packet), type(packet) is PartialChecksumPacket) for _, packet in opened]
    CALLS.append(Opened(len(datagrams), delivered, drops - before, answered))
    return opened


@pytest.fixture(scope="module", autouse=True)
def watch_the_cores():
    """Both cores call open_datagrams through the watcher while this module's tests run."""
    with mock.patch.object(server_module, "open_datagrams", watched_open_datagrams), \
            mock.patch.object(client_module, "open_datagrams", watched_open_datagrams):
        yield


class Receivers:
    """A core, whose call of open_datagrams is watched, and the reference, configured
    alike. To the server: ``clients``; to a client: the one entry of ``clients`` is
    that client, and its server may send from ROUTES."""

    def __init__(self, direction: int, *, clients: tuple = (), server_id: int = SERVER_ID, start: float = START,
                 time_window: int = DEFAULT_TIME_WINDOW, epoch_seconds: int = DEFAULT_EPOCH_SECONDS,
                 **options: Any) -> None:
        if direction == TO_SERVER:
            clients = clients or CLIENTS
            self.core = ServerCore(server_id, clients, start, time_window=time_window, epoch_seconds=epoch_seconds,
                                   **options)
            owned = {entry.client_id: (entry.key, entry.key_epoch, entry.addresses) for entry in clients}
        else:
            [entry] = clients or CLIENTS[:1]
            self.core = ClientCore(entry.client_id, entry.key, key_epoch=entry.key_epoch, server_id=server_id,
                                   server_endpoint=SERVER_EP, routes=ROUTES, now=start, time_window=time_window,
                                   epoch_seconds=epoch_seconds, **options)
            owned = {entry.client_id: (entry.key, entry.key_epoch, ROUTES)}
        self.reference = Reference(direction, server_id, owned, start, time_window, self.endpoints(),
                                   self.core.max_datagram, epoch_seconds)
        self.answered: list = []  # what the last same_verdict was answered with

    def endpoints(self) -> dict:
        core = self.core
        peers = core.peers if isinstance(core, ServerCore) else {core.server.client_id: core.server}
        return {client_id: peer.endpoint for client_id, peer in peers.items()}

    def batch(self, datagrams: list, now: float) -> Opened:
        """What the core's one call of open_datagrams was given, delivered, counted and
        picked to answer; what the core does with them after (routing, sealing the
        answers) is not looked at."""
        CALLS.clear()
        self.core.datagrams_received(datagrams, now)
        [call] = CALLS
        return call

    def reference_batch(self, datagrams: list, now: float) -> Opened:
        offered, delivered, counted, answers = 0, [], Counter(), len(self.reference.answers)
        for datagram, address in datagrams:
            verdict = self.reference.offer(datagram, address, now)
            if verdict == ASIDE:
                continue
            offered += 1
            if verdict[0] == DROPPED:
                counted[verdict[1]] += 1
            elif decode_header(datagram).kind not in (KIND_KEEPALIVE, KIND_PROBE, KIND_PROBE_ACK):
                delivered.append(verdict[1:])
        return Opened(offered, delivered, counted, self.reference.answers[answers:])

    def same_verdict(self, datagram: bytes, now: float = NOW, address: Any = SOURCE) -> tuple:
        """Offer one datagram to both; they must agree, and pick it for a time answer
        alike (``answered``). Returns the verdict."""
        drops_before = Counter(self.core.drops)
        offered, delivered, counted, self.answered = self.batch([(datagram, address)], now)
        assert len(delivered) + sum(counted.values()) <= offered <= 1
        if not offered:
            verdict = ASIDE
            # The client counts it, once: too long or short for an answer, or one to nothing it sent.
            assert Counter(self.core.drops) - drops_before == Counter(
                {reasons.BAD_LENGTH if len(datagram) != OVERHEAD + TIME_ANSWER_PAYLOAD
                 else reasons.UNEXPECTED_TIME_ANSWER: 1})
        elif counted:
            [reason] = counted
            verdict = (DROPPED, reason)
        elif delivered:
            verdict = (ACCEPTED, *delivered[0])
        else:
            verdict = (ACCEPTED, b"", False)  # a keepalive: nothing to deliver, nothing counted
        answers = len(self.reference.answers)
        expected = self.reference.offer(datagram, address, now)
        assert verdict == expected, (datagram.hex(), now)
        assert self.answered == self.reference.answers[answers:], (datagram.hex(), now)
        assert self.endpoints() == self.reference.endpoints
        return verdict


INNER = [  # what client 1 might send, or its server send to it
    ipv4_packet(A_ADDR, SERVER_ADDR, b"hello"),
    ipv6_packet("2001:db8::2", "2001:db8::1", b"hello"),
    tcp(A_ADDR, SERVER_ADDR),
    PartialChecksumPacket(tcp(A_ADDR, SERVER_ADDR)),
    PartialChecksumPacket(udp(A_ADDR, SERVER_ADDR)),
    PartialChecksumPacket(tcp("2001:db8::2", "2001:db8::1")),
    PartialChecksumPacket(udp("2001:db8::2", "2001:db8::1", b"")),
    PartialChecksumPacket(ipv4_packet(A_ADDR, SERVER_ADDR, b"ping", proto=1)),  # no checksum to finish
    PartialChecksumPacket(ipv4_packet(A_ADDR, SERVER_ADDR, bytes(15), proto=6)),  # TCP header cut short
    PartialChecksumPacket(bytes([0x46]) + udp(A_ADDR, SERVER_ADDR, b"")[1:]),  # options claimed, not there
    PartialChecksumPacket(bytes([0x44]) + tcp(A_ADDR, SERVER_ADDR)[1:]),  # a header shorter than 20 bytes
    PartialChecksumPacket(tcp(A_ADDR, SERVER_ADDR)[:6] + b"\x20\x00" + tcp(A_ADDR, SERVER_ADDR)[8:]),  # a fragment
    PartialChecksumPacket(tcp(A_ADDR, SERVER_ADDR)[:-2]),  # shorter than its IP length
    PartialChecksumPacket(udp(A_ADDR, SERVER_ADDR) + bytes(6)),  # padded after its IP length
    ipv4_packet(B_ADDR, SERVER_ADDR),  # client 2's address
    ipv6_packet("2001:db8:b::5", "2001:db8::1"),  # in client 2's prefix
    ipv4_packet("198.51.100.7", SERVER_ADDR),  # nobody's
    ipv6_packet("2001:db9::1", "2001:db8::1"),  # nobody's
    b"", b"\x45" + bytes(10), b"\x60" + bytes(30), b"\x15" + bytes(40), bytes(19) + b"\x45",
]


# --- what the cores seal ----------------------------------------------------------------

@DIRECTIONS
def test_data_and_keepalives_as_the_cores_seal_them(direction):
    # NOW begins an epoch: a second before it the sender seals with its key as
    # configured (KEY_EPOCH), from NOW with the next one, derived.
    peer = sender(direction=direction, now=START)
    seen = set()
    for when in (NOW - 1, NOW):
        for payload in INNER:
            [datagram] = peer.seal(KIND_DATA, [payload], when)
            seen.add(Receivers(direction).same_verdict(datagram)[:2])
        [keepalive] = peer.seal(KIND_KEEPALIVE, [b""], when)
        assert Receivers(direction).same_verdict(keepalive) == (ACCEPTED, b"", False)
    # Both kinds of inner drop come up, and accepted packets.
    assert {verdict[0] for verdict in seen} == {ACCEPTED, DROPPED}
    assert {reasons.INNER_MALFORMED, reasons.INNER_SOURCE_NOT_ALLOWED} <= {verdict[1] for verdict in seen}


@pytest.mark.parametrize("vector", spec_vectors(), ids=lambda vector: vector["name"])
def test_every_vector_of_the_spec(vector):
    payload, kind = bytes.fromhex(vector["payload"]), int(vector["kind"], 16)
    client_id, ts = int(vector["client_id"]), int(vector["timestamp"])
    direction, server_id = int(vector["direction"], 16), int(vector["server_id"])
    epoch, epoch_seconds = int(vector["epoch"]), int(vector["epoch_seconds"])
    datagram = bytes.fromhex(vector["datagram"])
    now = ts + 0.5
    # The receiver may hold the key the vector's is derived from, or the vector's own.
    root = (bytes.fromhex(vector["root_key"]), int(vector["root_epoch"]))
    own = (bytes.fromhex(vector["key"]), epoch)

    def receivers(direction=direction, server_id=server_id, client_id=client_id, time_window=DEFAULT_TIME_WINDOW,
                  key=root):
        clients = (ClientEntry(client_id, *key, (net(A_ADDR + "/32"), net("2001:db8::2/128"))),)
        return Receivers(direction, clients=clients, server_id=server_id, start=now - 1000, time_window=time_window,
                         epoch_seconds=epoch_seconds)

    reflected = TO_CLIENT if direction == TO_SERVER else TO_SERVER
    if kind == KIND_TIME_ANSWER:
        # A client takes it aside, unopened (test_time_answer.py opens it); a server takes no such kind.
        assert receivers().same_verdict(datagram, now) == ASIDE
        assert receivers(direction=reflected).same_verdict(datagram, now) == (DROPPED, reasons.UNKNOWN_KIND)
        return
    for key in (root, own):
        verdict = receivers(key=key).same_verdict(datagram, now)
        if kind in (KIND_PROBE, KIND_PROBE_ACK):
            assert verdict == (ACCEPTED, b"", False)  # taken, its padding delivered nowhere
        elif payload:
            assert verdict == (ACCEPTED, payload, kind == KIND_DATA_PARTIAL)
        elif kind == KIND_KEEPALIVE:
            assert verdict == (ACCEPTED, b"", False)
        else:
            assert verdict == (DROPPED, reasons.INNER_MALFORMED)  # an empty data packet
    # A receiver whose key has moved past the vector's epoch cannot open it.
    later = (next_epoch_key(own[0], epoch + 1), epoch + 1)
    assert receivers(key=later).same_verdict(datagram, now) == (DROPPED, reasons.OUTSIDE_TIME_WINDOW)
    # Outside the window (a server authenticates it, to answer with its time).
    for time_window in (1, DEFAULT_TIME_WINDOW):
        for late in (time_window, time_window + 1):
            receivers(time_window=time_window).same_verdict(datagram, now + late)
            receivers(time_window=time_window).same_verdict(datagram, now - late)
    assert receivers(server_id=server_id ^ 1).same_verdict(datagram, now) == (DROPPED, reasons.AUTH_FAILED)
    # Reflected: a probe or its acknowledgement is not a kind the other end takes.
    assert receivers(direction=reflected).same_verdict(datagram, now) == (
        DROPPED, reasons.UNKNOWN_KIND if kind in (KIND_PROBE, KIND_PROBE_ACK) else reasons.AUTH_FAILED)
    other_id = (client_id + 1) & 0xFFFF
    assert receivers(client_id=other_id).same_verdict(datagram, now) == (DROPPED, reasons.UNKNOWN_CLIENT)


@DIRECTIONS
def test_the_rebuild_rows_of_the_spec(direction):
    """docs/PROTOCOL.md 9.2: a keepalive with each row's timestamp, offered at its
    ``now`` to a receiver with its time window, passes the time check or not as
    the row says (a server authenticates the ones outside, to answer them)."""
    for row in spec_rebuild():
        receivers = Receivers(direction, start=row.now - 1000, time_window=row.window)
        verdict = receivers.same_verdict(seal(KIND_KEEPALIVE, ts=row.ts, direction=direction), row.now)
        assert verdict == ((ACCEPTED, b"", False) if row.result == "accepted" else (DROPPED, row.result)), row


@DIRECTIONS
def test_the_replay_rows_of_the_spec(direction):
    """docs/PROTOCOL.md 9.3: the rows' datagrams, as keepalives each from an address
    of its own, to a receiver started in the second before the rows' floor: each is
    accepted or dropped as its row says, leaves the window as the row says, and
    moves a server's endpoint only as the newest."""
    floor, rows = spec_replay()
    receivers = Receivers(direction, start=floor - 0.5)
    peer = receivers.core.peers[1] if direction == TO_SERVER else receivers.core.server
    now = max(row.ts for row in rows) + 1.0
    for index, row in enumerate(rows):
        source = (f"192.0.2.{index + 1}", 40000)
        before = receivers.endpoints()
        datagram = seal(KIND_KEEPALIVE, ts=row.ts, counter=row.counter, direction=direction)
        verdict = receivers.same_verdict(datagram, now, source)
        accepted = row.result in ("newest", "restart", "reordered")
        assert verdict == ((ACCEPTED, b"", False) if accepted else (DROPPED, row.result)), row
        window = peer.window
        empty = window.newest_counter < 0
        assert (window.floor, None if empty else window.newest_ts, None if empty else window.newest_counter) == (
            row.floor, row.newest_ts, row.newest_counter), row
        moved = direction == TO_SERVER and row.result in ("newest", "restart")
        assert receivers.endpoints() == ({**before, 1: source} if moved else before), row


# --- what the network brings --------------------------------------------------------------

@DIRECTIONS
def test_truncated_extended_and_the_longest(direction):
    data = seal(KIND_DATA, INNER[0], direction=direction)
    keepalive = seal(KIND_KEEPALIVE, direction=direction)
    for datagram in (data, keepalive):
        for size in range(len(datagram)):
            Receivers(direction).same_verdict(datagram[:size])
        for extra in (b"\0", b"\x45" * 7, os.urandom(100)):
            Receivers(direction).same_verdict(datagram + extra)
    longest = seal(KIND_DATA, ipv4_packet(A_ADDR, SERVER_ADDR, bytes(65515)), direction=direction)
    assert len(longest) == MAX_DATAGRAM
    assert Receivers(direction).same_verdict(longest)[0] == ACCEPTED
    assert Receivers(direction).same_verdict(longest + b"\0") == (DROPPED, reasons.BAD_LENGTH)
    assert Receivers(direction).same_verdict(bytes(OVERHEAD - 1)) == (DROPPED, reasons.BAD_LENGTH)
    # A core with an MTU refuses what is longer than MTU + 24, as bad_length.
    for mtu in (1420, 1400):
        fits = seal(KIND_DATA, ipv4_packet(A_ADDR, SERVER_ADDR, bytes(1400)), direction=direction)
        assert Receivers(direction, mtu=mtu).same_verdict(fits)[0] == (ACCEPTED if mtu == 1420 else DROPPED)
    # Length comes before the kind, an old one or an unknown one.
    for kind in (0x11, 0x25):
        too_long = seal(kind, ipv4_packet(A_ADDR, SERVER_ADDR, bytes(1400)), direction=direction)
        assert Receivers(direction, mtu=1400).same_verdict(too_long) == (DROPPED, reasons.BAD_LENGTH)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([TO_SERVER, TO_CLIENT]), st.binary(max_size=200), st.integers(0, 0xFFFF))
def test_garbage(direction, garbage, word0):
    Receivers(direction).same_verdict(garbage)
    # ... and garbage behind a header of every kind, for a known client at the right time.
    header = struct.pack("!HHI", (word0 & 0xFC00) | (int(NOW) & 0x3FF), 1, 5)
    Receivers(direction).same_verdict(header + garbage)


@DIRECTIONS
def test_every_bit_flipped(direction):
    for kind, payload in ((KIND_DATA, INNER[0]), (KIND_KEEPALIVE, b""), (KIND_DATA_PARTIAL, INNER[3])):
        datagram = seal(kind, payload, direction=direction)
        for bit in range(len(datagram) * 8):
            flipped = bytearray(datagram)
            flipped[bit // 8] ^= 1 << (bit % 8)
            assert Receivers(direction).same_verdict(bytes(flipped))[0] == DROPPED


@DIRECTIONS
def test_every_kind(direction):
    data, keepalive = seal(KIND_DATA, INNER[0], direction=direction), seal(KIND_KEEPALIVE, direction=direction)
    for kind in range(64):
        verdicts = set()
        for datagram in (data, keepalive):
            relabelled = struct.pack("!H", kind << 10 | struct.unpack("!H", datagram[:2])[0] & 0x3FF) + datagram[2:]
            verdicts.add(Receivers(direction).same_verdict(relabelled)[:2])
        # Sealed with that kind: authentic, so only the kind can refuse it.
        for payload in (INNER[2], b""):
            verdicts.add(Receivers(direction).same_verdict(seal(kind, payload, direction=direction))[:2])
        if kind in VERSION_1_KINDS:
            # As a version-1 peer seals them, with no epochs: refused as old before any cipher.
            old = seal_datagram(AESSIV(KEY_A), kind, 1, 1000, int(NOW), direction, SERVER_ID, INNER[2])
            verdicts.add(Receivers(direction).same_verdict(old)[:2])
            assert verdicts == {(DROPPED, reasons.OLD_VERSION)}, hex(kind)
        elif kind == KIND_TIME_ANSWER:
            # Not opened by a server; taken aside by a client.
            assert verdicts == {(DROPPED, reasons.UNKNOWN_KIND) if direction == TO_SERVER else ASIDE}
        elif kind == (KIND_PROBE if direction == TO_SERVER else KIND_PROBE_ACK):
            # Relabelled: not authentic; sealed: an IP packet is no probe, and empty too short.
            assert verdicts == {(DROPPED, reasons.AUTH_FAILED), (DROPPED, reasons.BAD_PROBE),
                                (DROPPED, reasons.BAD_LENGTH)}, hex(kind)
        elif kind not in KINDS:
            assert verdicts == {(DROPPED, reasons.UNKNOWN_KIND)}, hex(kind)


@DIRECTIONS
@pytest.mark.parametrize("change", [
    dict(server_id=SERVER_ID + 1), dict(server_id=0), dict(key=OTHER_KEY), dict(key=KEY_B),
    dict(epoch=KEY_EPOCH), dict(epoch=KEY_EPOCH + 2), dict(key_epoch=KEY_EPOCH + 1),
    dict(client_id=2), dict(client_id=3), dict(client_id=0xFFFF), dict(counter=0), dict(counter=MASK),
], ids=["other server", "server 0", "other key", "client 2's key", "the previous epoch's key",
        "the next epoch's key", "the key taken as a later epoch's", "client 2", "client 3", "client 65535",
        "counter 0", "counter 2**32 - 1"])
def test_other_servers_keys_and_clients(direction, change):
    # A keepalive with a body, an unknown kind and an old one too: the cheap checks come in their order.
    for kind, payload in ((KIND_DATA, INNER[0]), (KIND_KEEPALIVE, b""), (KIND_KEEPALIVE, b"x"), (0x25, INNER[0]),
                          (0x11, INNER[0])):
        Receivers(direction).same_verdict(seal(kind, payload, direction=direction, **change))
    reflected = TO_CLIENT if direction == TO_SERVER else TO_SERVER
    Receivers(direction).same_verdict(seal(KIND_DATA, INNER[0], direction=reflected, **change))


@DIRECTIONS
@pytest.mark.parametrize("time_window", [1, 2, DEFAULT_TIME_WINDOW, 511])
def test_timestamps_inside_and_outside_the_time_window(direction, time_window):
    edges = {0, time_window - 1, time_window, time_window + 1, 511, 512, 513, 600}
    offsets = sorted({sign * edge for edge in edges for sign in (1, -1)} | {-300, -7, 7, 300})
    verdicts, answered = Counter(), 0
    for fraction in (0.0, 0.5, 0.999):
        now = NOW + fraction
        for offset in offsets:
            datagram = seal(KIND_DATA, INNER[0], ts=int(now) + offset, direction=direction)
            receivers = Receivers(direction, time_window=time_window)
            verdicts[receivers.same_verdict(datagram, now)[:2]] += 1
            answered += len(receivers.answered)
    # A timestamp 512 s or more away is rebuilt a period off: outside the window, or
    # inside it (a window near 511 s) with the wrong full timestamp in the AD.
    assert {(ACCEPTED, INNER[0]), (DROPPED, reasons.OUTSIDE_TIME_WINDOW)} <= verdicts.keys()
    assert verdicts.keys() <= {(ACCEPTED, INNER[0]), (DROPPED, reasons.OUTSIDE_TIME_WINDOW),
                               (DROPPED, reasons.AUTH_FAILED)}
    if direction == TO_SERVER:
        # A server authenticates what is outside the window: what was rebuilt right is
        # answered, what was rebuilt a period off fails authentication.
        assert answered and (DROPPED, reasons.AUTH_FAILED) in verdicts
    else:
        assert not answered


@DIRECTIONS
@pytest.mark.parametrize("epoch_seconds", [DEFAULT_EPOCH_SECONDS, 60])
@pytest.mark.parametrize("held", [-30, -1, 0, 1], ids=["older key", "last epoch's key", "this epoch's key",
                                                     "next epoch's key"])
def test_the_key_of_each_timestamps_epoch(direction, epoch_seconds, held):
    """Timestamps around NOW, an epoch boundary for both epoch lengths, sealed with
    keys derived from one of 30 epochs before; the receiver is given the key of NOW's
    epoch + ``held`` (an older one it steps forward at start to that of START - 512).
    Inside the window a datagram is accepted if the receiver holds its epoch's key,
    else dropped as outside_time_window (step 7); outside, a server authenticates
    (and answers) only what it holds the key for."""
    now_epoch = int(NOW) // epoch_seconds
    root_epoch = now_epoch - 30
    key = epoch_key(KEY_A, root_epoch, now_epoch + held)
    clients = (ClientEntry(1, key, now_epoch + held, CLIENTS[0].addresses),)
    oldest = max(now_epoch + held, (int(START) - 512) // epoch_seconds)
    now = NOW + 0.5
    offsets = sorted(set(range(-510, 511, 30)) | {-61, -60, -59, -1, 1, 59, 60, 61})
    for time_window in (DEFAULT_TIME_WINDOW, 511):
        pairs = []
        for index, offset in enumerate(offsets):
            ts = int(now) + offset
            datagram = seal(KIND_DATA, INNER[0], counter=1000 + index, ts=ts, direction=direction, key_epoch=root_epoch,
                            epoch_seconds=epoch_seconds)
            receivers = Receivers(direction, clients=clients, time_window=time_window, epoch_seconds=epoch_seconds)
            verdict = receivers.same_verdict(datagram, now)
            inside, held_key = abs(offset) <= time_window, ts // epoch_seconds >= oldest
            assert verdict[:2] == ((ACCEPTED, INNER[0]) if inside and held_key
                                   else (DROPPED, reasons.OUTSIDE_TIME_WINDOW)), offset
            assert len(receivers.answered) == (direction == TO_SERVER and not inside and held_key), offset
            pairs.append((datagram, SOURCE))
        # All in one batch, to one receiver: a context per epoch, answers at most one per interval.
        receivers = Receivers(direction, clients=clients, time_window=time_window, epoch_seconds=epoch_seconds)
        assert receivers.batch(pairs, now) == receivers.reference_batch(pairs, now)
        assert receivers.endpoints() == receivers.reference.endpoints


# --- hypothesis: anything a sender might seal, then changed on the way ----------------------

@st.composite
def inner_packets(draw) -> bytes:
    source = draw(st.sampled_from([
        A_ADDR, B_ADDR, "203.0.113.200", "198.51.100.7", "2001:db8::2", "2001:db8:b::5", "2001:db8:ff::1", "2001:db9::1",
    ]))
    make, destination = (ipv6_packet, "2001:db8::1") if ":" in source else (ipv4_packet, SERVER_ADDR)
    packet = make(source, destination, draw(st.binary(max_size=40)), draw(st.sampled_from([1, 6, 17, 58, 0])))
    shape = draw(st.integers(0, 3))
    if shape == 1:
        packet = packet[:draw(st.integers(0, len(packet)))]
    elif shape == 2:
        packet = draw(st.binary(max_size=60))
    elif shape == 3 and packet[0] >> 4 == 4:
        packet = bytes([0x40 | draw(st.integers(0, 15))]) + packet[1:]  # any header length
    return packet


@settings(max_examples=400, deadline=None)
@given(
    direction=st.sampled_from([TO_SERVER, TO_CLIENT]),
    kind=st.sampled_from([KIND_DATA] * 4 + [KIND_DATA_PARTIAL] * 2 + [KIND_KEEPALIVE] * 2 + [None]),
    other_kind=st.integers(0, 63),
    payload=inner_packets() | st.just(b""),
    client_id=st.sampled_from([1, 1, 1, 2, 7]),
    wrong=st.sampled_from([None] * 6 + ["key", "server", "direction", "epoch"]),
    counter=st.integers(0, MASK),
    offset=st.integers(-3, 3) | st.integers(-600, 600),
    fraction=st.floats(0, 0.999),
    time_window=st.sampled_from([DEFAULT_TIME_WINDOW, 1, 511]) | st.integers(1, 511),
    changes=st.just([]) | st.lists(CHANGE, min_size=1, max_size=3),
)
def test_any_datagram_changed_any_way(direction, kind, other_kind, payload, client_id, wrong, counter, offset,
                                      fraction, time_window, changes):
    now = NOW + fraction
    kind = other_kind if kind is None else kind
    key = OTHER_KEY if wrong == "key" else {1: KEY_A, 2: KEY_B}.get(client_id, KEY_A)
    server_id = SERVER_ID + 1 if wrong == "server" else SERVER_ID
    sealed_for = (TO_CLIENT if direction == TO_SERVER else TO_SERVER) if wrong == "direction" else direction
    ts = int(now) + offset
    epoch = ts // DEFAULT_EPOCH_SECONDS + 1 if wrong == "epoch" else None  # the next epoch's key
    datagram = seal(kind, payload, client_id=client_id, key=key, counter=counter, ts=ts, direction=sealed_for,
                    server_id=server_id, epoch=epoch)
    Receivers(direction, time_window=time_window).same_verdict(changed(datagram, changes), now)


# --- replays: the reference with a ReplayWindow, over sequences ------------------------------

@DIRECTIONS
def test_a_sequence_that_meets_every_window_verdict(direction):
    t0 = int(NOW)

    def data(index: int, ts: int, counter: int | None = None) -> bytes:
        counter = (MASK - 5 + index) & MASK if counter is None else counter  # across the wrap
        return seal(KIND_DATA, ipv4_packet(A_ADDR, SERVER_ADDR, index.to_bytes(2, "big")), counter=counter, ts=ts,
                    direction=direction)

    sent = [data(index, t0 if index < 6 else t0 + 1) for index in range(12)]
    ahead_but_older = data(12, t0)
    next_one = data(13, t0 + 1)
    far = data(14 + WINDOW, t0 + 1)
    restarted = [data(20 + index, t0 + 2, counter=100 + index) for index in range(3)]  # new counter, later clock
    restarted_keepalive = seal(KIND_KEEPALIVE, counter=103, ts=t0 + 2, direction=direction)
    stale = seal(KIND_KEEPALIVE, counter=7, ts=t0 - 3, direction=direction)  # before the receiver started
    sequence = [
        stale, *sent[:6], sent[5], sent[3], sent[8], sent[7], sent[6], sent[7], *sent[9:], ahead_but_older, sent[0],
        next_one, far, sent[11], sent[2], *restarted, far, sent[10], restarted_keepalive, restarted[1],
    ]
    receivers = Receivers(direction, start=t0 - 0.5)  # floor: t0
    seen = Counter()
    for index, datagram in enumerate(sequence):
        verdict = receivers.same_verdict(datagram, t0 + 1.5, ("192.0.2.10", 1000 + index))
        seen[verdict[0] if verdict[0] == ACCEPTED else verdict[1]] += 1
    assert seen.keys() == {ACCEPTED, reasons.REPLAYED, reasons.COUNTER_TOO_OLD, reasons.SUPERSEDED}
    # The same as one batch.
    receivers = Receivers(direction, start=t0 - 0.5)
    pairs = [(datagram, ("192.0.2.10", 1000 + index)) for index, datagram in enumerate(sequence)]
    assert receivers.batch(pairs, t0 + 1.5) == receivers.reference_batch(pairs, t0 + 1.5)
    assert receivers.endpoints() == receivers.reference.endpoints


@DIRECTIONS
def test_a_long_run_with_late_arrivals(direction):
    """10,000 counters in order across the wrap, every 97th late by 1,000: the batch
    opener's own sliding of the ring, against ReplayWindow.commit's."""
    receivers = Receivers(direction)
    payload = ipv4_packet(A_ADDR, SERVER_ADDR)

    def offer(counter, index):
        datagram = seal(KIND_DATA, payload, counter=counter, direction=direction)
        return receivers.same_verdict(datagram, NOW, ("192.0.2.10", 1000 + index % 50))[0] == ACCEPTED

    assert long_run_with_late_arrivals(offer, MASK - 5000) == LATE_ARRIVALS


@st.composite
def sequences(draw):
    """One or two instances of a sender (the second restarted with a new counter and a
    later clock); their datagrams delivered in order or not, with loss, with duplicates
    of what went before, some corrupted, in batches, each batch at its own time."""
    count = draw(st.integers(1, 6000))
    start = draw(st.integers(0, MASK) | st.integers(MASK - 3000, MASK))
    per_second = draw(st.integers(1, 20) | st.integers(WINDOW, 10_000))  # or a window's worth in one second
    picks = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=150))
    if draw(st.booleans()):
        picks.sort()  # as a network mostly delivers: in order, with loss
    order = list(picks)
    repeats = draw(st.lists(st.tuples(st.integers(0, len(picks)), st.integers(0, len(picks) - 1)), max_size=40))
    for at, which in sorted(repeats, reverse=True):
        order.insert(at, picks[which])
    restart = draw(st.none() | st.integers(0, count - 1))
    second_start = draw(st.integers(0, MASK))
    corrupt = draw(st.sets(st.integers(0, len(order) - 1), max_size=5))
    sizes = draw(st.lists(st.integers(1, 6), min_size=len(order), max_size=len(order)))
    jitter = draw(st.lists(st.integers(-3, 3), min_size=len(order), max_size=len(order)))
    receiver_start = draw(st.integers(-2, 1))
    return start, per_second, order, restart, second_start, corrupt, sizes, jitter, receiver_start


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([TO_SERVER, TO_CLIENT]), sequences())
def test_replays_and_reordering_as_the_reference_with_a_window(direction, case):
    start, per_second, order, restart, second_start, corrupt, sizes, jitter, receiver_start = case
    t0 = int(NOW)
    receivers_start = t0 + receiver_start - 0.5
    receivers = Receivers(direction, start=receivers_start)

    def datagram(index: int) -> tuple[bytes, int]:
        instance = 1 if restart is not None and index >= restart else 0
        counter = ((second_start if instance else start) + index) & MASK
        ts = t0 + index // per_second + instance
        if index % 7 == 3:
            return seal(KIND_KEEPALIVE, counter=counter, ts=ts, direction=direction), ts
        payload = ipv4_packet(A_ADDR, SERVER_ADDR, index.to_bytes(4, "big"))
        return seal(KIND_DATA, payload, counter=counter, ts=ts, direction=direction), ts

    deliveries_made = []
    for position, index in enumerate(order):
        sealed, ts = datagram(index)
        if position in corrupt:
            sealed = changed(sealed, [("flip", position * 7919, index)])
        deliveries_made.append((sealed, ("192.0.2.10", 1000 + position), ts))
    position, now = 0, receivers_start
    for size in sizes:
        batch = deliveries_made[position:position + size]
        if not batch:
            break
        now = max(now, batch[0][2] + jitter[position] + 0.25)
        pairs = [(sealed, address) for sealed, address, _ in batch]
        assert receivers.batch(pairs, now) == receivers.reference_batch(pairs, now), position
        assert receivers.endpoints() == receivers.reference.endpoints
        position += size


# --- the failure budget, and the time answer's share of it -----------------------------------

@DIRECTIONS
def test_forgeries_spend_the_failure_budget_of_the_id_they_name(direction):
    """Datagrams naming client 1 that fail authentication cost that ID FAILURE_BURST
    at once, then FAILURE_RATE a second; without credit nothing naming it is opened,
    authentic or not, but the cheaper checks still come first (a replay is still
    replayed), and client 2 (to the server) keeps its own budget. On a server the
    time answer's authentication spends credit too, and is not tried without it."""
    t0 = int(NOW)
    receivers = Receivers(direction, start=t0 - 0.5)
    counters = iter(range(5000, 10_000))
    far = t0 - 300  # outside the window: a server tries it for a time answer

    def authentic(client_id: int = 1) -> bytes:
        packet = ipv4_packet(A_ADDR if client_id == 1 else B_ADDR, SERVER_ADDR, b"real")
        return seal(KIND_DATA, packet, client_id=client_id, key=KEY_A if client_id == 1 else KEY_B,
                    counter=next(counters), ts=t0, direction=direction)

    def forged(count: int, ts: int = t0, client_id: int = 1) -> list[bytes]:
        return [seal(KIND_DATA, INNER[0], client_id=client_id, key=OTHER_KEY, counter=next(counters), ts=ts,
                     direction=direction) for _ in range(count)]

    first, late = authentic(), authentic()
    theirs = [authentic(2), *forged(1, client_id=2), authentic(2)] if direction == TO_SERVER else []
    batches = [
        (t0 + 0.25, [first, *forged(40), *theirs, *forged(30), first, late, *forged(2, far), *forged(3)]),
        (t0 + 0.5, [*forged(6), first, late]),  # a quarter of a second's worth
        # A datagram that looks at the bucket first, then time answers (one per interval) and a flood.
        (t0 + 10, [late, *forged(2, far), *forged(70), authentic(), *forged(1, far)]),
    ]
    failed = []
    for index, (now, datagrams) in enumerate(batches):
        pairs = [(datagram, ("192.0.2.10", 1000 + index)) for datagram in datagrams]
        opened = receivers.batch(pairs, now)
        assert opened == receivers.reference_batch(pairs, now), index
        assert receivers.endpoints() == receivers.reference.endpoints
        assert opened.counted[reasons.AUTH_FAILURES_LIMITED] > 0
        failed.append(opened.counted[reasons.AUTH_FAILED])
    extra = 1 if direction == TO_SERVER else 0  # client 2's forgery
    assert failed == [FAILURE_BURST + extra, 0.25 * FAILURE_RATE, FAILURE_BURST]
    assert receivers.reference.answers == []


def test_a_forged_request_for_the_time_counts_against_a_full_budget():
    """Section 7.1: authenticating for a time answer counts against the failure budget
    (section 5, step 6: FAILURE_BURST at once). A forged datagram outside the window,
    then a flood inside it, all at one instant, to a server idle since its start."""
    receivers = Receivers(TO_SERVER)
    datagrams = [seal(KIND_DATA, INNER[0], key=OTHER_KEY, counter=1, ts=int(NOW) - 300)]
    datagrams += [seal(KIND_DATA, INNER[0], key=OTHER_KEY, counter=100 + index) for index in range(FAILURE_BURST + 8)]
    pairs = [(datagram, SOURCE) for datagram in datagrams]
    assert receivers.batch(pairs, NOW) == receivers.reference_batch(pairs, NOW)
