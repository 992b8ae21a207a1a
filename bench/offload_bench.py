"""Micro-benchmark of the TUN offload functions: the compiled ones
(vpncrypt._offload) against the Python reference (vpncrypt/tun/offload.py),
in one run.

Run: python bench/offload_bench.py [--rounds N] [--json FILE]   (no root needed)

Microseconds a packet (a segment out of a split, a packet into a write) for:
splitting a 64 KiB TCP super-packet (IPv4 and IPv6, MSS 1368) and a UDP one
(1200-byte datagrams) as LinuxTun.read_batch does, from a slice of its read
buffer; planning the writes of a batch of 64 (coalesce); and the whole write
of a batch as LinuxTun does it (the Python's coalesce and one os.writev a
plan, against write_coalesced), to /dev/null, so that what is measured is
this code and the system calls, not the kernel's TCP stack behind a TUN
device (which costs both paths the same). A batch is either 64 segments of
one TCP flow (merged into two writes: 47 and 17) or 64 packets of 64 flows
(nothing merges). The paths take turns (``--rounds``), each turn the best of
``--repeats`` runs of ``--loops`` calls, each figure the best turn, so that
noise on this shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vpncrypt.tun import offload  # noqa: E402
from vpncrypt.tun.offload import GSO_TCPV4, GSO_TCPV6, VNET_HEADER_LEN, ipv4_header_checksum  # noqa: E402

MSS = 1368
DATAGRAM = 1200
BATCH = 64
SOURCE4, DESTINATION4 = bytes([203, 0, 113, 2]), bytes([203, 0, 113, 1])
SOURCE6, DESTINATION6 = bytes.fromhex("20010db8000700000000000000000002"), bytes.fromhex("20010db8000700000000000000000001")


def ip(v6: bool, protocol: int, transport: bytes) -> bytes:
    """``transport`` in an IPv4 or IPv6 header between documentation addresses, lengths right."""
    if v6:
        return struct.pack("!IHBB16s16s", 6 << 28, len(transport), protocol, 64, SOURCE6, DESTINATION6) + transport
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(transport), 1, 0x4000, 64, protocol, 0,
                                   SOURCE4, DESTINATION4))
    header[10:12] = ipv4_header_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + transport


def tcp(seq: int, payload: bytes, port: int = 5001, v6: bool = False) -> bytes:
    """A TCP segment with a timestamp option (as Linux sends them), its checksum left at 0."""
    options = b"\x01\x01\x08\x0a" + struct.pack("!II", 1000, 2000)
    header = struct.pack("!HHIIBBHHH", port, 40000, seq, 777, 8 << 4, 0x10, 500, 0, 0) + options
    return ip(v6, 6, header + payload)


def super_packet(v6: bool, udp: bool = False) -> memoryview:
    """A 64 KiB super-packet as read_batch hands it to the splitters: a slice of its read buffer."""
    if udp:
        payload = os.urandom(DATAGRAM * 54)
        packet = ip(v6, 17, struct.pack("!HHHH", 4433, 443, 8 + len(payload), 0) + payload)
    else:
        packet = tcp(1, os.urandom(MSS * 47), v6=v6)
    return memoryview(bytearray(bytes(VNET_HEADER_LEN) + packet))[VNET_HEADER_LEN:]


def one_flow() -> list[bytes]:
    return [tcp(1 + index * MSS, os.urandom(MSS)) for index in range(BATCH)]


def many_flows() -> list[bytes]:
    return [tcp(1, os.urandom(MSS), port=6000 + index) for index in range(BATCH)]


def python_write(fd: int, packets: list[bytes]) -> int:
    """LinuxTun._write_coalesced's Python loop."""
    refused = 0
    for plan in offload.coalesce(packets):
        try:
            os.writev(fd, plan)
        except OSError:
            refused += len(plan) - 2 if len(plan) > 2 else 1
    return refused


def cases(compiled, sink: int) -> dict[str, tuple[int, object, object]]:
    """name: (packets a call, the Python call, the compiled call)."""
    tcp4, tcp6, udp4 = super_packet(False), super_packet(True), super_packet(False, udp=True)
    flow, flows = one_flow(), many_flows()
    return {
        "split TCP/IPv4, 47 segments": (47, lambda: offload.split(tcp4, GSO_TCPV4, MSS),
                                        lambda: compiled.split(tcp4, GSO_TCPV4, MSS)),
        "split TCP/IPv6, 47 segments": (47, lambda: offload.split(tcp6, GSO_TCPV6, MSS),
                                        lambda: compiled.split(tcp6, GSO_TCPV6, MSS)),
        "split_datagrams UDP/IPv4, 54 datagrams": (54, lambda: offload.split_datagrams(udp4, DATAGRAM),
                                                   lambda: compiled.split_datagrams(udp4, DATAGRAM)),
        "coalesce 64 segments of one flow": (BATCH, lambda: offload.coalesce(flow),
                                             lambda: compiled.coalesce(flow)),
        "coalesce 64 packets of 64 flows": (BATCH, lambda: offload.coalesce(flows),
                                            lambda: compiled.coalesce(flows)),
        "write 64 segments of one flow": (BATCH, lambda: python_write(sink, flow),
                                          lambda: compiled.write_coalesced(sink, flow, True)),
        "write 64 packets of 64 flows": (BATCH, lambda: python_write(sink, flows),
                                         lambda: compiled.write_coalesced(sink, flows, True)),
    }


def best_turn(call, repeats: int, loops: int) -> float:
    """Seconds a call: the best of ``repeats`` runs of ``loops`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            call()
        best = min(best, time.perf_counter() - start)
    return best / loops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--rounds", type=int, default=5, help="turns each path takes, alternating")
    parser.add_argument("--repeats", type=int, default=3, help="repeats within a turn")
    parser.add_argument("--loops", type=int, default=200, help="calls a repeat")
    args = parser.parse_args()
    compiled = offload.COMPILED
    if compiled is None:
        print(f"no compiled offload functions to measure: {offload.NOT_BUILT}", file=sys.stderr)
        return 1
    sink = os.open(os.devnull, os.O_WRONLY)
    try:
        figures = {}
        for name, (packets, python, native) in cases(compiled, sink).items():
            if name.startswith("write") and (python() or native()):
                raise SystemExit(f"{name}: /dev/null refused a write")
            best = {"python": float("inf"), "compiled": float("inf")}
            for _ in range(args.rounds):
                for path, call in (("python", python), ("compiled", native)):
                    best[path] = min(best[path], best_turn(call, args.repeats, args.loops))
            figures[name] = {"python_us": best["python"] / packets * 1e6,
                             "compiled_us": best["compiled"] / packets * 1e6,
                             "compiled_over_python": best["compiled"] / best["python"]}
    finally:
        os.close(sink)
    print(f"per packet, best of {args.rounds} alternating turns of {args.repeats} x {args.loops} calls")
    print()
    print("| case | Python us | compiled us | compiled/Python | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, f in figures.items():
        print(f"| {name} | {f['python_us']:.3f} | {f['compiled_us']:.3f} | {f['compiled_over_python']:.3f} |"
              f" {1 / f['compiled_over_python']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
