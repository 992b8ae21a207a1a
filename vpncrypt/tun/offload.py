"""TCP segmentation offload for a TUN device with virtio headers, both ways.

Pure functions, no I/O. ``split(...)`` cuts a TCP super-packet the kernel
handed over (TSO) into MSS-sized segments, as a NIC would, leaving their TCP
checksums partial. ``coalesce(packets)`` turns a batch of IP packets into
write plans (a 10-byte virtio_net_hdr and the buffers to follow it). Runs of
consecutive segments of one TCP flow become one packet marked GSO, which the
kernel takes as it would from a NIC with receive offload: the receiving TCP
stack sees one large segment and sends one ACK for it instead of one for every
second segment. Checksums are left to the kernel (NEEDS_CSUM): the TCP field
gets only the pseudo-header sum, and computing more in Python would cost as
much as the cipher. A packet that arrived with a partial checksum
(PartialChecksumPacket) is handed over the same way. The wire format is
untouched.
"""

from __future__ import annotations

import struct

from ..inner import PartialChecksumPacket, checksum_location

VNET_HEADER = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HEADER_LEN = VNET_HEADER.size
PLAIN = bytes(VNET_HEADER_LEN)  # no offload: a packet written as it is
F_NEEDS_CSUM = 1
GSO_TCPV4 = 1
GSO_TCPV6 = 4
TCP_CHECKSUM_OFFSET = 16
TCP_FLAG_FIN = 0x01
TCP_FLAG_PSH = 0x08
TCP_FLAG_ACK = 0x10
TCP_FLAG_CWR = 0x80
GSO_ECN = 0x80
_MERGEABLE_FLAGS = TCP_FLAG_ACK | TCP_FLAG_PSH  # no SYN, FIN, RST, URG, ECE, CWR
MAX_MERGED = 65535  # the IPv4 total length / IPv6 payload length field


class Segment:
    """What merging needs to know of one TCP packet."""

    __slots__ = ("packet", "ip_len", "header_len", "key", "seq", "flags", "payload_len")

    def __init__(self, packet, ip_len, header_len, key, seq, flags, payload_len) -> None:
        self.packet = packet
        self.ip_len = ip_len
        self.header_len = header_len
        self.key = key
        self.seq = seq
        self.flags = flags
        self.payload_len = payload_len


def parse_segment(packet: bytes) -> Segment | None:
    """A TCP segment that may be merged with its neighbours, or None."""
    size = len(packet)
    if size < 40:
        return None
    version = packet[0] >> 4
    if version == 4:
        ip_len = (packet[0] & 0x0F) * 4
        if (ip_len != 20 or packet[9] != 6 or (packet[6] & 0x3F) or packet[7]
                or int.from_bytes(packet[2:4], "big") != size):
            return None  # options, not TCP, a fragment, or a length that does not add up
        # What must be equal across a run: TOS, DF, TTL, protocol, addresses.
        ip_key = packet[1:2] + packet[6:7] + packet[8:10] + packet[12:20]
    elif version == 6:
        ip_len = 40
        if size < 60 or packet[6] != 6 or int.from_bytes(packet[4:6], "big") + 40 != size:
            return None  # extension headers, not TCP, or a length that does not add up
        ip_key = packet[0:4] + packet[7:8] + packet[8:40]
    else:
        return None
    tcp_len = (packet[ip_len + 12] >> 4) * 4
    header_len = ip_len + tcp_len
    if tcp_len < 20 or header_len > size:
        return None
    flags = packet[ip_len + 13]
    if flags & ~_MERGEABLE_FLAGS & 0xFF or not flags & TCP_FLAG_ACK:
        return None
    # Ports, acknowledgement number, window and options must match too.
    key = ip_key + packet[ip_len:ip_len + 4] + packet[ip_len + 8:ip_len + 12] + packet[ip_len + 14:ip_len + 16] \
        + packet[ip_len + 20:header_len]
    seq = int.from_bytes(packet[ip_len + 4:ip_len + 8], "big")
    return Segment(packet, ip_len, header_len, key, seq, flags, size - header_len)


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


