"""Shared builders for the in-process tests: inner packets, a fixed clock, IDs,
configured cores and the peers that stand in for their other ends, the test vectors
of docs/PROTOCOL.md, and TCP/UDP packets with valid checksums as a TUN device with
offloads hands them over.

Test files import builders from here, never from each other."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import struct
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import strategies as st

from vpncrypt.core.client import ClientCore
from vpncrypt.core.epochs import DEFAULT_EPOCH_SECONDS, epoch_key
from vpncrypt.core.inner import PartialChecksumPacket
from vpncrypt.core.peer import Peer
from vpncrypt.core.pmtu import CONFIRMING
from vpncrypt.core.replay import WINDOW
from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.core.wire import KIND_DATA, KIND_KEEPALIVE, TO_SERVER, seal_datagram
from vpncrypt.tun.offload import F_NEEDS_CSUM, VNET_HEADER, ipv4_header_checksum, pseudo_header_sum

NOW = 1_800_000_000.0  # a fixed clock: the core never reads the real one
SERVER_ID = 0x5EC0_0001
# The epoch the test keys belong to: the one before NOW's, so every core derives a step.
KEY_EPOCH = int(NOW) // 3600 - 1
MASK = 2**32 - 1  # the 32-bit counter


# RFC 3692's experimental protocol number: a payload nobody parses, so that a
# test's bytes need not be a whole UDP or TCP header (inner.well_formed checks those).
OPAQUE = 253


def ipv4_packet(src: str, dst: str, payload: bytes = b"", proto: int = OPAQUE) -> bytes:
    """A minimal IPv4 packet (checksum left zero: the core never looks at it)."""
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )
    return header + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"", next_header: int = OPAQUE) -> bytes:
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
        ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed,
    )
    return header + payload


def tcp(source: str, destination: str, body: bytes = b"data") -> bytes:
    """A TCP segment with no options (data offset 5 words), checksum left zero."""
    make = ipv6_packet if ":" in source else ipv4_packet
    return make(source, destination, bytes(12) + b"\x50" + bytes(7) + body, 6)


def udp(source: str, destination: str, body: bytes = b"data") -> bytes:
    """A UDP datagram whose length field is right, checksum left zero."""
    make = ipv6_packet if ":" in source else ipv4_packet
    return make(source, destination, bytes(4) + (8 + len(body)).to_bytes(2, "big") + bytes(2) + body, 17)


class Model:
    """One sender instance, packets numbered 0, 1, 2, ...: no wrap, no ring, just a set."""

    def __init__(self, floor):
        self.floor, self.newest, self.newest_ts, self.seen = floor, None, None, set()

    def offer(self, index, ts):
        if ts < self.floor:
            return False
        if self.newest is None or index > self.newest:
            if self.newest is not None and index - self.newest >= WINDOW and ts > self.newest_ts:
                self.floor = self.newest_ts + 1
            self.newest, self.newest_ts = index, ts
        elif self.newest - index >= WINDOW or index in self.seen:
            return False
        self.seen.add(index)
        return True


@st.composite
def deliveries(draw):
    """A sender's packets (counter from a random start, so it may wrap; a clock that
    ticks every few packets), delivered as a sequence with loss, reordering and
    duplicates, some reaching back across more than the window."""
    count = draw(st.integers(1, 5000))
    start = draw(st.one_of(st.integers(0, MASK), st.integers(MASK - 3000, MASK)))
    per_second = draw(st.integers(1, 3000))
    order = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=300))
    return start, per_second, order


LATE_ARRIVALS = len(range(0, 9000, 97))  # held back and delivered before the run ends


def long_run_with_late_arrivals(offer_fn, start):
    """10,000 counters in order with every 97th held back and delivered 1,000 later:
    the ring wraps more than twice, so bits it failed to clear would show as replays."""
    held = []
    accepted_late = 0
    for index in range(10_000):
        if index % 97 == 0:
            held.append(index)
        else:
            assert offer_fn((start + index) & MASK, index) > 0
        while held and index - held[0] >= 1000:
            late = held.pop(0)
            accepted_late += offer_fn((start + late) & MASK, late) > 0
    return accepted_late


# --- a server with two clients, a client, and a sender standing in for one ------------

net = ipaddress.ip_network
A_ADDR, B_ADDR, SERVER_ADDR = "203.0.113.2", "203.0.113.3", "203.0.113.1"
A_EP, A_EP2, B_EP = ("192.0.2.10", 40000), ("198.51.100.20", 40001), ("192.0.2.11", 40002)
SERVER_EP = ("192.0.2.1", 51820)
KEY_A, KEY_B = os.urandom(64), os.urandom(64)


def make_server(now=NOW, **options) -> ServerCore:
    clients = [
        ClientEntry(1, KEY_A, KEY_EPOCH, (net(A_ADDR + "/32"), net("2001:db8::2/128")), "a"),
        ClientEntry(2, KEY_B, KEY_EPOCH, (net(B_ADDR + "/32"), net("2001:db8:b::/64")), "b"),
    ]
    return ServerCore(SERVER_ID, clients, now, **options)


def keepalives(datagrams):
    """The keepalives (kind 0x22) among a client timer's (datagram, endpoint)
    pairs, without the path MTU probes that come from the same timer."""
    return [(datagram, endpoint) for datagram, endpoint in datagrams if datagram[0] >> 2 == KIND_KEEPALIVE]


def without_path_search(client: ClientCore) -> ClientCore:
    """``client`` with its path MTU search at rest (tests/core/test_pmtu.py has
    it): a confirmation in flight that never times out, so that its timer is
    the keepalives' and the keys' only."""
    client.path.state, client.path.outstanding, client.path.due = CONFIRMING, True, float("inf")
    return client


def make_client(client_id=1, key=KEY_A, now=NOW, **options) -> ClientCore:
    return ClientCore(
        client_id, key, key_epoch=KEY_EPOCH, server_id=SERVER_ID, server_endpoint=SERVER_EP,
        routes=[net("203.0.113.0/24"), net("2001:db8::/32")], now=now, **options,
    )


def sender(client_id=1, key=KEY_A, now=NOW, direction=TO_SERVER, server_id=SERVER_ID, counter=None) -> Peer:
    return Peer(client_id, key, key_epoch=KEY_EPOCH, server_id=server_id, send_direction=direction, now=now,
                initial_counter=counter)


def epoch_aead(key: bytes, timestamp: float) -> AESSIV:
    """The AES-SIV context that opens what a Peer built on ``key`` (of KEY_EPOCH)
    sealed at ``timestamp``."""
    return AESSIV(epoch_key(key, KEY_EPOCH, int(timestamp) // DEFAULT_EPOCH_SECONDS))


def seal_from_a(payloads, now=NOW + 5, peer=None):
    return (peer or sender()).seal(KIND_DATA, payloads, now)


# --- datagrams as the reference seals them, and as the network changes them ----------------

@functools.lru_cache(maxsize=None)
def epoch_cipher(key: bytes, key_epoch: int, epoch: int) -> AESSIV:
    """The AES-SIV context of ``epoch``, from ``key``, the key of ``key_epoch``
    (docs/PROTOCOL.md section 1.1); cryptography's, whatever the core uses."""
    return AESSIV(epoch_key(key, key_epoch, epoch))


