"""A legitimate TCP transfer through vpncrypt with and without a garbage flood (needs root).

Run: tools/bench-flood [--runs 3] [--seconds 5] [--factor 10] [--max-rate 1000000] [--sizes 1444,64]

The standard lab of tests/netlab (server, router, clients a and b in
namespaces). Client a sends one TCP stream (iperf3, IPv4 inside the tunnel)
to the server's tunnel address. Client b's namespace is the attacker's: it
sends garbage to the server's underlay address and port, each datagram with
a data kind, client b's ID (read from the lab's b.toml), the current Unix
time, a random counter and random bytes: it passes every check the server
makes before its cipher and then fails authentication, or is refused unopened
once b's ID has used up its failure credit (FAILURE_BURST, FAILURE_RATE in
vpncrypt/core/peer.py). Client b itself is not started, so its replay window
is empty and no garbage is dropped early as "counter too old": every datagram
that reaches the server's loop meets the failure limiter (the worst case).

First one transfer without flood measures client a's packet rate (datagrams
a second the server accepts from it); the flood rate is --factor times that,
at most --max-rate. Then, per garbage size, --runs rounds alternate: without
the flood, with it, and with the same flood sent to a port nobody listens on
(the control: what carrying the flood costs this shared 2-core machine,
vpncrypt aside). Each figure is iperf3's received Mbit/s after one omitted
second; a flood starts before the transfer and ends after it. The ratio is
the median with the flood over the median without; "per round" is the
median of each round's with over that round's without (the two run one after
the other, so a load that drifts between rounds weighs less). Also reported:
the rate the attacker achieved, the share of it that reached the server's
loop (its drop counters; the rest the kernel dropped, for a full socket
buffer or by the socket filter that refuses a flooded client ID), TCP
retransmits, the server's CPU use and the machine's idle share, the server's
CPU time per legitimate datagram (transfers without flood) and per garbage
datagram (the flood alone, 3 s: per datagram its loop saw, and per datagram
sent, the kernel's drops included), its drop counters at the end and the
client IDs its socket filter refused then (``kernel_filter`` in its status).
Writes a Markdown table to stdout and, with --json, the raw figures.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vpncrypt.core.wire import KIND_DATA  # noqa: E402  # the kind the server under test takes

from tests.netlab import (  # noqa: E402
    PORT, SERVER_UNDERLAY6, TUNNEL_ADDRESS, Job, Lab, LabError, VpnLab, build_vpn_lab,
)

TICKS = os.sysconf("SC_CLK_TCK")
IPERF_PORT = 5201
CLOSED_PORT = PORT + 1  # nothing listens there
BUSY_RETRIES = 10  # "the server is busy running a test": asked again a second later, at most this often
# What the server's loop counts for a datagram that is garbage (the flood's, or anything else).
GARBAGE_DROPS = ("auth_failed", "auth_failures_limited", "counter_too_old", "outside_time_window", "superseded",
                 "replayed", "unknown_kind", "old_version", "unknown_client", "bad_length")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime stime


def machine_ticks() -> tuple[int, int]:
    """(idle, total) jiffies of the whole machine: the other tenants' load shows here."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def client_rx(status: dict, name: str) -> int:
    return next(c["rx_packets"] for c in status["clients"] if c["name"] == name)