def split(packet: bytes | memoryview, gso_type: int, gso_size: int) -> list[PartialChecksumPacket]:
    """MSS-sized segments of a TCP super-packet (GSO_TCPV4 or GSO_TCPV6), each a
    complete IP packet whose TCP checksum holds the pseudo-header sum only.

    Per segment: IP total length (IPv6 payload length), IPv4 ID + i with its
    header checksum, sequence number + i * MSS, FIN and PSH on the last
    segment only, CWR on the first only. Returns [] for what is not plain TCP
    over IPv4 or IPv6 (no IPv6 extension headers), which the kernel does not
    hand over with the offloads asked for.
    """
    version = 4 if gso_type & ~GSO_ECN == GSO_TCPV4 else 6
    if version == 4:
        ip_len = (packet[0] & 0x0F) * 4
        if packet[9] != 6:
            return []
    else:
        ip_len = 40
        if packet[6] != 6:
            return []
    header_len = ip_len + (packet[ip_len + 12] >> 4) * 4
    template = bytearray(packet[:header_len])
    payload = memoryview(packet)[header_len:]
    total_payload = len(payload)
    if gso_size <= 0 or total_payload <= 0:
        return []
    seq0 = int.from_bytes(template[ip_len + 4:ip_len + 8], "big")
    flags0 = template[ip_len + 13]
    pseudo0 = pseudo_header_sum(template, version, 0)  # the segment length is added per segment
    if version == 4:
        ip_id0 = int.from_bytes(template[4:6], "big")
        template[2:6] = b"\0\0\0\0"
        template[10:12] = b"\0\0"
        ip_sum0 = sum(struct.unpack(f"!{ip_len // 2}H", template[:ip_len]))  # without length, ID, checksum
    segments = []
    last = (total_payload - 1) // gso_size
    for index, start in enumerate(range(0, total_payload, gso_size)):
        chunk = payload[start:start + gso_size]
        header = bytearray(template)
        tcp_length = header_len - ip_len + len(chunk)
        if version == 4:
            total = header_len + len(chunk)
            ip_id = (ip_id0 + index) & 0xFFFF
            header[2:4] = total.to_bytes(2, "big")
            header[4:6] = ip_id.to_bytes(2, "big")
            header[10:12] = (~_fold(ip_sum0 + total + ip_id) & 0xFFFF).to_bytes(2, "big")
        else:
            header[4:6] = tcp_length.to_bytes(2, "big")
        header[ip_len + 4:ip_len + 8] = ((seq0 + start) & 0xFFFFFFFF).to_bytes(4, "big")
        flags = flags0
        if index != last:
            flags &= ~(TCP_FLAG_FIN | TCP_FLAG_PSH)
        if index:
            flags &= ~TCP_FLAG_CWR
        header[ip_len + 13] = flags
        header[ip_len + 16:ip_len + 18] = _fold(pseudo0 + tcp_length).to_bytes(2, "big")
        header += chunk
        segments.append(PartialChecksumPacket(header))
    return segments


def merged_plan(run: list[Segment]) -> list:
    """The virtio header and buffers for one run of segments written as one packet."""
    first, last = run[0], run[-1]
    payload = sum(s.payload_len for s in run)
    header = bytearray(first.packet[:first.header_len])
    ip_len, header_len = first.ip_len, first.header_len
    total = header_len + payload
    version = header[0] >> 4
    if version == 4:
        header[2:4] = total.to_bytes(2, "big")
        header[10:12] = ipv4_header_checksum(header[:ip_len]).to_bytes(2, "big")
        gso_type = GSO_TCPV4
    else:
        header[4:6] = (total - 40).to_bytes(2, "big")
        gso_type = GSO_TCPV6
    header[ip_len + 13] = first.flags | (last.flags & TCP_FLAG_PSH)
    header[ip_len + 16:ip_len + 18] = pseudo_header_sum(header, version, total - ip_len).to_bytes(2, "big")
    vnet = VNET_HEADER.pack(F_NEEDS_CSUM, gso_type, header_len, first.payload_len, ip_len, TCP_CHECKSUM_OFFSET)
    return [vnet, header, *(memoryview(s.packet)[s.header_len:] for s in run)]


def single_plan(packet: bytes) -> list:
    """One packet as it is; a partial checksum is left for the kernel to finish."""
    if type(packet) is PartialChecksumPacket:
        start, offset = checksum_location(packet)  # type: ignore[misc]  # checked when it was opened
        return [VNET_HEADER.pack(F_NEEDS_CSUM, 0, 0, 0, start, offset), packet]
    return [PLAIN, packet]


def coalesce(packets: list[bytes]) -> list[list]:
    """Write plans for ``packets`` in their order; each is [virtio header, buffer, ...]."""
    plans: list[list] = []
    run: list[Segment] = []
    run_bytes = 0

    def flush() -> None:
        if len(run) == 1:
            plans.append(single_plan(run[0].packet))
        elif run:
            plans.append(merged_plan(run))
        run.clear()

    for packet in packets:
        segment = parse_segment(packet)
        if segment is None or not segment.payload_len:
            flush()
            plans.append(single_plan(packet))
            continue
        if run:
            last = run[-1]
            if (segment.key == last.key and segment.seq == (last.seq + last.payload_len) & 0xFFFFFFFF
                    and last.payload_len == run[0].payload_len and segment.payload_len <= run[0].payload_len
                    and not last.flags & TCP_FLAG_PSH and run_bytes + segment.payload_len <= MAX_MERGED):
                run.append(segment)
                run_bytes += segment.payload_len
                continue
            flush()
        run.append(segment)
        run_bytes = segment.header_len + segment.payload_len
    flush()
    return plans
