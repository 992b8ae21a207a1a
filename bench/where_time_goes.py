"""Where vpncrypt's time goes, beside quicktun (needs root; run by tools/bench-where).

Run: tools/bench-where [--profile]

- Round-trip time through the tunnel at several ping intervals, for vpncrypt
  and quicktun in turn, then again with both VPN processes and ping on one CPU:
  shows whether the added RTT follows idleness or CPU placement.
- User and system CPU seconds of each vpncrypt end during one forward TCP run
  (iperf3, 6 s).
- With --profile: py-spy samples both vpncrypt ends at 500 Hz for 5 s of that
  run, and the samples are summed into the categories of bench/RESULTS.md.
  (py-spy is installed into the venv by tools/bench-where.)
Uses the two-namespace set-up of vpn_bench.py.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vpn_bench as bench  # noqa: E402
from tests.netlab import Lab  # noqa: E402

INTERVALS = ("0.2", "0.05", "0.01", "0.002")
# Categories by a frame anywhere in the stack, first match wins; the cipher
# calls and idle time are told by the innermost frame (see category()).
STACK_CATEGORIES = (
    ("UDP send", r"_send_segmented|_send_each"),
    ("UDP receive and cutting", r"UdpTransport\.receive"),
    ("TUN read and split", r"read_batch|split \("),
    ("TUN merge and write", r"write_batch|coalesce|parse_segment|merged_plan|single_plan"),
)


def rtt_ms(pair: bench.Pair, interval: str, prefix: tuple[str, ...] = ()) -> str:
    done = pair.lab.run(pair.left, [*prefix, "ping", "-c", "30", "-i", interval, "-q", bench.RIGHT_TUNNEL],
                        check=False)
    match = re.search(r"= [\d.]+/([\d.]+)/", done.stdout)
    return match.group(1) if match else "nan"


def rtt_table(workdir: Path) -> None:
    rows: dict[str, dict[str, str]] = {}
    for name in ("vpncrypt", "quicktun"):
        with Lab(workdir / f"rtt-{name}") as lab:
            pair = bench.Pair(lab)
            try:
                bench.VPNS[name](pair, workdir / f"rtt-{name}")
                bench.wait_for_ping(pair)
                rows[name] = {interval: rtt_ms(pair, interval) for interval in INTERVALS}
                for process in pair.processes:
                    subprocess.run(["taskset", "-a", "-p", "-c", "0", str(process.pid)], capture_output=True, check=True)
                rows[name]["one CPU, 0.1"] = rtt_ms(pair, "0.1", ("taskset", "-c", "0"))
            finally:
                pair.stop_all()
    columns = [*INTERVALS, "one CPU, 0.1"]
    titles = [f"RTT ms at ping -i {c}" for c in INTERVALS] + ["RTT ms, all on CPU 0, -i 0.1"]
    print("| VPN | " + " | ".join(titles) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(row[c] for c in columns) + " |")


def cpu_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def source_line(frame: str) -> str:
    """The line of source a py-spy frame ('name (path:line)') points at."""
    match = re.search(r"\((.*\.py):(\d+)\)$", frame)
    return Path(match.group(1)).read_text().splitlines()[int(match.group(2)) - 1] if match else ""


def category(frames: list[str]) -> str:
    leaf = frames[-1]
    if leaf.startswith("Peer.seal ") and "seal_batch(" in source_line(leaf):
        return "seal, compiled batch (AES-SIV and headers)"
    if leaf.startswith("_left_by ") and "run(" in source_line(leaf):
        return "open, compiled batch (AES-SIV, checks, routing)"
    if leaf.startswith("Peer.seal ") and "encrypt(" in source_line(leaf):
        return "AES-SIV encrypt"
    if leaf.startswith("open_datagrams ") and "decrypt(" in source_line(leaf):
        return "AES-SIV decrypt"
    if leaf.startswith("run_until_signalled "):
        return "idle in the event loop"
    for name, pattern in STACK_CATEGORIES:
        if any(re.search(pattern, frame) for frame in frames):
            return name
    return "other Python"


def categorize(samples: Path) -> tuple[collections.Counter, collections.Counter]:
    """Samples by category, and those of "other Python" by their innermost function."""
    shares: collections.Counter = collections.Counter()
    other: collections.Counter = collections.Counter()
    for line in samples.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        name = category(frames)
        shares[name] += int(count)
        if name == "other Python":
            other[frames[-1].split(" (")[0]] += int(count)
    return shares, other


def cpu_profile(workdir: Path, profile: bool) -> None:
    with Lab(workdir / "cpu") as lab:
        pair = bench.Pair(lab)
        pid_file = workdir / "cpu" / "iperf3.pid"
        pair.lab.run(pair.right, ["iperf3", "-s", "-D", "--pidfile", str(pid_file)])
        try:
            bench.start_vpncrypt(pair, workdir / "cpu")
            bench.wait_for_ping(pair)
            ends = dict(zip(("sending end (server)", "receiving end (client)"), pair.processes))
            before = {name: cpu_ticks(p.pid) for name, p in ends.items()}
            spies = {}
            if profile:
                spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
                for name, process in ends.items():
                    out = workdir / f"{process.pid}.txt"
                    spies[name] = (out, subprocess.Popen(
                        [spy, "record", "--format", "raw", "-r", "500", "-d", "5", "-o", str(out), "-p", str(process.pid)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            rate = bench.iperf(pair, 6, reverse=False)
            after = {name: cpu_ticks(p.pid) for name, p in ends.items()}
            for _, waiting in spies.values():
                waiting.wait(timeout=60)
        finally:
            if pid_file.exists():
                subprocess.run(["kill", pid_file.read_text().strip()], check=False)
            pair.stop_all()
    print(f"\nTCP forward, 6 s (+1 s ramp): {rate:.0f} Mbit/s")
    for name in ends:
        user, system = (b - a for a, b in zip(before[name], after[name]))
        print(f"- {name}: user {user / bench.TICKS:.2f} s, system {system / bench.TICKS:.2f} s")
    for name, (out, _) in spies.items():
        shares, other = categorize(out)
        total = sum(shares.values()) or 1
        print(f"\n{name}, py-spy samples ({total}):")
        for category, count in shares.most_common():
            print(f"- {category}: {100 * count / total:.0f} %")
        print("  other Python, by innermost function: " + ", ".join(
            f"{function} {100 * count / total:.0f} %" for function, count in other.most_common(8)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", action="store_true", help="sample both ends with py-spy")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="vpncrypt-where-"))
    rtt_table(workdir)
    cpu_profile(workdir, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