def seal(kind: int = KIND_DATA, payload: bytes = b"", *, client_id: int = 1, key: bytes = KEY_A, counter: int = 1000,
         ts: int = int(NOW), direction: int = TO_SERVER, server_id: int = SERVER_ID, key_epoch: int = KEY_EPOCH,
         epoch_seconds: int = DEFAULT_EPOCH_SECONDS, epoch: int | None = None) -> bytes:
    """A datagram as the reference (wire.seal_datagram) seals it: with the key of
    its timestamp's epoch (or of ``epoch``, to forge), derived from ``key``, the
    key of ``key_epoch``."""
    epoch = ts // epoch_seconds if epoch is None else epoch
    return seal_datagram(epoch_cipher(key, key_epoch, epoch), kind, client_id, counter, ts, direction, server_id,
                         payload)


# What the network may do to a datagram, any number of times: (what, position, value).
CHANGE = st.tuples(st.sampled_from(["flip", "set", "cut", "extend", "header"]), st.integers(0, MASK),
                   st.integers(0, MASK))


def changed(datagram: bytes, changes: list) -> bytes:
    """``datagram`` with ``changes`` (drawn from CHANGE) made in order: a bit
    flipped, a byte set, cut short, extended, or a header field rewritten."""
    data = bytearray(datagram)
    for what, position, value in changes:
        if what == "flip" and data:
            data[position % len(data)] ^= 1 << value % 8
        elif what == "set" and data:
            data[position % len(data)] = value & 0xFF
        elif what == "cut":
            del data[position % (len(data) + 1):]
        elif what == "extend":
            data += value.to_bytes(4, "big") * (position % 20 + 1)
        elif what == "header" and len(data) >= 8:
            word0, client_id, counter = struct.unpack_from("!HHI", data)
            field = position % 4
            if field == 0:
                word0 = (value & 0x3F) << 10 | word0 & 0x3FF  # the kind
            elif field == 1:
                word0 = word0 & 0xFC00 | value & 0x3FF  # the timestamp's low bits
            elif field == 2:
                client_id = value & 0xFFFF
            else:
                counter = value
            data[:8] = struct.pack("!HHI", word0, client_id, counter)
    return bytes(data)


