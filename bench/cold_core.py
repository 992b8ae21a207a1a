"""The four core steps of one ping's round trip, on caches made cold, against
the same steps warm, in one run (no root needed).

Run: python bench/cold_core.py [--pings N] [--pure] [--json FILE]

A ping through an idle tunnel wakes each daemon with caches that other work
has emptied since the last packet (bench/RESULTS.md, "added round-trip
time"). This runs a client core and a server core in one process and times,
for each of ``--pings`` echo requests 50 ms apart (by the cores' clocks), the
client sealing the request read from TUN, the server opening it, the server
sealing the reply and the client opening it: once straight after the step
before (warm), and once after 64 MiB have been written through the caches
before each step (cold). Prints the median microseconds of each step, their
sum, and cold over warm. It measures only the cores: the event loop, the
system calls and the kernel's share of each hop are not in it. With --pure,
cryptography's AES-SIV and the Python loops, as VPNCRYPT_PURE_PYTHON=1 gives
the daemon.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vpncrypt.core import siv  # noqa: E402

from tests.builders import A_ADDR, A_EP, NOW, SERVER_ADDR, SERVER_EP, ipv4_packet, make_client, make_server  # noqa: E402

ICMP = 1
STEPS = ("client seals the request", "server opens it", "server seals the reply", "client opens it")
EVICTION_BYTES = 64 << 20  # well past any last-level cache this runs on


def round_trips(pings: int, cold: bool) -> dict[str, float]:
    """Median microseconds of each step over ``pings`` round trips."""
    eviction = bytearray(EVICTION_BYTES)
    line = b"\x01" * (EVICTION_BYTES // 64)

    def evict() -> None:
        if cold:
            eviction[::64] = line  # one write to every 64-byte cache line

    client, server = make_client(), make_server()
    request = ipv4_packet(A_ADDR, SERVER_ADDR, b"p" * 56, proto=ICMP)
    reply = ipv4_packet(SERVER_ADDR, A_ADDR, b"q" * 56, proto=ICMP)
    now = NOW + 2
    # One round first, so that the server knows the client's endpoint.
    first = client.tun_packets_received([request], now).to_network
    server.datagrams_received([(datagram, A_EP) for datagram, _ in first], now)
    clock = time.perf_counter_ns
    times: dict[str, list[float]] = {step: [] for step in STEPS}

    def timed(step: str, call):
        evict()
        start = clock()
        result = call()
        times[step].append(clock() - start)
        return result

    for _ in range(pings):
        now += 0.05
        up = timed(STEPS[0], lambda: client.tun_packets_received([request], now).to_network)
        opened = timed(STEPS[1], lambda: server.datagrams_received([(datagram, A_EP) for datagram, _ in up], now))
        down = timed(STEPS[2], lambda: server.tun_packets_received([reply], now).to_network)
        back = timed(STEPS[3], lambda: client.datagrams_received([(datagram, SERVER_EP) for datagram, _ in down], now))
        if len(opened.to_tun) != 1 or len(back.to_tun) != 1:
            raise SystemExit(f"a ping was lost: server drops {dict(server.drops)}, client drops {dict(client.drops)}")
    return {step: statistics.median(values) / 1000 for step, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pings", type=int, default=300, help="round trips timed each way (warm and cold)")
    parser.add_argument("--pure", action="store_true", help="the pure-Python path (cryptography's AES-SIV)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    print(siv.choose(args.pure, "--pure"))
    figures = {"warm": round_trips(args.pings, cold=False), "cold": round_trips(args.pings, cold=True)}
    print(f"{'step':28s} {'warm us':>8s} {'cold us':>8s} {'cold/warm':>9s}")
    for step in STEPS:
        warm, cold = figures["warm"][step], figures["cold"][step]
        print(f"{step:28s} {warm:8.1f} {cold:8.1f} {cold / warm:9.1f}")
    warm, cold = sum(figures["warm"].values()), sum(figures["cold"].values())
    print(f"{'round trip, cores only':28s} {warm:8.1f} {cold:8.1f} {cold / warm:9.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
