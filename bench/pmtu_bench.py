"""What the path MTU check costs the client's send path, against sealing alone, in one run.

Run: python bench/pmtu_bench.py

``ClientCore.tun_packets_received`` now looks at every packet's length
against the effective MTU and clamps TCP SYNs (core/pmtu.py) before sealing;
the peer is the same batch sealed directly (``_send``, what the method did
before). 64 packets of 1400 bytes, a path confirmed at the full MTU so that
every packet is sent; the minimum of 200 interleaved repeats each.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.builders import A_ADDR, NOW, SERVER_ADDR, ipv4_packet, make_client  # noqa: E402
from vpncrypt.core.wire import KIND_DATA, OVERHEAD  # noqa: E402

REPEATS = 200


def main() -> None:
    client = make_client(mtu=1420, underlay_version=4)
    client.path.confirmed = 1420 + OVERHEAD
    packets = [ipv4_packet(A_ADDR, SERVER_ADDR, bytes(1400 - 28))] * 64
    best = {"checked": float("inf"), "sealed only": float("inf")}
    for _ in range(REPEATS):
        start = time.perf_counter()
        client.tun_packets_received(packets, NOW)
        best["checked"] = min(best["checked"], time.perf_counter() - start)
        start = time.perf_counter()
        client._send(KIND_DATA, packets, NOW)
        best["sealed only"] = min(best["sealed only"], time.perf_counter() - start)
    for name, seconds in best.items():
        print(f"{name}: {seconds / len(packets) * 1e6:.2f} us a packet")
    print(f"ratio checked / sealed only: {best['checked'] / best['sealed only']:.3f}")


if __name__ == "__main__":
    main()