# --- docs/PROTOCOL.md's test vectors -------------------------------------------------------

SPEC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"


def spec_blocks(kind: str) -> list[str]:
    """The text of every ```kind fenced block of section 9, in order."""
    return re.findall(rf"```{kind}\n(.*?)```", SPEC.read_text(), re.S)


def spec_vectors() -> list[dict[str, str]]:
    """The datagram vectors (section 9.1), each field name -> its text."""
    return [dict(line.split(": ", 1) for line in block.strip().splitlines()) for block in spec_blocks("vector")]


class RebuildRow(NamedTuple):
    """A row of section 9.2: the receiver's clock (Unix seconds) and time window, a
    header's low 10 timestamp bits, the rebuilt timestamp, the time check's result."""

    now: float
    window: int
    low: int
    ts: int
    result: str


def spec_rebuild() -> list[RebuildRow]:
    [block] = spec_blocks("rebuild")
    header, *rows = block.strip().splitlines()
    assert header.split() == ["now", "W", "low", "ts", "result"]
    return [RebuildRow(float(now), int(window), int(low), int(ts), result)
            for now, window, low, ts, result in map(str.split, rows)]


class ReplayRow(NamedTuple):
    """A row of section 9.3: a datagram's timestamp and counter, the window's
    result, and its floor, newest_ts and newest_counter after it (None while empty)."""

    ts: int
    counter: int
    result: str
    floor: int
    newest_ts: int | None
    newest_counter: int | None


def spec_replay() -> tuple[int, list[ReplayRow]]:
    """Section 9.3: the receiver's floor at start, and the rows."""
    [block] = spec_blocks("replay")
    first, header, *rows = block.strip().splitlines()
    assert first.startswith("floor: ")
    assert header.split() == ["ts", "counter", "result", "floor", "newest_ts", "newest_counter"]

    def number(text: str) -> int | None:
        return None if text == "-" else int(text)

    return int(first.split(": ")[1]), [
        ReplayRow(int(ts), int(counter), result, int(floor), number(newest_ts), number(newest_counter))
        for ts, counter, result, floor, newest_ts, newest_counter in map(str.split, rows)]


def spec_key_store() -> str:
    """Section 9.4: the example key store, as the file's text."""
    [block] = spec_blocks("keystore")
    return block


# --- TCP and UDP packets with valid checksums, and what the kernel makes of a TUN write ---

A4, B4 = "203.0.113.2", "203.0.113.1"
A6, B6 = "2001:db8:7::2", "2001:db8:7::1"
ACK, PSH, FIN, SYN, CWR = 0x10, 0x08, 0x01, 0x02, 0x80
MSS = 1368


def fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def tcp_checksum(packet: bytes) -> int:
    """The TCP checksum from scratch (checksum field taken as zero)."""
    v4 = packet[0] >> 4 == 4
    ip_len = 20 if v4 else 40
    segment = bytearray(packet[ip_len:])
    segment[16:18] = b"\0\0"
    addresses = packet[12:20] if v4 else packet[8:40]
    pseudo = addresses + struct.pack("!HH", 6, len(segment)) if v4 else addresses + struct.pack("!IxxxB", len(segment), 6)
    return ~fold(ones_sum(pseudo) + ones_sum(bytes(segment))) & 0xFFFF


def tcp_packet(seq: int, payload: bytes, flags: int = ACK, v6: bool = False, ip_id: int = 1,
               options: bytes = b"", src_port: int = 5001, to: str | None = None) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", src_port, 40000, seq, 777, (5 + len(options) // 4) << 4, flags, 500, 0, 0)
    tcp += options
    if v6:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp) + len(payload), 6, 64,
                         ipaddress.IPv6Address(A6).packed, ipaddress.IPv6Address(to or B6).packed)
    else:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), ip_id, 0x4000, 64, 6, 0,
                                   ipaddress.IPv4Address(A4).packed, ipaddress.IPv4Address(to or B4).packed))
        ip[10:12] = ipv4_header_checksum(ip).to_bytes(2, "big")
        ip = bytes(ip)
    packet = bytearray(ip + tcp + payload)
    offset = len(ip) + 16
    packet[offset:offset + 2] = tcp_checksum(bytes(packet)).to_bytes(2, "big")
    return bytes(packet)


def flow(count: int, start: int = 1000, size: int = MSS, last: int | None = None, **options) -> list[bytes]:
    sizes = [size] * count + ([last] if last is not None else [])
    packets, seq = [], start
    for index, length in enumerate(sizes):
        packets.append(tcp_packet(seq & 0xFFFFFFFF, bytes([index % 256]) * length, ip_id=index + 1, **options))
        seq += length
    return packets


