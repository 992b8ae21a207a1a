"""TCP and UDP segmentation offload for a TUN device with virtio headers, both ways.

Pure functions, no I/O. ``split(...)`` cuts a TCP super-packet the kernel
handed over (TSO) into MSS-sized segments, as a NIC would, and
``split_datagrams(...)`` cuts a UDP one (USO, from a sender using UDP_SEGMENT)
into its datagrams; both leave the checksums partial. ``coalesce(packets)``
turns a batch of IP packets into write plans (a 10-byte virtio_net_hdr and the
buffers to follow it). Runs of consecutive segments of one TCP flow become one
packet marked GSO, which the kernel takes as it would from a NIC with receive
offload: the receiving TCP stack sees one large segment and sends one ACK for
it instead of one for every second segment. Runs of equal-sized datagrams of
one UDP flow become one GSO_UDP_L4 packet: one write instead of dozens, and
the kernel hands a receiver the same datagrams. Checksums are left to the
kernel (NEEDS_CSUM): the TCP or UDP field gets only the pseudo-header sum, and
computing more in Python would cost as much as the cipher. A packet that
arrived with a partial checksum (PartialChecksumPacket) is handed over the
same way. The wire format is untouched.

These functions are the reference: vpncrypt/_offload.c does the same work
compiled, and LinuxTun runs whichever ``choose`` (at the end) picked.
"""

from __future__ import annotations

import struct

from ..core.inner import IPV6_FRAGMENT, PartialChecksumPacket, checksum_location, ipv6_upper_layer

VNET_HEADER = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HEADER_LEN = VNET_HEADER.size
PLAIN = bytes(VNET_HEADER_LEN)  # no offload: a packet written as it is
F_NEEDS_CSUM = 1
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
TCP_CHECKSUM_OFFSET = 16
UDP_CHECKSUM_OFFSET = 6
TCP_FLAG_FIN = 0x01
TCP_FLAG_PSH = 0x08
TCP_FLAG_ACK = 0x10
TCP_FLAG_CWR = 0x80
GSO_ECN = 0x80
_MERGEABLE_FLAGS = TCP_FLAG_ACK | TCP_FLAG_PSH  # no SYN, FIN, RST, URG, ECE, CWR
MAX_MERGED = 65535  # the IPv4 total length / IPv6 payload length field
MAX_SEGMENTS = 64  # the kernel refuses a UDP GSO packet of more (UDP_MAX_SEGMENTS; 64 on older kernels)


# The fixed headers of a plain TCP segment, read in one go. The fields that
# must be equal across a run of one flow are kept, the others skipped:
# IPv4: version+IHL, TOS, total length, (ID), flags+fragment offset (2 bytes), TTL, protocol,
#       (checksum), addresses and ports, sequence, acknowledgement, data offset, TCP flags, window,
#       (checksum, urgent pointer).
_TCP4 = struct.Struct("!BBH2xBBBB2x12sI4sBB2s4x")
# IPv6: version+class+label, payload length, next header, hop limit, addresses and ports, then as above.
_TCP6 = struct.Struct("!4sHBB36sI4sBB2s4x")
# UDP: the IP header as above, ports, UDP length, (checksum).
_UDP4 = struct.Struct("!BBH2xBBBB2x12sH2x")
_UDP6 = struct.Struct("!4sHBB36sH2x")
UDP = 17  # the first item of a UDP flow key, so that it never equals a TCP one


