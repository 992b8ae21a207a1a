"""vpncrypt._offload (vpncrypt/_offload.c) held to vpncrypt/tun/offload.py, its
reference: the same random super-packets and batches, well-formed, malformed and
truncated, go to both, and the segments, the plans (part by part) and the bytes
each write hands the kernel must be the same."""

from __future__ import annotations

import importlib
import random
import signal
import socket
import struct

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.builders import ACK, CWR, FIN, PSH, SYN, datagrams, flow, fold, make_partial, ones_sum, udp_packet
from tests.compiled import PURE_ONLY
from vpncrypt.core.inner import PartialChecksumPacket
from vpncrypt.tun import offload
from vpncrypt.tun.offload import GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, ipv4_header_checksum

from .fake_kernel import ALL_OFFLOADS, USO, drain, linux_over_socketpair
from .offload_paths import chosen, compiled_module
from .test_offload import (
    CHAINS, DEST_OPTIONS, FRAGMENT, PLAIN, altered, long_tcp, super_packet, udp_super_packet, with_extensions,
)

RST, URG, ECE = 0x04, 0x20, 0x40


def slow(examples: int) -> settings:
    """Settings for tests whose examples are large (super-packets and batches up to 64 KiB a packet)."""
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def noise(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# --- Packets of any shape ---------------------------------------------------------------------


def ip_packet(v6: bool, protocol: int, transport: bytes, *, ip_options: bytes = b"", extensions=(), tos: int = 0,
              ttl: int = 64, ip_id: int = 1, frag: int = 0x4000, label: int = 0, addresses: bytes = b"") -> bytes:
    """``transport`` (a TCP or UDP header and payload) in an IPv4 header with
    ``ip_options`` or an IPv6 one with ``extensions`` ((type, body) pairs, as
    test_offload.with_extensions takes them); lengths and the IPv4 header
    checksum right, whatever the size (a field that overflows is cut to 16 bits,
    as a broken sender's would be)."""
    if v6:
        source, destination = (addresses or bytes(range(32)))[:16], (addresses or bytes(range(32)))[16:32]
        kinds = [kind for kind, _ in extensions] + [protocol]
        chain = b"".join(bytes([kinds[index + 1]]) + body for index, (_, body) in enumerate(extensions))
        header = struct.pack("!IHBB16s16s", 6 << 28 | tos << 20 | label, (len(chain) + len(transport)) & 0xFFFF,
                             kinds[0], ttl, source, destination)
        return header + chain + transport
    source, destination = (addresses or bytes(range(8)))[:4], (addresses or bytes(range(8)))[4:8]
    ihl = 5 + len(ip_options) // 4
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, (ihl * 4 + len(transport)) & 0xFFFF, ip_id,
                                   frag, ttl, protocol, 0, source, destination) + ip_options)
    header[10:12] = ipv4_header_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + transport


