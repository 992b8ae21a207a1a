"""The socket filter that refuses client IDs: its program, and what the real kernel does with it.

The kernel half runs on loopback sockets: datagrams with chosen client IDs
and lengths are sent, and what arrives is compared with what the filter
should have let through. A sentinel datagram (an ID never refused) closes
each round, so that "did not arrive" is known without waiting on a timeout.
"""

from __future__ import annotations

import random
import socket
import sys
import time

import pytest

from vpncrypt.core.wire import HEADER_LEN, KIND_DATA, encode_header
from vpncrypt.transport import id_filter
from vpncrypt.transport.linux import LINUX
from vpncrypt.transport.darwin import DARWIN
from vpncrypt.transport.udp import SOL_UDP, UdpTransport, open_server_transport

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="socket filters are Linux's")
SENTINEL_ID = 0xFFFF  # never refused in these tests


def run(instructions, data: bytes, steps: list | None = None) -> int:
    """A reference interpreter of the few cBPF instructions the builder uses,
    over ``data`` as the filter sees it (UDP header first): the return value.
    With ``steps``, the number of instructions run is appended to it."""
    a = pc = count = 0
    while True:
        code, jt, jf, k = instructions[pc]
        pc += 1
        count += 1
        if steps is not None and code == id_filter.BPF_RET | id_filter.BPF_K:
            steps.append(count)
        if code == id_filter.BPF_LD | id_filter.BPF_W | id_filter.BPF_LEN:
            a = len(data)
        elif code == id_filter.BPF_LD | id_filter.BPF_H | id_filter.BPF_ABS:
            if k + 2 > len(data):
                return 0  # the kernel ends a program that loads past the end with 0
            a = int.from_bytes(data[k:k + 2], "big")
        elif code == id_filter.BPF_RET | id_filter.BPF_K:
            return k
        elif code == id_filter.BPF_JMP | id_filter.BPF_JA:
            pc += k
        elif code == id_filter.BPF_JMP | id_filter.BPF_JEQ | id_filter.BPF_K:
            pc += jt if a == k else jf
        elif code == id_filter.BPF_JMP | id_filter.BPF_JGT | id_filter.BPF_K:
            pc += jt if a > k else jf
        elif code == id_filter.BPF_JMP | id_filter.BPF_JGE | id_filter.BPF_K:
            pc += jt if a >= k else jf
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


def as_filtered(client_id: int, length: int = 40) -> bytes:
    """A datagram as the filter sees it: 8 bytes of UDP header, then the datagram."""
    return bytes(8) + encode_header(KIND_DATA, 1234, client_id, 1) + bytes(max(0, length - HEADER_LEN))


def test_every_client_id_is_refused_exactly_when_in_the_set():
    rng = random.Random(10)
    ids = rng.sample(range(1 << 16), 300) + [0, 0xFFFF]
    code = id_filter.program(ids)
    refused = set(ids)
    for client_id in range(1 << 16):
        assert (run(code, as_filtered(client_id)) == 0) == (client_id in refused), client_id


@pytest.mark.parametrize("count", [0, 1, 2, 3, 7, 64, 65, 200])
def test_small_and_odd_sets(count):
    ids = list(range(5, 5 + 3 * count, 3))
    code = id_filter.program(ids)
    for client_id in range(0, 5 + 3 * count + 5):
        assert (run(code, as_filtered(client_id)) == 0) == (client_id in ids)


def test_the_largest_set_fits_the_kernels_limit_and_a_larger_one_is_refused():
    largest = id_filter.program(range(0, 2 * id_filter.MAX_IDS, 2))
    assert len(largest) <= id_filter.BPF_MAXINSNS
    # O(log n): no datagram runs more than 4 instructions, then 3 a level of the search (10 levels).
    steps: list[int] = []
    for client_id in range(2 * id_filter.MAX_IDS + 2):
        run(largest, as_filtered(client_id), steps)
    assert max(steps) <= 4 + 3 * 10 + 1
    with pytest.raises(ValueError):
        id_filter.program(range(id_filter.MAX_IDS + 1))
    with pytest.raises(ValueError):
        id_filter.program([1 << 16])


def test_a_datagram_too_short_for_a_header_is_accepted_whatever_it_names():
    code = id_filter.program([7])
    assert run(code, as_filtered(7, HEADER_LEN)) == 0
    for length in range(0, HEADER_LEN):
        assert run(code, (bytes(8) + encode_header(KIND_DATA, 1, 7, 1))[:8 + length]) == id_filter.ACCEPT


# --- the real kernel -------------------------------------------------------------------------


def datagram(client_id: int, serial: int, length: int = 64) -> bytes:
    """A datagram naming ``client_id``; ``serial`` rides in the counter field to tell them apart."""
    body = encode_header(KIND_DATA, 1234, client_id, serial)
    return body + bytes(max(0, length - len(body)))