def parse_segment(packet: bytes) -> tuple | None:
    """(flow key, sequence number, TCP flags, header length, payload length) of a
    TCP segment or UDP datagram that may be merged with its neighbours, or
    None (also for one without payload, such as a pure ACK).

    The key holds everything that must be equal across a run: addresses,
    ports, TOS or traffic class, DF, TTL, and for TCP the acknowledgement
    number, window and options. A datagram has sequence number None, flags 0.
    Called for every packet written to TUN, hence one unpack.
    """
    size = len(packet)
    if size < 28:
        return None
    version = packet[0] >> 4
    if version == 4:
        if packet[9] == UDP:
            ver_ihl, tos, total, frag_hi, frag_lo, ttl, _, flow, udp_len = _UDP4.unpack_from(packet)
            if ver_ihl != 0x45 or frag_hi & 0x3F or frag_lo or total != size or udp_len != size - 20 or size == 28:
                return None  # options, a fragment, no payload, or a length that does not add up
            return (UDP, tos, frag_hi, ttl, flow), None, 0, 28, size - 28
        if size < 40:
            return None
        ver_ihl, tos, total, frag_hi, frag_lo, ttl, protocol, flow, seq, ack, offset, flags, window = \
            _TCP4.unpack_from(packet)
        if ver_ihl != 0x45 or protocol != 6 or frag_hi & 0x3F or frag_lo or total != size:
            return None  # options, not TCP, a fragment, or a length that does not add up
        key = (tos, frag_hi, ttl, flow, ack, window)
        ip_len = 20
    elif version == 6:
        if size < 49:
            return None
        if packet[6] == UDP:
            label, payload_len, _, hops, flow, udp_len = _UDP6.unpack_from(packet)
            if payload_len + 40 != size or udp_len != payload_len:
                return None
            return (UDP, label, hops, flow), None, 0, 48, size - 48
        if size < 60:
            return None
        label, payload_len, protocol, hops, flow, seq, ack, offset, flags, window = _TCP6.unpack_from(packet)
        if protocol != 6 or payload_len + 40 != size:
            return None  # extension headers, not TCP, or a length that does not add up
        key = (label, hops, flow, ack, window)
        ip_len = 40
    else:
        return None
    header_len = ip_len + (offset >> 4) * 4
    if header_len < ip_len + 20 or header_len >= size:
        return None
    if flags & ~_MERGEABLE_FLAGS & 0xFF or not flags & TCP_FLAG_ACK:
        return None
    if header_len > ip_len + 20:
        key += (packet[ip_len + 20:header_len],)  # TCP options (timestamps) must match too
    return key, seq, flags, header_len, size - header_len


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ipv4_header_checksum(header: bytes | bytearray) -> int:
    words = struct.unpack(f"!{len(header) // 2}H", header)
    return ~_fold(sum(words) - words[5]) & 0xFFFF  # words[5] is the checksum field itself


def pseudo_header_sum(header: bytes | bytearray, version: int, length: int, protocol: int = 6) -> int:
    """The folded, uncomplemented pseudo-header sum the kernel expects with NEEDS_CSUM."""
    if version == 4:
        addresses = header[12:20]
    else:
        addresses = header[8:40]
    words = struct.unpack(f"!{len(addresses) // 2}H", addresses)
    return _fold(sum(words) + protocol + length)


# The IP header of a segment: what changes per segment packed between the parts
# that do not. IPv4: (version to TOS), total length, ID, (flags to protocol),
# header checksum, (addresses and options). IPv6: (version to flow label),
# payload length, (next header to addresses and extension headers).
_IPV4_LAYOUT = "!2sHH4sH"


def _segment_packer(header: bytes, version: int, ip_len: int, transport_layout: str) -> tuple:
    """``pack`` for a segment's headers (the IP layout above, then
    ``transport_layout``), the unchanging parts of the IP header, and for IPv4
    its ID and the sum of its words without length, ID and checksum (each
    segment adds its own)."""
    if version == 6:  # ip_len is past any extension headers, which are copied as they are
        return struct.Struct(f"!4sH{ip_len - 6}s{transport_layout}").pack, header[0:4], header[6:ip_len], b"", 0, 0
    ip_a, ip_b, ip_c = header[0:2], header[6:10], header[12:ip_len]
    ip_id0 = int.from_bytes(header[4:6], "big")
    ip_sum0 = sum(struct.unpack(f"!{ip_len // 2}H", ip_a + bytes(4) + ip_b + bytes(2) + ip_c))
    pack = struct.Struct(f"{_IPV4_LAYOUT}{ip_len - 12}s{transport_layout}").pack
    return pack, ip_a, ip_b, ip_c, ip_id0, ip_sum0


def _ipv4_checksum(partial_sum: int) -> int:
    partial_sum = (partial_sum & 0xFFFF) + (partial_sum >> 16)
    return ~((partial_sum & 0xFFFF) + (partial_sum >> 16)) & 0xFFFF