def tcp_header(seq: int, flags: int, options: bytes = b"", *, ack: int = 777, window: int = 500, port: int = 5001,
               checksum: int = 0) -> bytes:
    return struct.pack("!HHIIBBHHH", port, 40000, seq & 0xFFFFFFFF, ack, (5 + len(options) // 4) << 4, flags,
                       window, checksum, 0) + options


def udp_header(size: int, port: int = 4433) -> bytes:
    return struct.pack("!HHHH", port, 443, (8 + size) & 0xFFFF, 0)


EXTENSION_KINDS = (0, 43, 60)


@st.composite
def extension_chains(draw):
    """Up to three hop-by-hop, routing or destination options headers of 8 to 24
    bytes; now and then a fragment header too (which the splitters refuse)."""
    chain = [(kind, bytes([units]) + draw(st.binary(min_size=6 + 8 * units, max_size=6 + 8 * units)))
             for kind, units in draw(st.lists(st.tuples(st.sampled_from(EXTENSION_KINDS), st.integers(0, 2)),
                                              max_size=3))]
    if draw(st.integers(0, 9)) == 0:
        chain.insert(draw(st.integers(0, len(chain))), (44, bytes([0, 0, 1]) + draw(st.binary(min_size=4, max_size=4))))
    return chain


@st.composite
def sizes(draw):
    """(segment size, payload length): any size from 1 to 65535, a payload of one
    to about a hundred segments (rarely past what a 16-bit length field holds),
    that seldom divides evenly."""
    gso_size = draw(st.one_of(st.integers(1, 65535), st.integers(1, 2000), st.sampled_from([1, 536, 1368, 1460])))
    count = draw(st.one_of(st.integers(1, 9), st.integers(1, 100)).map(lambda n: min(n, 70000 // gso_size + 1)))
    last = draw(st.integers(1, gso_size))
    return gso_size, min((count - 1) * gso_size + last, 65600)


@st.composite
def damage(draw, packet: bytes) -> bytes:
    """``packet`` as it is, cut short, or with a few bytes overwritten (most often in the headers)."""
    how = draw(st.sampled_from(["none", "none", "truncate", "overwrite"]))
    if how == "truncate":
        return packet[:draw(st.integers(0, len(packet)))]
    if how == "overwrite" and packet:
        changed = bytearray(packet)
        for _ in range(draw(st.integers(1, 3))):
            index = draw(st.one_of(st.integers(0, min(len(packet), 120) - 1), st.integers(0, len(packet) - 1)))
            changed[index] = draw(st.integers(0, 255))
        return bytes(changed)
    return packet


@st.composite
def tcp_super_packets(draw):
    """(packet, gso_type, gso_size) as the kernel hands over with TSO, and worse."""
    v6 = draw(st.booleans())
    gso_size, payload_len = draw(sizes())
    options = draw(st.binary(max_size=40).map(lambda o: o[:len(o) // 4 * 4]))
    flags = draw(st.integers(0, 255))
    transport = tcp_header(draw(st.integers(0, 2**32 - 1)), flags, options, ack=draw(st.integers(0, 2**32 - 1)),
                           window=draw(st.integers(0, 0xFFFF)), checksum=draw(st.integers(0, 0xFFFF)))
    transport += noise(draw(st.integers(0, 2**16)), payload_len)
    packet = ip_packet(v6, 6, transport, ip_options=b"" if v6 else draw(st.binary(max_size=40).map(
        lambda o: o[:len(o) // 4 * 4])), extensions=draw(extension_chains()) if v6 else (),
        tos=draw(st.integers(0, 255)), ip_id=draw(st.integers(0, 0xFFFF)), addresses=draw(st.binary(min_size=32, max_size=32)))
    gso_type = (GSO_TCPV6 if v6 else GSO_TCPV4) | (GSO_ECN if draw(st.booleans()) else 0)
    gso_type = draw(st.sampled_from([gso_type] * 6 + [GSO_TCPV4, GSO_TCPV6, 0, 3, GSO_UDP_L4, 0xFF]))
    return draw(damage(packet)), gso_type, draw(st.sampled_from([gso_size] * 8 + [0, -1]))


@st.composite
def udp_super_packets(draw):
    """(packet, gso_size) as the kernel hands over with USO, and worse."""
    v6 = draw(st.booleans())
    gso_size, payload_len = draw(sizes())
    transport = udp_header(payload_len) + noise(draw(st.integers(0, 2**16)), payload_len)
    packet = ip_packet(v6, 17, transport, ip_options=b"" if v6 else draw(st.binary(max_size=40).map(
        lambda o: o[:len(o) // 4 * 4])), extensions=draw(extension_chains()) if v6 else (),
        ip_id=draw(st.integers(0, 0xFFFF)), addresses=draw(st.binary(min_size=32, max_size=32)))
    return draw(damage(packet)), draw(st.sampled_from([gso_size] * 8 + [0, -5]))


def as_read(packet: bytes) -> memoryview:
    """``packet`` as LinuxTun.read_batch passes it: a slice of the read buffer, after the virtio header."""
    return memoryview(bytearray(bytes(10) + packet))[10:]


def counted(segments: list) -> list:
    """``segments``, with how many there are among the test's statistics."""
    event("refused" if not segments else "one segment" if len(segments) == 1 else
          "2 to 9 segments" if len(segments) < 10 else "10 or more segments")
    return segments


def assert_same_segments(python: list, compiled: list) -> None:
    assert [bytes(segment) for segment in compiled] == [bytes(segment) for segment in python]
    assert all(type(segment) is PartialChecksumPacket for segment in compiled)
    # Made in C as bytes' constructor makes them: equal objects hash equal, and they are immutable.
    assert [hash(segment) for segment in compiled[:3]] == [hash(bytes(segment)) for segment in compiled[:3]]


@slow(400)
@given(tcp_super_packets())
@example((b"", GSO_TCPV4, 1000))
@example((b"\x45", GSO_TCPV4, 1000))
@example((bytes([0x46]) + bytes(100), GSO_TCPV4, 1))
def test_split_gives_what_the_python_gives(case):
    packet, gso_type, gso_size = case
    python = counted(offload.split(packet, gso_type, gso_size))
    assert_same_segments(python, compiled_module().split(as_read(packet), gso_type, gso_size))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 255), st.integers(-2, 70000))
def test_split_and_split_datagrams_take_any_bytes(packet, gso_type, gso_size):
    """Whatever the bytes, the same answer and never an exception."""
    compiled = compiled_module()
    assert_same_segments(offload.split(packet, gso_type, gso_size), compiled.split(packet, gso_type, gso_size))
    assert_same_segments(offload.split_datagrams(packet, gso_size), compiled.split_datagrams(packet, gso_size))


def test_split_every_flag_combination_and_segment_size_one():
    """Each of the 256 flag bytes (FIN and PSH go on the last segment only, CWR on
    the first only, the rest on all), over 1, 2 and 3 segments of 1 byte and of 128."""
    compiled = compiled_module()
    for v6 in (False, True):
        for flags in range(256):
            for payload in (b"a", b"ab", b"abc", bytes(300)):
                packet = ip_packet(v6, 6, tcp_header(2**32 - 1, flags) + payload)
                gso_type = GSO_TCPV6 if v6 else GSO_TCPV4 | GSO_ECN
                python = offload.split(packet, gso_type, 1 if len(payload) < 4 else 128)
                assert len(python) == (len(payload) if len(payload) < 4 else 3)
                assert_same_segments(python, compiled.split(packet, gso_type, 1 if len(payload) < 4 else 128))


@slow(300)
@given(udp_super_packets())
@example((b"", 100))
@example((bytes([0x65]) + bytes(60), 10))
def test_split_datagrams_gives_what_the_python_gives(case):
    packet, gso_size = case
    python = counted(offload.split_datagrams(packet, gso_size))
    assert_same_segments(python, compiled_module().split_datagrams(as_read(packet), gso_size))


def test_the_splitters_reach_segments_and_refusals_alike():
    """The random cases above are worth something only if some are cut and some
    refused: a fixed sample of each kind, checked on both sides."""
    compiled = compiled_module()
    cut = ip_packet(True, 6, tcp_header(5, ACK | PSH) + bytes(5000), extensions=[(60, bytes(7))])
    assert len(offload.split(cut, GSO_TCPV6, 1400)) == 4 == len(compiled.split(cut, GSO_TCPV6, 1400))
    udp = ip_packet(False, 17, udp_header(3000) + bytes(3000), ip_options=bytes(8))
    assert len(offload.split_datagrams(udp, 1000)) == 3 == len(compiled.split_datagrams(udp, 1000))
    for refused in (cut[:60], cut[:48], udp[:36], b"\x60" * 100):
        assert offload.split(refused, GSO_TCPV6, 100) == [] == compiled.split(refused, GSO_TCPV6, 100)


def refusal_cases() -> dict[str, tuple]:
    """(function name, arguments) of super-packets at the edges of what the
    splitters take, each next to its neighbour on the other side of the edge."""
    tcp4, tso4, mss4 = super_packet(flow(3))
    tcp6, tso6, mss6 = super_packet(flow(3, v6=True))
    udp4, size4 = udp_super_packet(datagrams(3))
    udp6, size6 = udp_super_packet(datagrams(3, v6=True))
    seven = [(60, bytes(7))] * 7  # inner.ipv6_upper_layer walks at most 8 headers, the upper layer's included
    cases = {
        **{f"IHL {ihl}": ("split", bytes([0x40 | ihl]) + tcp4[1:], tso4, mss4) for ihl in range(7)},
        **{f"UDP, IHL {ihl}": ("split_datagrams", bytes([0x40 | ihl]) + udp4[1:], size4) for ihl in range(7)},
        "IPv6 under a TCPV4 type": ("split", tcp6, GSO_TCPV4, mss6),
        "IPv4 under a TCPV6 type": ("split", tcp4, GSO_TCPV6, mss4),
        "UDP, version 5": ("split_datagrams", bytes([0x55]) + udp4[1:], size4),
        "IPv4 segment of 65,535 bytes": ("split", long_tcp(65535 - 40, v6=False), GSO_TCPV4, 65535),
        "IPv4 segment of 65,536 bytes": ("split", long_tcp(65536 - 40, v6=False), GSO_TCPV4, 65535),
        "IPv6 payload of 65,535 bytes": ("split", long_tcp(65535 - 20, v6=True), GSO_TCPV6, 65535),
        "IPv6 payload of 65,536 bytes": ("split", long_tcp(65536 - 20, v6=True), GSO_TCPV6, 65535),
        "UDP/IPv4 datagram of 65,535 bytes": ("split_datagrams", udp_packet(bytes(65535 - 28)), 65535),
        "UDP/IPv4 datagram of 65,536 bytes": ("split_datagrams", udp_packet(bytes(65535 - 28)) + b"x", 65535),
        "IPv6 upper layer at 2,088 bytes": ("split", with_extensions(tcp6, [(60, b"\xff" + bytes(2046))]), tso6, mss6),
        "IPv6 upper layer at 1,064 bytes": ("split", with_extensions(tcp6, [(60, b"\x7f" + bytes(1022))]), tso6, mss6),
        "7 extension headers": ("split", with_extensions(tcp6, seven), tso6, mss6),
        "8 extension headers": ("split", with_extensions(tcp6, seven + [(60, bytes(7))]), tso6, mss6),
        "UDP, 7 extension headers": ("split_datagrams", with_extensions(udp6, seven), size6),
        "UDP, 8 extension headers": ("split_datagrams", with_extensions(udp6, seven + [(0, bytes(7))]), size6),
        "UDP, a fragment header": ("split_datagrams", with_extensions(udp6, [DEST_OPTIONS, FRAGMENT]), size6),
        "UDP headers, no payload": ("split_datagrams", udp_packet(b""), 100),
    }
    return cases


@pytest.mark.parametrize("name", list(refusal_cases()))
def test_the_splitters_agree_at_the_edges(name):
    function, *arguments = refusal_cases()[name]
    python = getattr(offload, function)(*arguments)
    assert_same_segments(python, getattr(compiled_module(), function)(*arguments))
    edge = "IHL 5" in name or "IHL 6" in name or any(word in name for word in ("65,535", "1,064", "7 extension"))
    assert bool(python) == edge, name  # each case is on the side of the edge it says


def test_the_compiled_splitters_refuse_arguments_of_the_wrong_type():
    """TypeError, always (the Python raises it too, unless it returned [] before
    looking at the argument, as for a str of four characters)."""
    compiled = compiled_module()
    packet = ip_packet(False, 6, tcp_header(1, ACK) + bytes(100))
    for call in (lambda: compiled.split(packet, GSO_TCPV4, "10"), lambda: compiled.split("text", GSO_TCPV4, 10),
                 lambda: compiled.split(packet, None, 10), lambda: compiled.split_datagrams(packet, None),
                 lambda: compiled.split_datagrams(packet), lambda: compiled.split(packet, 1)):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(TypeError):
        offload.split(packet, GSO_TCPV4, "10")


# --- Batches to write --------------------------------------------------------------------------

MSS_CHOICES = (1, 7, 100, 536, 1200, 1368, 8000, 30000, 65000)
KINDS = ("full", "full", "full", "full", "short", "empty", "gap", "psh", "flags", "partial", "field", "bigger",
         "damaged", "junk", "fragment")
REPEATED = ("full", "fragment", "partial", "psh", "short")
FIELDS = {False: (1, 6, 8, 12, 19, 22, 28, 34), True: (0, 2, 7, 8, 39, 42, 48, 54)}  # in a key, or ports


@st.composite
def flows(draw):
    return {"v6": draw(st.booleans()), "udp": draw(st.booleans()), "mss": draw(st.sampled_from(MSS_CHOICES)),
            "options": bytes(draw(st.sampled_from([0, 0, 12, 40]))), "port": draw(st.integers(1, 0xFFFF))}


@st.composite
def batches(draw):
    """Packets of up to four flows (TCP or UDP, IPv4 or IPv6, any MSS up to 64 KiB),
    interleaved, with holes, flags that forbid merging, partial checksums, fields
    that differ, packets bigger than the run's, damaged and junk ones."""
    specs = draw(st.lists(flows(), min_size=1, max_size=4))
    seqs = [draw(st.integers(0, 2**32 - 1)) for _ in specs]
    steps = draw(st.lists(st.tuples(st.integers(0, len(specs) - 1), st.one_of(st.just("full"), st.sampled_from(KINDS)),
                                    st.one_of(st.just(1), st.integers(2, 70))), min_size=1, max_size=30))
    packets, total = [], 0
    for which, kind, repeat in steps:
        for _ in range(repeat if kind in REPEATED else 1):  # a stretch of one flow, as a TCP burst is
            packet = next_packet(draw, specs[which], kind, seqs, which, len(packets))
            packets.append(packet)
            total += len(packet)
        if total > 2_000_000:
            break
    return packets


def next_packet(draw, spec: dict, kind: str, seqs: list[int], which: int, index: int) -> bytes:
    """The next packet of flow ``which`` (``spec``), of ``kind``, its sequence number moved on."""
    size = {"short": draw(st.integers(1, max(1, spec["mss"] - 1))), "empty": 0,
            "bigger": spec["mss"] + draw(st.integers(1, 100))}.get(kind, spec["mss"])
    if kind == "gap":
        seqs[which] += spec["mss"]
    flags = {"psh": ACK | PSH, "flags": draw(st.integers(0, 255))}.get(kind, ACK)
    payload = bytes([index % 256]) * size
    transport = (udp_header(size, spec["port"]) if spec["udp"] else
                 tcp_header(seqs[which], flags, spec["options"], port=spec["port"])) + payload
    packet = ip_packet(spec["v6"], 17 if spec["udp"] else 6, transport, ip_id=index,
                       frag=0x2000 if kind == "fragment" else 0x4000)
    seqs[which] += size
    if kind == "partial":
        packet = PartialChecksumPacket(packet)
    elif kind == "field":
        changed = bytearray(packet)
        changed[draw(st.sampled_from(FIELDS[spec["v6"]])) % len(changed)] ^= draw(st.integers(1, 255))
        packet = bytes(changed)
    elif kind == "damaged":
        packet = draw(damage(packet))
        if draw(st.booleans()):
            packet = PartialChecksumPacket(packet)
    elif kind == "junk":
        packet = draw(st.binary(max_size=80))
    return packet


def assert_same_plans(python: list, compiled: list) -> None:
    """Plan by plan and part by part: the same bytes, the same kinds of buffer,
    and a packet written as it is is the very object."""
    assert [len(plan) for plan in compiled] == [len(plan) for plan in python]
    for python_plan, compiled_plan in zip(python, compiled):
        assert [bytes(part) for part in compiled_plan] == [bytes(part) for part in python_plan]
        assert [type(part) for part in compiled_plan] == [type(part) for part in python_plan]
        if len(python_plan) == 2:
            assert compiled_plan[1] is python_plan[1]


@slow(300)
@given(batches(), st.booleans())
def test_coalesce_gives_what_the_python_gives(packets, merge_datagrams):
    python = offload.coalesce(packets, merge_datagrams)
    for plan in python:
        if len(plan) > 2:
            event("merged runs: " + ("64 segments" if len(plan) == 66 else "fewer"))
            if sum(map(len, plan[1:])) > 60000:
                event("a merged packet over 60,000 bytes")
    assert_same_plans(python, compiled_module().coalesce(packets, merge_datagrams=merge_datagrams))


def full_run(count: int, mss: int, v6: bool = False, udp: bool = False) -> list[bytes]:
    seq, packets = 1, []
    for index in range(count):
        transport = (udp_header(mss) if udp else tcp_header(seq, ACK)) + bytes([index % 256]) * mss
        packets.append(ip_packet(v6, 17 if udp else 6, transport, ip_id=index))
        seq += mss
    return packets


def test_runs_end_at_64_segments_and_64_kib_alike():
    """The limits, on both sides: 64 packets a run, 65,535 bytes a packet."""
    compiled = compiled_module()
    for packets, runs in ((full_run(130, 100), [64, 64, 2]), (full_run(100, 1368), [47, 47, 6]),
                          (full_run(70, 100, v6=True, udp=True), [64, 6]), (full_run(3, 30000), [2, 1]),
                          (full_run(3, 65000, v6=True), [1, 1, 1]), (full_run(6, 13099), [5, 1]),
                          (full_run(6, 13098), [5, 1]), (full_run(6, 13100), [4, 2])):
        python = offload.coalesce(packets)
        assert [len(plan) - 2 if len(plan) > 2 else 1 for plan in python] == runs
        assert_same_plans(python, compiled.coalesce(packets))


KEY_FIELDS = {
    "TCP/IPv4": (flow, {"TOS": 1, "DF": 6, "TTL": 8, "source": 12, "destination": 19, "source port": 20,
                        "destination port": 23, "ack": 28, "window": 34, "options": 45}),
    "TCP/IPv6": (lambda count: flow(count, v6=True),
                 {"traffic class": 0, "flow label": 3, "hop limit": 7, "source": 8, "destination": 39,
                  "source port": 40, "destination port": 43, "ack": 48, "window": 55, "options": 65}),
    "UDP/IPv4": (datagrams, {"TOS": 1, "DF": 6, "TTL": 8, "source": 12, "destination": 19, "source port": 20,
                             "destination port": 23}),
    "UDP/IPv6": (lambda count: datagrams(count, v6=True),
                 {"traffic class": 0, "flow label": 3, "hop limit": 7, "source": 8, "destination": 39,
                  "source port": 40, "destination port": 43}),
}


def with_options(packet: bytes) -> bytes:
    """A TCP segment of flow() with a 12-byte option block, lengths kept right."""
    v6 = packet[0] >> 4 == 6
    ip_len = 40 if v6 else 20
    header = bytearray(packet[:ip_len + 20])
    header[ip_len + 12] = 8 << 4
    changed = bytes(header) + b"\x01\x01\x08\x0a" + bytes(8) + packet[ip_len + 20:]
    return altered(changed, 4, (len(changed) - 40).to_bytes(2, "big")) if v6 else \
        altered(changed, 2, len(changed).to_bytes(2, "big"))


@pytest.mark.parametrize("kind", list(KEY_FIELDS))
def test_coalesce_splits_runs_on_every_key_field_alike(kind):
    """Packets in sequence but different in one field of the flow key start a new run, on both sides."""
    make, fields = KEY_FIELDS[kind]
    compiled = compiled_module()
    for field, offset in fields.items():
        packets = make(4)
        if field == "options":
            packets = [with_options(packet) for packet in packets]
        flip = 0x40 if field == "DF" else 0x04  # DF itself, not the fragment offset beside it
        packets[2:] = [altered(packet, offset, bytes([packet[offset] ^ flip])) for packet in packets[2:]]
        python = offload.coalesce(packets)
        assert [len(plan) for plan in python] == [4, 4], (kind, field)  # 2 merged, then 2 merged again
        assert_same_plans(python, compiled.coalesce(packets))


def unmergeable_runs() -> dict[str, list[bytes]]:
    """Three of a kind that parse_segment refuses (or whose key differs), back to back."""
    v4, v6 = datagrams(1)[0], datagrams(1, v6=True)[0]
    tcp4 = flow(1)[0]
    return {
        "UDP, more fragments": datagrams(3, frag=0x2000),
        "UDP, a fragment offset": datagrams(3, frag=0x4001),
        "TCP, more fragments": [altered(packet, 6, b"\x20") for packet in flow(3)],
        "UDP length off": [altered(v4, 24, (len(v4) - 21).to_bytes(2, "big"))] * 3,
        "UDP/IPv6 length off": [altered(v6, 44, (len(v6) - 41).to_bytes(2, "big"))] * 3,
        "IPv4 options": [bytes([0x46]) + tcp4[1:]] * 3,
        "TCP without ACK": [altered(packet, 33, bytes([PSH])) for packet in flow(3)],
        "TCP with URG": [altered(packet, 33, bytes([ACK | URG])) for packet in flow(3)],
        "TCP with ECE": [altered(packet, 33, bytes([ACK | ECE])) for packet in flow(3)],
    }


@pytest.mark.parametrize("name", list(unmergeable_runs()))
def test_coalesce_leaves_unmergeable_runs_alone_alike(name):
    packets = unmergeable_runs()[name]
    python = offload.coalesce(packets)
    assert all(len(plan) == 2 for plan in python), name
    assert_same_plans(python, compiled_module().coalesce(packets))


def test_partial_packets_get_the_checksum_location_the_python_finds():
    """NEEDS_CSUM with csum_start past any IPv6 extension headers, or nothing (PLAIN)
    for a fragment, a chain too long, a length field past the end."""
    tcp6, udp6, tcp4 = flow(1, v6=True)[0], datagrams(1, v6=True)[0], flow(1)[0]
    later_fragment = (44, b"\x00\x00\x08\x12\x34\x56\x78")  # offset 8, no more fragments
    packets = [make_partial(tcp4), PartialChecksumPacket(tcp4 + b"pad"), PartialChecksumPacket(tcp4[:-1])]
    for packet in (tcp6, udp6):
        for chain in CHAINS + [[FRAGMENT], [DEST_OPTIONS, FRAGMENT], [later_fragment], [(60, bytes(7))] * 8]:
            packets.append(PartialChecksumPacket(with_extensions(packet, chain)))
    python = offload.coalesce(packets)
    assert sum(plan[0] != PLAIN for plan in python) == 2 + 2 * len(CHAINS)  # the rest are PLAIN
    assert_same_plans(python, compiled_module().coalesce(packets))


def test_compiled_coalesce_refuses_what_is_not_bytes():
    """TypeError for a packet without the buffer protocol (the Python plans a
    short str as a packet of its own, which os.writev then refuses)."""
    for packets in ([1], ["text"], 5, [b"ok", None]):
        with pytest.raises(TypeError):
            compiled_module().coalesce(packets)


# --- write_coalesced: LinuxTun's write with each path ----------------------------------------


def write_with(path: str, packets: list[bytes], merge_datagrams: bool, hang_up: bool = False) -> tuple[int, list]:
    """(refused, what the kernel got) for LinuxTun.write_batch with ``path``'s
    functions, the "kernel" the other end of a datagram socket pair (whose
    buffer holds some 200 KB unread), or gone (``hang_up``)."""
    with chosen(path):
        tun, peer, _ = linux_over_socketpair(True, refused=0 if merge_datagrams else USO)
    try:
        assert tun.segmentation == ALL_OFFLOADS or not merge_datagrams
        if hang_up:
            peer.close()
        return tun.write_batch(packets), ([] if hang_up else drain(peer))
    finally:
        tun.close()
        peer.close()


@slow(150)
@given(batches(), st.booleans(), st.booleans())
def test_write_coalesced_writes_and_refuses_what_the_python_loop_does(packets, merge_datagrams, hang_up):
    """The same writes in the same order, and the same refused count when the
    queue fills (EAGAIN) or the reader is gone (ECONNREFUSED): a merged write
    that fails counts every packet in it."""
    python = write_with("pure", packets, merge_datagrams, hang_up)
    assert write_with("compiled", packets, merge_datagrams, hang_up) == python
    event("none refused" if not python[0] else "all refused" if python[0] == len(packets) else "some refused")
    if hang_up:
        assert python[0] == len(packets)


def test_write_coalesced_counts_refusals():
    """Fixed cases for the counts: a full queue refuses what comes after it, a
    merged run as many as it holds."""
    packets = full_run(64 * 60, 100)  # merged: 60 runs of 64, more than the socket's buffer holds
    refused, written = write_with("compiled", packets, True)
    assert refused == 64 * (60 - len(written)) > 0 and all(len(frame) == 10 + 40 + 64 * 100 for frame in written)
    assert write_with("compiled", packets[:3], True, hang_up=True) == (3, [])
    singles = [ip_packet(False, 6, tcp_header(1, ACK | SYN) + bytes(1000))] * 1000  # none merges
    refused, written = write_with("compiled", singles, True)
    assert refused == 1000 - len(written) > 0


def test_write_coalesced_raises_for_bad_arguments():
    compiled = compiled_module()
    with pytest.raises(TypeError):
        compiled.write_coalesced(1, [1], True)
    with pytest.raises(TypeError):
        compiled.write_coalesced("fd", [], True)
    assert compiled.write_coalesced(2**20, [b"x"], True) == 1  # EBADF: refused, as os.writev's OSError is


def test_a_write_cut_by_a_signal_is_retried_and_a_handler_exception_raised():
    """A blocking write interrupted by a signal (EINTR) runs the handler and is
    tried again, as os.writev does; an exception from the handler comes out."""
    compiled = compiled_module()
    own, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    packets = [ip_packet(False, 6, tcp_header(index, ACK | SYN) + bytes(30000)) for index in range(40)]  # 1.2 MB
    received = []

    def make_room(*_) -> None:
        received.extend(drain(peer))

    class Stop(Exception):
        pass

    def stop(*_) -> None:
        if "stopped" not in received:
            received.append("stopped")
            raise Stop
        make_room()  # then: a write that went on regardless ends, and the test fails instead of hanging

    previous = signal.signal(signal.SIGALRM, make_room)
    peer.setblocking(False)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)  # again and again: the write may block after a drain
        assert compiled.write_coalesced(own.fileno(), packets, True) == 0
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert received  # the write blocked (the socket's buffer holds some 200 KB) and a handler made room
        received.extend(drain(peer))
        assert received == [bytes(10) + packet for packet in packets]
        signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
        with pytest.raises(Stop):
            compiled.write_coalesced(own.fileno(), packets, True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        own.close()
        peer.close()


def test_the_merged_packet_the_kernel_gets_has_valid_checksums():
    """Not only equal to the Python's: right. The kernel's NEEDS_CSUM completion
    over what write_coalesced wrote gives the TCP checksum computed from scratch."""
    packets = full_run(5, 1000)
    refused, [frame] = write_with("compiled", packets, True)
    flags, gso_type, _, gso_size, start, offset = struct.unpack("<BBHHHH", frame[:10])
    merged = bytearray(frame[10:])
    assert (refused, flags, gso_type, gso_size, start, offset) == (0, 1, GSO_TCPV4, 1000, 20, 16)
    merged[36:38] = (~ones_sum(bytes(merged[20:])) & 0xFFFF).to_bytes(2, "big")
    check = bytearray(merged)
    check[36:38] = b"\0\0"
    pseudo = bytes(merged[12:20]) + struct.pack("!HH", 6, len(merged) - 20)
    assert int.from_bytes(merged[36:38], "big") == ~fold(ones_sum(pseudo) + ones_sum(bytes(check[20:]))) & 0xFFFF
    assert ones_sum(bytes(merged[:20])) == 0xFFFF and merged[40:] == b"".join(p[40:] for p in packets)
    assert merged[33] == ACK and not merged[33] & (FIN | CWR | RST | URG | ECE)


@pytest.mark.skipif(PURE_ONLY, reason="VPNCRYPT_PURE_PYTHON=1: the compiled offload functions are not required")
def test_the_extension_is_built_and_chosen_by_default():
    """Where tools/setup ran, vpncrypt._offload is built and LinuxTun takes its
    functions: a failed build must fail here, not leave the daemon on the fallback."""
    module = importlib.import_module("vpncrypt._offload")  # ImportError: tools/setup did not build it
    assert offload.COMPILED is module and offload.NOT_BUILT == "" and offload.compiled() is module
    tun, peer, _ = linux_over_socketpair(True)
    try:
        assert (tun._split, tun._split_datagrams, tun._write_compiled) == (
            module.split, module.split_datagrams, module.write_coalesced)
    finally:
        tun.close()
        peer.close()
