"""Traffic for the demo, end-to-end tests and benchmarks, run inside a namespace:
``python -m tests.netlab.traffic MODE ...``.

Every mode is bounded in bytes, datagrams and time, and prints one JSON line.
  sink ADDR PORT              accept one TCP connection, read to EOF: bytes and SHA-256
  source ADDR PORT BYTES RATE connect, send BYTES of seeded data (RATE bytes/s, 0 = flat out)
  serve-source ADDR PORT BYTES RATE   accept one connection and send to it (the other direction)
  fetch ADDR PORT             connect and read to EOF
  udp-echo ADDR PORT COUNT    echo COUNT datagrams back
  udp-ping ADDR PORT COUNT    send COUNT datagrams to an echo, count the answers
  udp-gso-source ADDR PORT COUNT SIZE  send COUNT numbered datagrams of SIZE bytes (SIZE/2 at the
                              end of each burst), 16 per sendmsg with UDP_SEGMENT, as QUIC stacks do
  udp-sink ADDR PORT COUNT    receive numbered datagrams until COUNT or 3 s of silence: how many
                              arrived, how many were intact, their sizes
  udp-flood ADDR PORT SECONDS SIZE  send SIZE-byte datagrams flat out for SECONDS, 32 per sendmsg
                              with UDP_SEGMENT (a benchmark's sender)
  udp-count ADDR PORT         count datagrams and bytes until 2 s of silence, with UDP_GRO
  garbage-flood ADDR PORT KIND CLIENT_ID RATE SECONDS SIZE MAX  send at most MAX vpncrypt-shaped
                              garbage datagrams of SIZE bytes at RATE a second for SECONDS: KIND,
                              the current time, CLIENT_ID, random counters, random bytes after;
                              batched with UDP_SEGMENT (a benchmark's attacker)
  capture IFACE PORT COUNT    capture COUNT UDP payloads to PORT on IFACE (hex)
  hostile ADDR PORT FILE      send the hostile datagrams listed in FILE (hex), report any reply
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
import sys
import time

DEADLINE = 60.0  # no mode runs longer than this
CHUNK = 65536


def seeded_data(size: int):
    rng = random.Random(size)
    sent = 0
    while sent < size:
        block = rng.randbytes(min(CHUNK, size - sent))
        sent += len(block)
        yield block


def family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def accept_one(address: str, port: int) -> socket.socket:
    listener = socket.socket(family(address), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(1)
    listener.settimeout(DEADLINE)
    print(json.dumps({"listening": port}), flush=True)
    connection, _ = listener.accept()
    listener.close()
    connection.settimeout(DEADLINE)
    return connection


def connect(address: str, port: int) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection((address, port), timeout=DEADLINE)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def receive_all(connection: socket.socket) -> dict:
    digest, total, start = hashlib.sha256(), 0, time.monotonic()
    while time.monotonic() - start < DEADLINE:
        data = connection.recv(CHUNK)
        if not data:
            break
        digest.update(data)
        total += len(data)
    return {"bytes": total, "sha256": digest.hexdigest(), "seconds": time.monotonic() - start}


def send_all(connection: socket.socket, size: int, rate: float) -> dict:
    digest, sent, start = hashlib.sha256(), 0, time.monotonic()
    for block in seeded_data(size):
        connection.sendall(block)
        digest.update(block)
        sent += len(block)
        if rate:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        if time.monotonic() - start > DEADLINE:
            break
    connection.shutdown(socket.SHUT_WR)
    connection.recv(1)  # wait for the peer to close: everything arrived
    return {"bytes": sent, "sha256": digest.hexdigest(), "seconds": time.monotonic() - start}


def udp_echo(address: str, port: int, count: int) -> dict:
    sock = socket.socket(family(address), socket.SOCK_DGRAM)
    sock.bind((address, port))
    sock.settimeout(10)
    print(json.dumps({"listening": port}), flush=True)
    echoed = 0
    try:
        while echoed < count:
            data, peer = sock.recvfrom(65536)
            sock.sendto(data, peer)
            echoed += 1
    except socket.timeout:
        pass
    return {"echoed": echoed}


def udp_ping(address: str, port: int, count: int) -> dict:
    sock = socket.socket(family(address), socket.SOCK_DGRAM)
    sock.settimeout(2)
    answered = 0
    for i in range(count):
        payload = struct.pack("!I", i) * 100
        sock.sendto(payload, (address, port))
        try:
            if sock.recv(65536) == payload:
                answered += 1
        except socket.timeout:
            pass
    return {"sent": count, "answered": answered}


SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
SEGMENTS_PER_SEND = 16
FLOOD_SEGMENTS = 32
FLOOD_MAX_DATAGRAMS = 20_000_000


def numbered_datagram(index: int, size: int) -> bytes:
    """Datagram ``index`` of ``size`` bytes: its number and length, then seeded bytes."""
    return struct.pack("!IH", index, size) + random.Random(index).randbytes(size - 6)


def udp_gso_source(address: str, port: int, count: int, size: int) -> dict:
    """Bursts of up to 16 datagrams, each burst one sendmsg with UDP_SEGMENT: all
    ``size`` bytes but the last of a burst, which is shorter, as a GSO sender's tail is."""
    sock = socket.socket(family(address), socket.SOCK_DGRAM)
    sock.connect((address, port))
    segment = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
    sent = calls = 0
    start = time.monotonic()
    while sent < count and time.monotonic() - start < DEADLINE:
        burst = min(SEGMENTS_PER_SEND, count - sent)
        sizes = [size] * (burst - 1) + [size // 2 if burst > 1 else size]
        data = b"".join(numbered_datagram(sent + i, length) for i, length in enumerate(sizes))
        sock.sendmsg([data], segment if burst > 1 else [])
        sent += burst
        calls += 1
        time.sleep(0.002)  # paced: the test is about boundaries, not about overflowing queues
    return {"sent": sent, "calls": calls}


def udp_receiver(address: str, port: int) -> socket.socket:
    """A bound UDP socket with room for bursts, announced as listening."""
    sock = socket.socket(family(address), socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((address, port))
    print(json.dumps({"listening": port}), flush=True)
    return sock


def udp_sink(address: str, port: int, count: int) -> dict:
    sock = udp_receiver(address, port)
    sock.settimeout(10)
    received = intact = 0
    sizes: set[int] = set()
    start = time.monotonic()
    try:
        while received < count and time.monotonic() - start < DEADLINE:
            data = sock.recv(65536)
            received += 1
            sizes.add(len(data))
            if len(data) >= 6:
                index, size = struct.unpack_from("!IH", data)
                intact += size == len(data) and data == numbered_datagram(index, size)
            sock.settimeout(3)
    except socket.timeout:
        pass
    return {"received": received, "intact": intact, "sizes": sorted(sizes)}


def udp_flood(address: str, port: int, seconds: float, size: int) -> dict:
    sock = socket.socket(family(address), socket.SOCK_DGRAM)
    sock.connect((address, port))
    burst = bytes(size * FLOOD_SEGMENTS)
    segment = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
    sent = 0
    start = time.monotonic()
    end = start + min(seconds, DEADLINE)
    while time.monotonic() < end and sent < FLOOD_MAX_DATAGRAMS:
        try:
            sock.sendmsg([burst], segment)
            sent += FLOOD_SEGMENTS
        except OSError:  # ENOBUFS from a full device queue: what a flood meets
            pass
    return {"sent": sent, "seconds": time.monotonic() - start}


GARBAGE_POOL = 4096  # distinct garbage datagrams, sent round


def garbage_flood(address: str, port: int, kind: int, client_id: int, rate: float, seconds: float, size: int,
                  most: int) -> dict:
    """Datagrams that pass every check a receiver makes before its cipher
    (length, kind, client ID, time) and then fail authentication: the
    header names ``kind`` (the receiver's data kind), ``client_id`` and the
    current second, the counter and the rest are random. A pool of
    GARBAGE_POOL of them is made once and sent round (their timestamps
    rewritten when the second changes), as many per sendmsg as UDP_SEGMENT
    allows, paced to ``rate`` a second (what the kernel refuses counts as
    offered). Bounded by ``most`` datagrams, ``seconds`` and DEADLINE."""
    if not 24 <= size <= 65507 or rate <= 0:
        raise SystemExit("garbage-flood: SIZE must be 24 to 65507 bytes, RATE above 0")
    sock = socket.socket(family(address), socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect((address, port))
    per_call = max(1, min(64, 65507 // size))  # the kernel's limits for one UDP_SEGMENT send
    segment = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
    calls = -(-GARBAGE_POOL // per_call)
    rng = random.SystemRandom()
    batches = [bytearray(rng.randbytes(size * per_call)) for _ in range(calls)]
    header = struct.Struct("!HHI")

    def stamp(second: int) -> None:
        word0 = (kind << 10) | (second & 1023)
        for batch in batches:
            for offset in range(0, len(batch), size):
                header.pack_into(batch, offset, word0, client_id, rng.getrandbits(32))

    second = int(time.time())
    stamp(second)
    print(json.dumps({"flooding": rate}), flush=True)
    sent = refused = 0
    index = 0
    start = time.monotonic()
    end = start + min(seconds, DEADLINE)
    while sent + refused < most:
        now = time.monotonic()
        if now >= end:
            break
        due = int(rate * (now - start)) - sent - refused
        if due < per_call:
            time.sleep((per_call - due) / rate)
            continue
        if int(time.time()) != second:
            second = int(time.time())
            stamp(second)
        count = min(per_call, most - sent - refused)
        batch = batches[index]
        index = (index + 1) % calls
        try:
            if count == per_call:
                sock.sendmsg([batch], segment if count > 1 else [])
            else:
                sock.sendmsg([memoryview(batch)[:size * count]], segment if count > 1 else [])
            sent += count
        except OSError:  # ENOBUFS from a full queue: counted, not retried
            refused += count
            time.sleep(0.0005)
    elapsed = time.monotonic() - start
    used = os.times()
    return {"sent": sent, "refused": refused, "seconds": elapsed, "rate": sent / elapsed if elapsed else 0.0,
            "per_call": per_call, "size": size, "cpu_seconds": used.user + used.system}


def udp_count(address: str, port: int) -> dict:
    """Datagrams that arrive, counted cheaply: with UDP_GRO one read may hold many."""
    sock = udp_receiver(address, port)
    sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    sock.settimeout(DEADLINE)
    buffer = bytearray(1 << 17)
    datagrams = total = 0
    first = last = time.monotonic()
    try:
        while last - first < DEADLINE:
            size, ancillary, _, _ = sock.recvmsg_into([buffer], socket.CMSG_SPACE(4))
            last = time.monotonic()
            if not datagrams:
                first = last
                sock.settimeout(2)
            segment = next((int.from_bytes(data[:4], sys.byteorder) for level, kind, data in ancillary
                            if level == SOL_UDP and kind == UDP_GRO), size) or size
            datagrams += -(-size // segment)
            total += size
    except socket.timeout:
        pass
    return {"datagrams": datagrams, "bytes": total, "seconds": last - first}


def capture(interface: str, port: int, count: int) -> dict:
    """UDP payloads to ``port`` seen on ``interface`` (IPv4), via a raw packet socket."""
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    raw.bind((interface, 0))
    raw.settimeout(DEADLINE)
    print(json.dumps({"capturing": interface}), flush=True)
    found, start = [], time.monotonic()
    while len(found) < count and time.monotonic() - start < DEADLINE:
        frame = raw.recv(65600)
        ip = frame[14:]
        if ip[9] != 17:
            continue
        header = (ip[0] & 0x0F) * 4
        if struct.unpack_from("!H", ip, header + 2)[0] != port:
            continue
        found.append(ip[header + 8:].hex())
    return {"datagrams": found}


def hostile(address: str, port: int, path: str) -> dict:
    sock = socket.socket(family(address), socket.SOCK_DGRAM)
    sock.setblocking(False)
    sent = 0
    with open(path) as file:
        datagrams = [bytes.fromhex(line.strip()) for line in file if line.strip()]
    for datagram in datagrams[:20000]:
        sock.sendto(datagram, (address, port))
        sent += 1
        if sent % 20 == 0:
            # Paced (2,000 a second): a flood that overflows the socket buffer
            # would make the kernel, not vpncrypt, drop what the test counts.
            time.sleep(0.01)
    time.sleep(1.0)
    replies = 0
    while True:
        try:
            sock.recv(65536)
            replies += 1
        except BlockingIOError:
            break
    return {"sent": sent, "replies": replies}


def main(argv: list[str]) -> None:
    mode, args = argv[0], argv[1:]
    if mode == "sink":
        result = receive_all(accept_one(args[0], int(args[1])))
    elif mode == "source":
        result = send_all(connect(args[0], int(args[1])), int(args[2]), float(args[3]))
    elif mode == "serve-source":
        result = send_all(accept_one(args[0], int(args[1])), int(args[2]), float(args[3]))
    elif mode == "fetch":
        connection = connect(args[0], int(args[1]))
        result = receive_all(connection)
        connection.close()
    elif mode == "udp-echo":
        result = udp_echo(args[0], int(args[1]), int(args[2]))
    elif mode == "udp-ping":
        result = udp_ping(args[0], int(args[1]), int(args[2]))
    elif mode == "udp-gso-source":
        result = udp_gso_source(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif mode == "udp-sink":
        result = udp_sink(args[0], int(args[1]), int(args[2]))
    elif mode == "udp-flood":
        result = udp_flood(args[0], int(args[1]), float(args[2]), int(args[3]))
    elif mode == "udp-count":
        result = udp_count(args[0], int(args[1]))
    elif mode == "garbage-flood":
        result = garbage_flood(args[0], int(args[1]), int(args[2], 0), int(args[3]), float(args[4]), float(args[5]),
                               int(args[6]), int(args[7]))
    elif mode == "capture":
        result = capture(args[0], int(args[1]), int(args[2]))
    elif mode == "hostile":
        result = hostile(args[0], int(args[1]), args[2])
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