def _ipv6_unfragmented(packet: bytes | memoryview) -> tuple[int, int] | None:
    """(upper-layer protocol, where its header starts) past IPv6 extension
    headers, or None for a malformed chain or one with a fragment header
    (a super-packet is never a fragment)."""
    head = bytes(packet[:min(len(packet), 2048)])  # the headers only: no copy of the payload
    walked = ipv6_upper_layer(head)
    if walked is None or walked[1] + 8 > len(head):
        return None
    protocol, start = head[6], 40
    while start < walked[1]:  # a second walk, cheap and rare: is one of them a fragment header?
        if protocol == IPV6_FRAGMENT:
            return None
        protocol, start = head[start], start + (8 if protocol == IPV6_FRAGMENT else (head[start + 1] + 1) * 8)
    return walked[0], walked[1]


def _too_long(version: int, header_len: int, gso_size: int, total_payload: int) -> bool:
    """Whether the first (the largest) segment's IPv4 total length or IPv6
    payload length would not fit its 16-bit field: the super-packet is not one
    a kernel hands over."""
    return header_len + min(gso_size, total_payload) - (40 if version == 6 else 0) > MAX_MERGED


def split(packet: bytes | memoryview, gso_type: int, gso_size: int) -> list[PartialChecksumPacket]:
    """MSS-sized segments of a TCP super-packet (GSO_TCPV4 or GSO_TCPV6), each a
    complete IP packet whose TCP checksum holds the pseudo-header sum only.

    Per segment: IP total length (IPv6 payload length), IPv4 ID + i with its
    header checksum, sequence number + i * MSS, FIN and PSH on the last
    segment only, CWR on the first only. IPv6 extension headers (hop-by-hop,
    routing, destination options) are walked and copied into every segment.
    Returns [] for what it cannot cut: not TCP over IPv4 or IPv6 (the version
    the GSO type says), an IPv4 header shorter than 20 bytes, a malformed or
    fragmented header chain, no payload, no segment size, or segments too
    long for their length field, which the kernel does not hand over; the
    caller passes such a packet on whole (tun/linux.py), so nothing is
    dropped here. Never raises for the bytes it is given.

    This runs for every packet sent, so each header is one struct.pack of the
    fields that change between the parts that do not.
    """
    version = 4 if gso_type & ~GSO_ECN == GSO_TCPV4 else 6
    if len(packet) <= 40 or packet[0] >> 4 != version:
        return []  # too short for a header and a byte of payload, or not the IP version the GSO type says
    if version == 4:
        ip_len = (packet[0] & 0x0F) * 4
        if ip_len < 20 or packet[9] != 6:
            return []
    else:
        ip_len = 40
        if packet[6] != 6:
            walked = _ipv6_unfragmented(packet)
            if walked is None or walked[0] != 6:
                return []
            ip_len = walked[1]
    if ip_len + 20 > len(packet):
        return []
    tcp_len = (packet[ip_len + 12] >> 4) * 4
    header = bytes(packet[:ip_len + tcp_len])
    payload = memoryview(packet)[ip_len + tcp_len:]
    total_payload = len(payload)
    if gso_size <= 0 or total_payload <= 0 or tcp_len < 20 or _too_long(version, len(header), gso_size, total_payload):
        return []
    count = (total_payload + gso_size - 1) // gso_size
    seq0 = int.from_bytes(header[ip_len + 4:ip_len + 8], "big")
    flags = [header[ip_len + 13] & ~(TCP_FLAG_FIN | TCP_FLAG_PSH | TCP_FLAG_CWR)] * count
    flags[0] = header[ip_len + 13] & ~(TCP_FLAG_FIN | TCP_FLAG_PSH)
    flags[-1] = header[ip_len + 13] & ~(TCP_FLAG_CWR if count > 1 else 0)
    pseudo0 = pseudo_header_sum(header, version, 0)  # the segment length is added per segment
    # The TCP header: ports, (seq), acknowledgement and offset, (flags), window, (checksum), the rest.
    ports, ack = header[ip_len:ip_len + 4], header[ip_len + 8:ip_len + 13]
    window, rest = header[ip_len + 14:ip_len + 16], header[ip_len + 18:]
    pack, ip_a, ip_b, ip_c, ip_id0, ip_sum0 = _segment_packer(header, version, ip_len, f"4sI5sB2sH{tcp_len - 18}s")
    segments = []
    for index in range(count):
        start = index * gso_size
        chunk = payload[start:start + gso_size]
        tcp_length = tcp_len + len(chunk)
        pseudo = pseudo0 + tcp_length
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)  # pseudo0 is folded: one fold is enough
        seq = (seq0 + start) & 0xFFFFFFFF
        if version == 4:
            ip_id = (ip_id0 + index) & 0xFFFF
            ip_sum = _ipv4_checksum(ip_sum0 + ip_len + tcp_length + ip_id)
            header = pack(ip_a, ip_len + tcp_length, ip_id, ip_b, ip_sum, ip_c,
                          ports, seq, ack, flags[index], window, pseudo, rest)
        else:
            header = pack(ip_a, ip_len - 40 + tcp_length, ip_b, ports, seq, ack, flags[index], window, pseudo, rest)
        segments.append(PartialChecksumPacket(header + chunk))
    return segments


