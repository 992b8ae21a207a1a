"""Where a ping's added round-trip time goes, wake-up by wake-up (needs root).

Run: .venv/bin/python bench/wakeup_bench.py [--rounds 3] [--pings 300] [--ping-interval 0.05]
                                            [--peers vpncrypt,python-relay-siv,python-relay]

One ping through the tunnel wakes the two ends four times: the server (left)
reads the echo request from TUN and sends it, the client (right) receives it
and writes it to TUN, reads the echo reply from TUN and sends it, and the
server receives it and writes it to TUN. Each peer's two processes run
under bench/wakeup_trace.py, which times every event loop wake-up from the
reader callback's start to its first output system call (the part of it
the packet waits for) and to its end. In rounds (each peer once a round, as
vpn_bench.py), ``--pings`` pings ``--ping-interval`` seconds apart; prints,
for each peer, the median over the rounds of each wake-up's median
microseconds, their sum, and the ping's mean round-trip time. The peers are
vpn_bench.py's: vpncrypt and the references python-relay and
python-relay-siv (bench/python_relay.py), the least a Python program on
uvloop does per packet, without and with vpncrypt's compiled AES-SIV.
Uses the two-namespace set-up of vpn_bench.py.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vpn_bench as bench  # noqa: E402
from tests.netlab import Lab  # noqa: E402

TRACE = Path(__file__).resolve().parent / "wakeup_trace.py"
PEERS = {"vpncrypt": bench.VPNS["vpncrypt"], **bench.REFERENCES}
# The four wake-ups of a ping, in order: (side, the reader callback's name in
# vpncrypt's daemon, in bench/python_relay.py).
WAKE_UPS = (
    ("left", "Daemon.tun_readable", "main.<locals>.device_readable", "server: echo request from TUN, sent"),
    ("right", "Daemon.network_readable", "main.<locals>.socket_readable", "client: received, to TUN"),
    ("right", "Daemon.tun_readable", "main.<locals>.device_readable", "client: echo reply from TUN, sent"),
    ("left", "Daemon.network_readable", "main.<locals>.socket_readable", "server: received, to TUN"),
)


class TracedPair(bench.Pair):
    """vpn_bench's pair whose Python processes run under wakeup_trace.py,
    each writing its figures to workdir/trace-SIDE.json."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        super().__init__(lab)
        self.workdir = workdir

    def spawn(self, side: str, command: list[str], name: str, env: dict | None = None):
        program = command[1:] if command[0] == sys.executable else command
        traced = [sys.executable, str(TRACE), str(self.workdir / f"trace-{side}.json"), *program]
        return super().spawn(side, traced, name, env)


def one_round(name: str, pings: int, interval: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="vpncrypt-wakeups-") as tmp, Lab(Path(tmp)) as lab:
        workdir = Path(tmp)
        pair = TracedPair(lab, workdir)
        try:
            PEERS[name](pair, workdir)
            bench.wait_for_ping(pair)
            time.sleep(1)
            done = lab.run(pair.left, ["ping", "-c", str(pings), "-i", str(interval), bench.RIGHT_TUNNEL],
                           check=False, timeout=pings * interval + 60)
        finally:
            pair.stop_all()
        rtts = [float(value) for value in re.findall(r"time=([\d.]+) ms", done.stdout)]
        if not rtts:
            raise RuntimeError(f"{name}: no ping came back")
        traces = {side: json.loads((workdir / f"trace-{side}.json").read_text()) for side in ("left", "right")}
    figures = {"rtt_ms": statistics.mean(rtts)}
    for side, daemon, relay, label in WAKE_UPS:
        record = traces[side].get(relay if name.startswith("python-relay") else daemon, {})
        figures[label] = {key: record[key]["median"] for key in ("to_output_us", "whole_us") if key in record}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--ping-interval", type=float, default=0.05)
    parser.add_argument("--peers", default="vpncrypt,python-relay-siv,python-relay")
    args = parser.parse_args()
    names = args.peers.split(",")
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEERS)}")
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for number in range(args.rounds):
        for name in names:
            figures = one_round(name, args.pings, args.ping_interval)
            rounds[name].append(figures)
            print(f"round {number + 1}, {name}: {json.dumps(figures)}", flush=True)

    def median(name: str, label: str, key: str) -> float:
        return statistics.median(r[label].get(key, float("nan")) for r in rounds[name])

    print(f"\nMedian over {args.rounds} rounds of each wake-up's median, microseconds from the callback's start"
          f" to its first output (and to its end); {args.pings} pings {args.ping_interval} s apart:\n")
    print("| wake-up | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for _, _, _, label in WAKE_UPS:
        cells = [f"{median(name, label, 'to_output_us'):.0f} ({median(name, label, 'whole_us'):.0f})"
                 for name in names]
        print(f"| {label} | " + " | ".join(cells) + " |")
    sums = [f"{statistics.median(sum(r[label]['to_output_us'] for *_, label in WAKE_UPS) for r in rounds[name]):.0f}"
            for name in names]
    print("| sum to first output | " + " | ".join(sums) + " |")
    rtts = [f"{statistics.median(r['rtt_ms'] for r in rounds[name]):.3f}" for name in names]
    print("| ping round-trip time (ms) | " + " | ".join(rtts) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