def arrivals(receiver: UdpTransport, sender: socket.socket, plan: list[bytes], address) -> list[bytes]:
    """Send ``plan`` in rounds of 50, each closed by a sentinel; what arrived, in order, sentinels left out."""
    got: list[bytes] = []
    for start in range(0, len(plan), 50):
        for data in plan[start:start + 50]:
            sender.sendto(data, address)
        sender.sendto(datagram(SENTINEL_ID, 0xFFFFFFFF), address)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            batch = [d for d, _ in receiver.receive(64)]
            got.extend(batch)
            if any(d[2:4] == b"\xff\xff" and d[4:8] == b"\xff\xff\xff\xff" for d in batch):
                break
            time.sleep(0.001)
        else:
            raise AssertionError("the sentinel did not arrive")
    return [d for d in got if d[4:8] != b"\xff\xff\xff\xff"]


SOCKETS = [  # (listen address, address sent to, family of the sender)
    ("127.0.0.1", "127.0.0.1", socket.AF_INET),
    ("::1", "::1", socket.AF_INET6),
    ("::", "127.0.0.1", socket.AF_INET),  # IPv4 on a dual-stack socket
    ("::", "::1", socket.AF_INET6),
]


@pytest.fixture(params=SOCKETS, ids=["ipv4", "ipv6", "dual-stack-ipv4", "dual-stack-ipv6"])
def pair(request):
    listen, target, family = request.param
    receiver = open_server_transport(listen, 0, offload=False)
    sender = socket.socket(family, socket.SOCK_DGRAM)
    try:
        yield receiver, sender, (target, receiver.sock.getsockname()[1])
    finally:
        receiver.close()
        sender.close()


@linux_only
@pytest.mark.parametrize("refused", [[], [2], list(range(100, 400))], ids=["empty", "one", "300"])
def test_the_kernel_drops_exactly_the_datagrams_naming_a_refused_id(pair, refused):
    receiver, sender, address = pair
    assert receiver.refuse_client_ids(refused)
    assert receiver.refused_ids == tuple(sorted(refused))
    named = sorted({1, 2, 3, 99, 100, 101, 250, 398, 399, 400, 401, 0, 65534} | set(refused))
    plan = [datagram(client_id, serial) for serial, client_id in enumerate(named)]
    got = arrivals(receiver, sender, plan, address)
    assert got == [d for d in plan if int.from_bytes(d[2:4], "big") not in refused]


@linux_only
def test_short_datagrams_arrive_whatever_they_name_and_an_empty_set_detaches(pair):
    receiver, sender, address = pair
    assert receiver.refuse_client_ids([7])
    short = [datagram(7, 1)[:length] for length in (0, 1, 3, 4, 7)]
    whole = [datagram(7, 2, HEADER_LEN), datagram(7, 3, 1400)]
    assert arrivals(receiver, sender, short + whole, address) == short
    assert receiver.refuse_client_ids([])
    assert arrivals(receiver, sender, whole, address) == whole


@linux_only
def test_a_set_replaces_the_previous_one(pair):
    receiver, sender, address = pair
    receiver.refuse_client_ids([5, 6])
    receiver.refuse_client_ids([6, 8])
    plan = [datagram(client_id, client_id) for client_id in (5, 6, 7, 8)]
    assert arrivals(receiver, sender, plan, address) == [plan[0], plan[2]]


@linux_only
def test_a_gro_train_passes_or_is_refused_by_its_first_datagrams_id():
    """A UDP_SEGMENT send on loopback reaches a UDP_GRO socket as one coalesced
    packet, as a GRO train from a NIC does: the filter sees it once, so its
    first datagram's ID decides for the whole train."""
    receiver = open_server_transport("127.0.0.1", 0, offload=True)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = ("127.0.0.1", receiver.sock.getsockname()[1])
    try:
        assert receiver.gro
        receiver.refuse_client_ids([2])
        size = 100

        def train(ids: list[int], first_serial: int) -> list[bytes]:
            segments = [datagram(client_id, first_serial + i, size) for i, client_id in enumerate(ids)]
            sender.sendmsg([b"".join(segments)], [(SOL_UDP, LINUX.udp_segment, size.to_bytes(2, sys.byteorder))],
                           0, address)
            return segments

        led_by_accepted = train([1, 2, 2, 1], 10)
        train([2, 1, 1, 2], 20)
        sender.sendto(datagram(SENTINEL_ID, 0xFFFFFFFF), address)
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while not any(d[4:8] == b"\xff\xff\xff\xff" for d in got) and time.monotonic() < deadline:
            got += [d for d, _ in receiver.receive(64)]
            time.sleep(0.001)
        assert got[:-1] == led_by_accepted
    finally:
        receiver.close()
        sender.close()


def test_without_a_socket_filter_nothing_is_attached_and_the_log_says_so_once(caplog):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        transport = UdpTransport(sock, offload=False, options=DARWIN)
        with caplog.at_level("INFO", logger="vpncrypt"):
            assert not transport.refuse_client_ids([2])
            assert not transport.refuse_client_ids([2, 3])
        assert transport.refused_ids == ()
        lines = [r.getMessage() for r in caplog.records if "user space only" in r.getMessage()]
        assert len(lines) == 1 and "macOS" in lines[0]
    finally:
        sock.close()