def split_datagrams(packet: bytes | memoryview, gso_size: int) -> list[PartialChecksumPacket]:
    """The datagrams of a UDP super-packet (GSO_UDP_L4, from a sender using
    UDP_SEGMENT), each a complete IP packet of ``gso_size`` bytes of payload
    (the last may be shorter) whose UDP checksum holds the pseudo-header sum only.

    Per datagram: IP total length (IPv6 payload length), IPv4 ID + i with its
    header checksum, UDP length; IPv6 extension headers are walked and copied
    into every datagram. Returns [] for what it cannot cut (not UDP over IPv4
    or IPv6, an IPv4 header shorter than 20 bytes, a broken header chain, no
    payload, no segment size, datagrams too long for their length field),
    which the caller passes on whole, as ``split``.
    """
    if len(packet) <= 28:
        return []  # too short for the headers and a byte of payload
    version = packet[0] >> 4
    if version == 4:
        ip_len = (packet[0] & 0x0F) * 4
        protocol = packet[9]
        if ip_len < 20:
            return []
    elif version != 6:
        return []
    else:
        ip_len = 40
        protocol = packet[6]
        if protocol != UDP:
            walked = _ipv6_unfragmented(packet)
            if walked is None:
                return []
            protocol, ip_len = walked
    payload = memoryview(packet)[ip_len + 8:]
    total_payload = len(payload)
    if protocol != UDP or gso_size <= 0 or total_payload <= 0 or _too_long(version, ip_len + 8, gso_size, total_payload):
        return []
    header = bytes(packet[:ip_len + 8])
    ports = header[ip_len:ip_len + 4]
    pseudo0 = pseudo_header_sum(header, version, 0, UDP)  # the datagram's length is added per datagram
    pack, ip_a, ip_b, ip_c, ip_id0, ip_sum0 = _segment_packer(header, version, ip_len, "4sHH")  # ports, length, sum
    datagrams = []
    for index, start in enumerate(range(0, total_payload, gso_size)):
        chunk = payload[start:start + gso_size]
        udp_length = 8 + len(chunk)
        pseudo = pseudo0 + udp_length
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
        if version == 4:
            ip_id = (ip_id0 + index) & 0xFFFF
            ip_sum = _ipv4_checksum(ip_sum0 + ip_len + udp_length + ip_id)
            header = pack(ip_a, ip_len + udp_length, ip_id, ip_b, ip_sum, ip_c, ports, udp_length, pseudo)
        else:
            header = pack(ip_a, ip_len - 40 + udp_length, ip_b, ports, udp_length, pseudo)
        datagrams.append(PartialChecksumPacket(header + chunk))
    return datagrams


def merged_plan(run: list[bytes], header_len: int, total: int, flags: int, mss: int) -> list:
    """The virtio header and buffers for one run of segments or datagrams written
    as one packet of ``total`` bytes; ``flags`` are the first TCP segment's flags
    with the last one's PSH."""
    header = bytearray(run[0][:header_len])
    if header[0] >> 4 == 4:
        ip_len, version, protocol = 20, 4, header[9]
        header[2:4] = total.to_bytes(2, "big")
        header[10:12] = ipv4_header_checksum(header[:ip_len]).to_bytes(2, "big")
    else:
        ip_len, version, protocol = 40, 6, header[6]
        header[4:6] = (total - 40).to_bytes(2, "big")
    if protocol == UDP:
        gso_type, checksum_offset = GSO_UDP_L4, UDP_CHECKSUM_OFFSET
        header[ip_len + 4:ip_len + 6] = (total - ip_len).to_bytes(2, "big")
    else:
        gso_type, checksum_offset = (GSO_TCPV4 if version == 4 else GSO_TCPV6), TCP_CHECKSUM_OFFSET
        header[ip_len + 13] = flags
    field = ip_len + checksum_offset
    header[field:field + 2] = pseudo_header_sum(header, version, total - ip_len, protocol).to_bytes(2, "big")
    vnet = VNET_HEADER.pack(F_NEEDS_CSUM, gso_type, header_len, mss, ip_len, checksum_offset)
    return [vnet, header, *(memoryview(packet)[header_len:] for packet in run)]


