"""A DNS responder of a few lines, for the end-to-end tests.

``python -m tests.netlab.dns ADDRESS ANSWER MAX_QUERIES SECONDS`` listens on
ADDRESS port 53 (UDP), answers every A question with ANSWER (RFC 1035
section 4.1: header, the question echoed, one answer pointing back at it
with 0xC00C) and any other question with no answer (NODATA), and prints
``{"listening": ...}`` then one JSON line per query. It stops after
MAX_QUERIES queries or SECONDS seconds, whichever comes first.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

TYPE_A, CLASS_IN = 1, 1
QR, AA, RD, RA = 0x8000, 0x0400, 0x0100, 0x0080


def answer(query: bytes, address: str) -> tuple[bytes, str, int] | None:
    """(reply, name asked, question type), or None for what is no plain query."""
    if len(query) < 12:
        return None
    ident, flags, questions = struct.unpack("!HHH", query[:6])
    if flags & QR or questions != 1:
        return None
    labels, at = [], 12
    while at < len(query) and query[at]:
        length = query[at]
        if length & 0xC0:
            return None
        labels.append(query[at + 1:at + 1 + length].decode("ascii", "replace"))
        at += 1 + length
    if at + 5 > len(query):
        return None
    qtype, qclass = struct.unpack("!HH", query[at + 1:at + 5])
    question = query[12:at + 5]
    records = b""
    if (qtype, qclass) == (TYPE_A, CLASS_IN):
        records = b"\xc0\x0c" + struct.pack("!HHIH", TYPE_A, CLASS_IN, 60, 4) + socket.inet_aton(address)
    header = struct.pack("!HHHHHH", ident, QR | AA | RA | (flags & RD), 1, 1 if records else 0, 0, 0)
    return header + question + records, ".".join(labels), qtype


def main(argv: list[str]) -> int:
    address, reply_address, max_queries, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    print(json.dumps({"listening": address}), flush=True)
    deadline = time.monotonic() + seconds
    queries = 0
    while queries < max_queries and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            query, peer = sock.recvfrom(512)
        except socket.timeout:
            break
        replied = answer(query, reply_address)
        if replied is None:
            continue
        queries += 1
        sock.sendto(replied[0], peer)
        print(json.dumps({"query": replied[1], "type": replied[2], "from": peer[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