def iperf(vpn: VpnLab, seconds: int, omit: int) -> dict:
    command = ["iperf3", "-c", TUNNEL_ADDRESS["server"], "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    if omit:
        command += ["-O", str(omit)]
    for attempt in range(BUSY_RETRIES + 1):
        done = vpn.lab.run(vpn.client_ns["a"], command, timeout=seconds + omit + 30, check=False)
        try:
            result = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise LabError(f"iperf3 gave no result: {done.stderr.strip() or done.stdout[-500:]}") from None
        # After a transfer that a flood starved, iperf3's server may still be
        # closing the last test when the next one asks: wait and ask again.
        if "busy" not in result.get("error", "") or attempt == BUSY_RETRIES:
            break
        time.sleep(1)
    if "error" in result:
        raise LabError(f"iperf3: {result['error']}")
    return result["end"]


def wait_for_tunnel(vpn: VpnLab, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while vpn.lab.run(vpn.client_ns["a"], ["ping", "-c", "1", "-W", "1", TUNNEL_ADDRESS["server"]],
                      check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise LabError("the tunnel did not come up: client a gets no answer from the server")
        time.sleep(0.2)


def wait_for_log(job: Job, marker: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while marker not in job.log():
        if job.process.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"{job.name} did not start: {job.log()[-1000:]}")
        time.sleep(0.02)


def one_run(vpn: VpnLab, server_pid: int, seconds: int, flood: dict | None, transfer: bool = True) -> dict:
    """One timed transfer with the flood ``flood`` (rate, size, client_id) or
    without; or, without ``transfer``, the flood alone for ``seconds``."""
    before = vpn.server_status()
    cpu_start = cpu_seconds(server_pid)
    job = None
    span = seconds + 3 if transfer else seconds  # with a transfer: its start and omitted second too
    if flood:
        job = Job(vpn.lab, vpn.client_ns["b"], "garbage-flood", SERVER_UNDERLAY6, str(flood["port"]), hex(KIND_DATA),
                  str(flood["client_id"]), f"{flood['rate']:.0f}", str(span), str(flood["size"]),
                  str(int(flood["rate"] * span) + 1))
        wait_for_log(job, '"flooding"')
        time.sleep(0.2)
    cpu_before, idle_before, started = cpu_seconds(server_pid), machine_ticks(), time.monotonic()
    try:
        if transfer:
            end = iperf(vpn, seconds, omit=1)
            cpu, wall, idle_after = cpu_seconds(server_pid) - cpu_before, time.monotonic() - started, machine_ticks()
        sender = job.result(timeout=span + 30) if job else None
        if not transfer:
            # The whole flood, its start included: nothing but garbage kept the server busy.
            cpu, wall, idle_after = cpu_seconds(server_pid) - cpu_start, sender["seconds"], machine_ticks()
    finally:
        if job and job.process.poll() is None:
            vpn.lab.stop(job.process)  # by its PID, whatever went wrong
    after = vpn.server_status()
    drops = {k: after["drops"][k] - before["drops"].get(k, 0) for k in after["drops"]}
    figures = {
        "server_cpu_seconds": cpu,
        "wall_seconds": wall,
        "server_cpu_share": cpu / wall,
        "machine_idle_share": (idle_after[0] - idle_before[0]) / max(idle_after[1] - idle_before[1], 1),
        "legit_datagrams": client_rx(after, "a") - client_rx(before, "a"),
        "garbage_seen": sum(drops.get(k, 0) for k in GARBAGE_DROPS),
        "drops": {k: v for k, v in drops.items() if v},
    }
    if transfer:
        figures["mbit"] = end["sum_received"]["bits_per_second"] / 1e6
        figures["retransmits"] = end["sum_sent"].get("retransmits")
    if sender:
        figures["sender"] = sender
        figures["reached_loop"] = figures["garbage_seen"] / sender["sent"] if sender["sent"] else float("nan")
    return figures


def measure(workdir: Path, runs: int, seconds: int, factor: float, max_rate: float, sizes: list[int]) -> dict:
    with Lab(workdir) as lab:
        vpn = build_vpn_lab(lab)
        server = vpn.start_server()
        vpn.start_client("a")  # client b is left off: its ID is the flood's
        wait_for_tunnel(vpn)
        lab.spawn(vpn.server_ns, ["iperf3", "-s", "-B", TUNNEL_ADDRESS["server"], "-p", str(IPERF_PORT)],
                  "iperf3-server.log")
        time.sleep(0.5)
        b_id = tomllib.loads((vpn.configs / "b.toml").read_text())["client"]["client_id"]
        mtu = tomllib.loads((vpn.configs / "server.toml").read_text())["server"].get("mtu", 1420)

        # The legitimate packet rate: datagrams a second the server accepts from client a.
        before = client_rx(vpn.server_status(), "a")
        end = iperf(vpn, seconds, omit=0)
        legit_pps = (client_rx(vpn.server_status(), "a") - before) / end["sum_received"]["seconds"]
        rate = min(factor * legit_pps, max_rate)
        results: dict = {
            "client_id_flooded": b_id, "kind": KIND_DATA, "mtu": mtu, "load_average": os.getloadavg(),
            "calibration_mbit": end["sum_received"]["bits_per_second"] / 1e6,
            "legit_pps": legit_pps, "flood_rate_asked": rate, "factor": factor, "max_rate": max_rate, "sizes": {},
        }
        say(f"client a: {legit_pps:.0f} datagrams/s at {results['calibration_mbit']:.0f} Mbit/s;"
            f" flood at {rate:.0f}/s with client ID {b_id}, kind {KIND_DATA:#x}")

        for size in sizes:
            size = min(size, mtu + 24)  # longer ones would be dropped for their length alone
            flood = {"rate": rate, "size": size, "client_id": b_id, "port": PORT}
            # The control: the same flood to a port nobody listens on, which the
            # server's kernel drops: what carrying it costs this machine, vpncrypt aside.
            control = dict(flood, port=CLOSED_PORT)
            without, with_flood, with_control = [], [], []
            for i in range(runs):
                without.append(one_run(vpn, server.pid, seconds, None))
                with_flood.append(one_run(vpn, server.pid, seconds, flood))
                with_control.append(one_run(vpn, server.pid, seconds, control))
                w, f, c = without[-1], with_flood[-1], with_control[-1]
                say(f"size {size}, round {i + 1}: without {w['mbit']:.0f} Mbit/s, with {f['mbit']:.0f} Mbit/s"
                    f" ({f['retransmits']} retransmits; flood {f['sender']['rate']:.0f}/s sent,"
                    f" {f['reached_loop']:.0%} reached the server's loop), with the flood to a closed port"
                    f" {c['mbit']:.0f} Mbit/s ({c['sender']['rate']:.0f}/s sent)")
            # The flood alone: what one garbage datagram costs the server's process.
            alone = one_run(vpn, server.pid, 3, flood, transfer=False)
            say(f"size {size}, flood alone: {alone['garbage_seen']} seen in {alone['wall_seconds']:.1f} s,"
                f" server CPU {alone['server_cpu_share']:.2f}")
            results["sizes"][size] = summarise(without, with_flood, with_control, alone)
        final = vpn.server_status()
        results["final_drops"] = final["drops"]
        results["final_kernel_filter"] = final.get("kernel_filter")
        return results


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def summarise(without: list[dict], with_flood: list[dict], with_control: list[dict], alone: dict) -> dict:
    median_without = statistics.median(r["mbit"] for r in without)
    median_with = statistics.median(r["mbit"] for r in with_flood)
    median_control = statistics.median(r["mbit"] for r in with_control)
    return {
        "mbit_without": median_without,
        "mbit_with": median_with,
        "ratio": median_with / median_without,
        # Each round's with over its own without, which ran just before it: the
        # other tenants' load drifts from round to round, less within one.
        "ratio_paired": statistics.median(f["mbit"] / w["mbit"] for w, f in zip(without, with_flood)),
        "ratio_control_paired": statistics.median(c["mbit"] / w["mbit"] for w, c in zip(without, with_control)),
        "mbit_control": median_control,
        "ratio_control": median_control / median_without,
        "flood_rate_achieved": statistics.median(r["sender"]["rate"] for r in with_flood),
        "reached_loop": statistics.median(r["reached_loop"] for r in with_flood),
        "retransmits_without": statistics.median(r["retransmits"] for r in without),
        "retransmits_with": statistics.median(r["retransmits"] for r in with_flood),
        "server_cpu_without": statistics.median(r["server_cpu_share"] for r in without),
        "server_cpu_with": statistics.median(r["server_cpu_share"] for r in with_flood),
        "machine_idle_without": statistics.median(r["machine_idle_share"] for r in without),
        "machine_idle_with": statistics.median(r["machine_idle_share"] for r in with_flood),
        # Server CPU per datagram: a legitimate one (opened, written to TUN, its
        # ACKs sealed and sent) and a garbage one (from the flood alone).
        "us_per_legit": statistics.median(r["server_cpu_seconds"] / r["legit_datagrams"] * 1e6 for r in without),
        "us_per_garbage": alone["server_cpu_seconds"] / alone["garbage_seen"] * 1e6 if alone["garbage_seen"] else
        float("nan"),
        # Per datagram sent, whether the kernel dropped it or the server's loop
        # refused it: what the flood as a whole costs the server's process.
        "us_per_garbage_sent": alone["server_cpu_seconds"] / alone["sender"]["sent"] * 1e6,
        "alone": alone,
        "without_runs": without,
        "with_runs": with_flood,
        "control_runs": with_control,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--factor", type=float, default=10.0, help="flood rate over the legitimate packet rate")
    parser.add_argument("--max-rate", type=float, default=1_000_000, help="cap on the flood, datagrams a second")
    parser.add_argument("--sizes", default="1444,64", help="garbage sizes in bytes, comma-separated")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not 1 <= args.seconds <= 30 or not 1 <= args.runs <= 5:
        parser.error("--seconds 1 to 30 and --runs 1 to 5: the whole run stays under 10 minutes")
    # A timeout's SIGTERM must still remove the namespaces and end the processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="vpncrypt-flood-"))
    results = measure(workdir, args.runs, args.seconds, args.factor, args.max_rate, sizes)
    results["minutes"] = (time.monotonic() - started) / 60
    results["versions"] = {"vpncrypt": importlib.metadata.version("vpncrypt"), "kernel": os.uname().release,
                           "python": sys.version.split()[0]}
    print(f"date {time.strftime('%Y-%m-%d')}; {json.dumps(results['versions'])}; {results['minutes']:.1f} min;"
          f" load average at the start {results['load_average'][0]:.2f}")
    print(f"command: {' '.join(sys.argv)}\n")
    print(f"Client a alone: {results['legit_pps']:.0f} datagrams/s to the server"
          f" ({results['calibration_mbit']:.0f} Mbit/s); flood asked: {results['flood_rate_asked']:.0f}/s"
          f" ({args.factor:g} x, capped at {args.max_rate:.0f}), client ID {results['client_id_flooded']}.\n")
    print("| garbage bytes | TCP without Mbit/s | TCP with flood Mbit/s | with / without |"
          " with / without, per round |"
          " control: flood to a closed port, Mbit/s | control / without | control / without, per round |"
          " flood sent /s | reached server's loop |"
          " retransmits without / with | server CPU without / with | machine idle without / with |"
          " server us per legit datagram | server us per garbage datagram it saw | ... per garbage datagram sent |")
    print("|---:|" + "---:|" * 15)
    for size, s in results["sizes"].items():
        print(f"| {size} | {s['mbit_without']:.0f} | {s['mbit_with']:.0f} | **{s['ratio']:.2f}** |"
              f" **{s['ratio_paired']:.2f}** | {s['mbit_control']:.0f} | {s['ratio_control']:.2f} |"
              f" {s['ratio_control_paired']:.2f} |"
              f" {s['flood_rate_achieved']:.0f} | {s['reached_loop']:.0%} |"
              f" {s['retransmits_without']:.0f} / {s['retransmits_with']:.0f} |"
              f" {s['server_cpu_without']:.2f} / {s['server_cpu_with']:.2f} |"
              f" {s['machine_idle_without']:.2f} / {s['machine_idle_with']:.2f} |"
              f" {s['us_per_legit']:.2f} | {s['us_per_garbage']:.2f} | {s['us_per_garbage_sent']:.3f} |")
    drops = results["final_drops"]
    print(f"\nServer drop counters at the end: auth_failed {drops.get('auth_failed', 0)},"
          f" auth_failures_limited {drops.get('auth_failures_limited', 0)}; all non-zero:"
          f" {json.dumps({k: v for k, v in drops.items() if v})}; kernel filter:"
          f" {json.dumps(results['final_kernel_filter'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
