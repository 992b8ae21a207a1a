"""The server core's two data paths, this checkout against another, in one run.

Run: python bench/compare_data_path.py OTHER_CHECKOUT [--rounds N] [--pure]
(OTHER_CHECKOUT, say, from ``git archive main | tar -x -C /tmp/main-copy``)

Microseconds a packet for ``datagrams_received`` (open and route 64 UDP
packets from a client to the server, or beyond the tunnel: "_beyond") and
``tun_packets_received`` (route and seal 64 packets read from TUN for a
client), 64 and 1400 bytes, with nothing to answer. Each checkout runs in its own process, the two taking turns round
after round so that noise on a shared machine hits both alike; the figure is
each side's minimum, and the ratio this/other. With --pure both run the
pure-Python path (cryptography's AESSIV, no compiled batch path), as
VPNCRYPT_PURE_PYTHON=1 makes the daemon do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# Runs inside each checkout: prints {path-size: microseconds a packet}.
PROBE = r"""
import ipaddress, json, os, struct, sys, time
sys.path.insert(0, sys.argv[1])
from vpncrypt.core import siv
if os.environ.get("VPNCRYPT_PURE_PYTHON") == "1":
    siv.choose(True, "--pure")
from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.core.peer import Peer
from vpncrypt.core.epochs import DEFAULT_EPOCH_SECONDS
from vpncrypt.core.wire import KIND_DATA, TO_SERVER

NOW, BATCH, LOOPS = 1_700_000_000.0, 64, 40
EPOCH = int(NOW) // DEFAULT_EPOCH_SECONDS - 1
A, SERVER = ipaddress.ip_address("203.0.113.2").packed, ipaddress.ip_address("203.0.113.1").packed
KEY = os.urandom(64)

def packet(size, src, dst):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0, src, dst)
    return ip + struct.pack("!HHHH", 4433, 443, size - 20, 0) + os.urandom(size - 28)

def server():
    clients = [ClientEntry(9, KEY, EPOCH, (ipaddress.ip_network("203.0.113.2/32"),))]
    try:  # a server that answers for its tunnel network needs to know it
        return ServerCore(1, clients, NOW, tunnel=[ipaddress.ip_interface("203.0.113.1/24")])
    except TypeError:
        return ServerCore(1, clients, NOW)

result = {}
BEYOND = ipaddress.ip_address("198.51.100.7").packed
for size, to, name in ((64, SERVER, ""), (1400, SERVER, ""), (1400, BEYOND, "_beyond")):
    up = [packet(size, A, to)] * BATCH
    best = float("inf")
    for _ in range(3):
        core = server()
        sender = Peer(9, KEY, key_epoch=EPOCH, server_id=1, send_direction=TO_SERVER, now=NOW)
        batches = [[(d, ("192.0.2.2", 5000)) for d in sender.seal(KIND_DATA, up, NOW + 2)] for _ in range(LOOPS)]
        start = time.perf_counter()
        for batch in batches:
            core.datagrams_received(batch, NOW + 2)
        best = min(best, time.perf_counter() - start)
    result[f"open_{size}{name}"] = best / (LOOPS * BATCH) * 1e6
    if name:
        continue
    core = server()
    core.datagrams_received(batches[0][:1], NOW + 2)  # the client's endpoint, so TUN packets route to it
    down = [packet(size, SERVER, A)] * BATCH
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(LOOPS):
            core.tun_packets_received(down, NOW + 2)
        best = min(best, time.perf_counter() - start)
    result[f"tun_{size}"] = best / (LOOPS * BATCH) * 1e6
print(json.dumps(result))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", type=Path, help="the checkout to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--pure", action="store_true", help="both checkouts on the pure-Python path")
    args = parser.parse_args()
    this = Path(__file__).resolve().parent.parent
    env = {**os.environ, "VPNCRYPT_PURE_PYTHON": "1"} if args.pure else None
    sides: dict[str, dict[str, float]] = {"this": {}, "other": {}}
    for _ in range(args.rounds):
        for name, root in (("this", this), ("other", args.other.resolve())):
            figures = json.loads(subprocess.run([sys.executable, "-c", PROBE, str(root)], check=True,
                                                capture_output=True, text=True, env=env).stdout)
            for key, value in figures.items():
                sides[name][key] = min(sides[name].get(key, float("inf")), value)
    print(f"{'path':<16} {'this us':>9} {'other us':>9} {'ratio':>6}")
    for key in sides["this"]:
        mine, theirs = sides["this"][key], sides["other"][key]
        print(f"{key:<16} {mine:9.3f} {theirs:9.3f} {mine / theirs:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