def single_plan(packet: bytes) -> list:
    """One packet as it is; a partial checksum is left for the kernel to finish.

    A PartialChecksumPacket without a TCP or UDP checksum where
    ``checksum_location`` looks (which the receiving core's checks keep out)
    is written plain, unchanged, as ``tun.finished`` would write it to a
    device without offload."""
    if type(packet) is PartialChecksumPacket:
        location = checksum_location(packet)
        if location is not None:
            return [VNET_HEADER.pack(F_NEEDS_CSUM, 0, 0, 0, *location), packet]
    return [PLAIN, packet]


def coalesce(packets: list[bytes], merge_datagrams: bool = True) -> list[list]:
    """Write plans for ``packets`` in their order; each is [virtio header, buffer, ...].
    UDP datagrams are merged only with ``merge_datagrams`` (a kernel with USO).

    A run grows while segments are of one flow (same key), in sequence (TCP),
    all but the last of the first one's size, and none before the last has
    PSH; it ends at 64 KiB or 64 packets.
    """
    plans: list[list] = []
    run: list[bytes] = []
    run_key = None
    run_header_len = run_flags = mss = last_size = next_seq = run_bytes = 0

    def flush() -> None:
        if len(run) == 1:
            plans.append(single_plan(run[0]))
        elif run:
            plans.append(merged_plan(run, run_header_len, run_bytes, run_flags, mss))
        run.clear()

    for packet in packets:
        parsed = parse_segment(packet)
        if parsed is None or (parsed[1] is None and not merge_datagrams):
            flush()
            plans.append(single_plan(packet))
            continue
        key, seq, flags, header_len, size = parsed
        if (run and key == run_key and seq == next_seq and last_size == mss and size <= mss
                and not run_flags & TCP_FLAG_PSH and run_bytes + size <= MAX_MERGED and len(run) < MAX_SEGMENTS):
            run.append(packet)
            run_flags |= flags & TCP_FLAG_PSH
        else:
            flush()
            run.append(packet)
            run_key, run_header_len, run_flags, mss, run_bytes = key, header_len, flags, size, header_len
        run_bytes += size
        last_size = size
        next_seq = None if seq is None else (seq + size) & 0xFFFFFFFF
    flush()
    return plans


# The same functions compiled (vpncrypt/_offload.c), with LinuxTun's write
# loop: split, split_datagrams and coalesce give what the ones above give
# (tests/tun/test_offload_compiled.py holds them to it); write_coalesced(fd,
# packets, merge_datagrams) plans as coalesce does and writes each plan with
# writev itself. The functions above stay the reference and the fallback.
try:
    from .. import _offload as COMPILED
except ImportError as error:  # not built (no compiler at install)
    COMPILED = None
    NOT_BUILT = f"the compiled module is not built: {error}"
else:
    NOT_BUILT = ""

_CHOSEN = COMPILED
_IN_USE = ""


def choose(pure: bool, why: str = "") -> str:
    """Run the pure-Python functions if ``pure`` (``why`` says who asked, e.g.
    "VPNCRYPT_PURE_PYTHON=1") or if the compiled ones are not built, else the
    compiled ones. Called once at start, before a device opens; returns what
    the daemon's start line says."""
    global _CHOSEN, _IN_USE
    if COMPILED is not None and not pure:
        _CHOSEN, _IN_USE = COMPILED, "compiled"
    else:
        _CHOSEN, _IN_USE = None, f"pure Python ({why if pure else NOT_BUILT})"
    return _IN_USE


def compiled():
    """vpncrypt._offload if it is the choice (by default where it is built),
    else None: LinuxTun takes its functions from it when it opens."""
    return _CHOSEN


def in_use() -> str:
    """What the last ``choose`` returned ("" before any)."""
    return _IN_USE
