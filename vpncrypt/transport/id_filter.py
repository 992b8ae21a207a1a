"""A classic BPF socket filter that refuses datagrams naming given client IDs.

Pure: it builds the program's bytes (an array of ``struct sock_filter``,
linux/filter.h: ``{__u16 code; __u8 jt; __u8 jf; __u32 k;}`` in host byte
order); attaching it (SO_ATTACH_FILTER, socket(7)) is ``UdpTransport``'s.

Where the filter looks: on a UDP socket the kernel runs the filter from
``udp_queue_rcv_one_skb`` (``sk_filter_trim_cap``, IPv4 and IPv6 alike, and
for IPv4 datagrams on a dual-stack IPv6 socket), when the packet's data
starts at the UDP header. So the datagram begins at offset 8 (UDP_HEADER_LEN),
and its 16-bit client ID, the second field of the header in
docs/PROTOCOL.md, at offset 10; loads are in network byte order, as on the
wire. tests/transport/test_id_filter.py checks this offset against the
running kernel for all three socket kinds.

The program (Documentation/networking/filter.rst for the instruction set):
a datagram too short to hold a vpncrypt header is accepted, so that the core
counts it as ``bad_length`` (a load past the end would end the program with
0, a drop); then a binary search over the sorted IDs, a JEQ and a JGT per
level, so a datagram costs O(log n) instructions whatever the set's size. A
conditional jump reaches at most 255 instructions ahead, so a subtree longer
than that is jumped over with a JA (32-bit). A match returns 0: the kernel
drops the datagram and counts it only among the socket's drops
(/proc/net/udp, with those of a full buffer; vpncrypt never sees it).
Anything else returns the whole datagram.

While a filter is attached the kernel verifies the UDP checksum of each
datagram before the filter runs (udp_queue_rcv_one_skb), where the NIC has
not already: so an empty set detaches the filter rather than attaching one
that accepts everything.

A datagram coalesced by UDP_GRO (a train of one flow's datagrams) passes the
filter once, as one packet: only the first datagram's ID is looked at, and
the whole train is refused or taken with it. A train is one 5-tuple, so
it holds one sender's datagrams (or a forger's who also forges that
sender's address and port); the ones taken whatever their ID are refused by
the core as before. tests/transport/test_id_filter.py shows this on the
running kernel with a UDP_SEGMENT send to a UDP_GRO socket.
"""

from __future__ import annotations

import struct
from typing import Sequence

UDP_HEADER_LEN = 8  # what precedes the datagram when a socket filter runs on a UDP socket
CLIENT_ID_OFFSET = UDP_HEADER_LEN + 2  # the header is word0 (16 bits), client ID (16), counter (32)
SHORTEST_CHECKED = UDP_HEADER_LEN + 8  # a whole vpncrypt header (wire.HEADER_LEN); shorter ones pass
BPF_MAXINSNS = 4096  # linux/bpf_common.h: the longest program the kernel takes
MAX_IDS = 1000  # four instructions an ID at most, with room to spare under BPF_MAXINSNS

# linux/bpf_common.h
BPF_LD, BPF_JMP, BPF_RET = 0x00, 0x05, 0x06
BPF_W, BPF_H = 0x00, 0x08
BPF_ABS, BPF_LEN = 0x20, 0x80
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE = 0x00, 0x10, 0x20, 0x30
BPF_K = 0x00
ACCEPT = 0xFFFFFFFF  # keep the whole datagram (sk_filter_trim_cap trims to what is returned)
DROP = 0
_JUMP_REACH = 255  # jt and jf are 8 bits

SOCK_FILTER = struct.Struct("HBBI")  # struct sock_filter, native layout

Instruction = tuple[int, int, int, int]  # (code, jt, jf, k)


def _search(ids: Sequence[int]) -> list[Instruction]:
    """A subtree for sorted ``ids``, the ID in the accumulator: drop on a match, accept on none."""
    if not ids:
        return [(BPF_RET | BPF_K, 0, 0, ACCEPT)]
    middle = len(ids) // 2
    pivot = ids[middle]
    lower, higher = _search(ids[:middle]), _search(ids[middle + 1:])
    code = [(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, pivot), (BPF_RET | BPF_K, 0, 0, DROP)]
    if len(lower) <= _JUMP_REACH:
        code.append((BPF_JMP | BPF_JGT | BPF_K, len(lower), 0, pivot))
    else:
        code += [(BPF_JMP | BPF_JGT | BPF_K, 0, 1, pivot), (BPF_JMP | BPF_JA, 0, 0, len(lower))]
    return code + lower + higher


def program(client_ids: Sequence[int]) -> list[Instruction]:
    """The instructions refusing datagrams that name any of ``client_ids``
    (16-bit IDs, any order, duplicates ignored). An empty set gives a
    program that accepts everything. Raises ValueError for an ID outside
    0-65535 or more than MAX_IDS of them."""
    ids = sorted(set(client_ids))
    if len(ids) > MAX_IDS:
        raise ValueError(f"at most {MAX_IDS} client IDs fit in one socket filter, not {len(ids)}")
    if ids and not (0 <= ids[0] and ids[-1] <= 0xFFFF):
        raise ValueError("client IDs are 16-bit numbers")
    return [
        (BPF_LD | BPF_W | BPF_LEN, 0, 0, 0),
        # Too short for a header: accepted (the next instruction is the accept).
        (BPF_JMP | BPF_JGE | BPF_K, 1, 0, SHORTEST_CHECKED),
        (BPF_RET | BPF_K, 0, 0, ACCEPT),
        (BPF_LD | BPF_H | BPF_ABS, 0, 0, CLIENT_ID_OFFSET),
    ] + _search(ids)


def encode(instructions: Sequence[Instruction]) -> bytes:
    """The program as the array of ``struct sock_filter`` that ``struct
    sock_fprog`` points to."""
    return b"".join(SOCK_FILTER.pack(*instruction) for instruction in instructions)