DATAGRAM = 1200


def transport_checksum(packet: bytes, protocol: int, field: int) -> int:
    """The TCP or UDP checksum from scratch (field taken as zero; 0 sent as 0xFFFF for UDP)."""
    v4 = packet[0] >> 4 == 4
    ip_len = 20 if v4 else 40
    segment = bytearray(packet[ip_len:])
    segment[field:field + 2] = b"\0\0"
    addresses = packet[12:20] if v4 else packet[8:40]
    if v4:
        pseudo = addresses + struct.pack("!HH", protocol, len(segment))
    else:
        pseudo = addresses + struct.pack("!IxxxB", len(segment), protocol)
    return ~fold(ones_sum(pseudo) + ones_sum(bytes(segment))) & 0xFFFF or 0xFFFF


def udp_packet(payload: bytes, v6: bool = False, ip_id: int = 1, src_port: int = 4433, ttl: int = 64,
               tos: int = 0, frag: int = 0x4000) -> bytes:
    udp = struct.pack("!HHHH", src_port, 443, 8 + len(payload), 0)
    if v6:
        ip = struct.pack("!IHBB16s16s", 6 << 28 | tos << 20, len(udp) + len(payload), 17, ttl,
                         ipaddress.IPv6Address(A6).packed, ipaddress.IPv6Address(B6).packed)
    else:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 28 + len(payload), ip_id, frag, ttl, 17, 0,
                                   ipaddress.IPv4Address(A4).packed, ipaddress.IPv4Address(B4).packed))
        ip[10:12] = ipv4_header_checksum(ip).to_bytes(2, "big")
    packet = bytearray(bytes(ip) + udp + payload)
    field = len(ip) + 6
    packet[field:field + 2] = transport_checksum(bytes(packet), 17, 6).to_bytes(2, "big")
    return bytes(packet)


def datagrams(count: int, size: int = DATAGRAM, last: int | None = None, **options) -> list[bytes]:
    sizes = [size] * count + ([last] if last is not None else [])
    return [udp_packet(bytes([index % 256]) * length, ip_id=index + 1, **options) for index, length in enumerate(sizes)]


def kernel_view(plan: list) -> tuple[tuple, bytes]:
    """The virtio header and the packet the kernel gets, with its checksum finished as
    the kernel does for NEEDS_CSUM: sum from csum_start, fold, complement."""
    header = VNET_HEADER.unpack(bytes(plan[0]))
    packet = bytearray(b"".join(bytes(part) for part in plan[1:]))
    flags, _, _, _, start, offset = header
    if flags & F_NEEDS_CSUM:
        packet[start + offset:start + offset + 2] = (~ones_sum(bytes(packet[start:])) & 0xFFFF).to_bytes(2, "big")
    return header, bytes(packet)


def make_partial(packet: bytes) -> PartialChecksumPacket:
    """What a kernel with checksum offload hands over: the field holds the pseudo-header sum."""
    v4 = packet[0] >> 4 == 4
    ip_len = 20 if v4 else 40
    partial = bytearray(packet)
    field = ip_len + (16 if packet[9 if v4 else 6] == 6 else 6)
    partial[field:field + 2] = pseudo_header_sum(packet, 4 if v4 else 6, len(packet) - ip_len, packet[9 if v4 else 6]
                                                 ).to_bytes(2, "big")
    return PartialChecksumPacket(bytes(partial))


def install_client_keys(directory) -> None:
    """Move the client key files keygen wrote beside the configs in ``directory``
    into this machine's state directory ($STATE_DIRECTORY, set per test), as an
    operator copies them onto each client."""
    target = Path(os.environ["STATE_DIRECTORY"])
    for key_file in Path(directory).glob("*.keys.json"):
        key_file.replace(target / key_file.name)


def keygen_server(path: Path, endpoint: str, server_id: int, clients: dict[int, str]) -> Path:
    """A server config at ``path`` made by vpncrypt-keygen, with ``clients``
    (client ID -> name) added, each client's config beside it and its key file
    installed (install_client_keys)."""
    from vpncrypt.cli import keygen

    assert keygen.main(["server", "--endpoint", endpoint, "--tunnel", "203.0.113.1/24",
                        "--out", str(path), "--server-id", str(server_id)]) == 0
    for client_id, name in clients.items():
        assert keygen.main(["client", "--server-config", str(path), "--name", name,
                            "--out", str(path.parent / f"{name}.toml"), "--client-id", str(client_id)]) == 0
    install_client_keys(path.parent)
    return path
