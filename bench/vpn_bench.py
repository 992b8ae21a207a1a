"""vpncrypt against other VPNs, side by side in one run, on this machine (needs root).

Run: tools/bench-vpn [--runs 3] [--seconds 5]
                    [--peers vpncrypt,vpncrypt-pure,wireguard-go,quicktun,fastd,openvpn]
                    [--path-mtu 1400] [--only rtt] [--pings 20] [--ping-interval 0.05]

vpncrypt-pure is vpncrypt with VPNCRYPT_PURE_PYTHON=1: cryptography's AES-SIV
and the Python loops, without the compiled path (vpncrypt/_siv.c, _batch.c).
With --only rtt, the peers python-relay and python-relay-siv (never measured
by default) are references, not VPNs: bench/python_relay.py, a copy in
Python, unencrypted or with one compiled AES-SIV call a packet.

Two namespaces joined by a veth (underlay 192.0.2.1 and 192.0.2.2); each VPN
in turn connects them (tunnel 203.0.113.1 and .2, inner MTU 1420 for all) and
is measured the same way, one timed run at a time, round after round (each
VPN once a round, --runs rounds: a load that comes and goes on this shared
machine hits each VPN alike):
- TCP single stream each way (iperf3, median of the rounds), over IPv4 and
  over IPv6 inside the tunnel;
- full-sized (1392-byte) UDP datagrams sent flat out: Mbit/s that arrive,
  once from iperf3 (one datagram a system call) and once from a sender that
  hands the kernel 32 at a time with UDP_SEGMENT, as QUIC stacks do;
- 64-byte UDP datagrams received per second, sent flat out (median);
- Mbit per CPU-second of the VPN processes (both ends) during those runs;
- added round-trip time: ping through the tunnel minus ping on the underlay
  (each the mean of --pings pings --ping-interval seconds apart, 20 and
  0.05 by default, the first one included; an interval of 2 s shows what a
  ping after a pause costs); with --only rtt nothing else, and the figure of
  each round beside the median, and the CPU time both ends spent per ping
  (every thread, timers included, from /proc/PID/task/*/schedstat);
- wire overhead: underlay bytes per tunnelled packet minus inner bytes, from
  interface counters during a ping run;
- with --path-mtu N (e.g. 1400, a PPPoE or tunnelled access link): after the
  above, the underlay veth is set to N bytes on both ends and TCP is measured
  again each way, next to the clean path's figures of the same run.
Writes a Markdown table to stdout and, with --json, the raw figures.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netlab import Job, Lab, run  # noqa: E402

LEFT_UNDERLAY, RIGHT_UNDERLAY = "192.0.2.1", "192.0.2.2"
LEFT_TUNNEL, RIGHT_TUNNEL = "203.0.113.1", "203.0.113.2"
LEFT_TUNNEL6, RIGHT_TUNNEL6 = "2001:db8:7::1", "2001:db8:7::2"
TUNNEL = {"left": (LEFT_TUNNEL, LEFT_TUNNEL6), "right": (RIGHT_TUNNEL, RIGHT_TUNNEL6)}
MTU = 1420
PORT = 51820
TICKS = os.sysconf("SC_CLK_TCK")


class Pair:
    """Two namespaces and the VPN processes that join them."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.left = lab.namespace("left")
        self.right = lab.namespace("right")
        self.left_if, self.right_if = lab.link(self.left, self.right)
        lab.address(self.left, self.left_if, f"{LEFT_UNDERLAY}/24")
        lab.address(self.right, self.right_if, f"{RIGHT_UNDERLAY}/24")
        self.processes: list[subprocess.Popen] = []
        # Nothing but tunnelled packets may land in the interface counters the
        # overhead is measured with: no ARP (permanent neighbours), no IPv6
        # router solicitations or MLD reports (no IPv6 on the underlay).
        for ns, interface in ((self.left, self.left_if), (self.right, self.right_if)):
            lab.run(ns, ["sysctl", "-qw", f"net.ipv6.conf.{interface}.disable_ipv6=1"])
        for ns, interface, peer_ns, peer_if, peer_address in (
            (self.left, self.left_if, self.right, self.right_if, RIGHT_UNDERLAY),
            (self.right, self.right_if, self.left, self.left_if, LEFT_UNDERLAY),
        ):
            mac = lab.run(peer_ns, ["cat", f"/sys/class/net/{peer_if}/address"]).stdout.strip()
            lab.run(ns, ["ip", "neigh", "replace", peer_address, "lladdr", mac, "dev", interface, "nud", "permanent"])

    def spawn(self, side: str, command: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        process = self.lab.spawn(getattr(self, side), command, name, env)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            self.lab.stop(process)
        self.processes.clear()

    def cpu_seconds(self) -> float:
        """User plus system time of every VPN process (and its children) so far."""
        total = 0
        for process in self.processes:
            try:
                fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
        return total / TICKS

    def cpu_ns(self) -> int:
        """Nanoseconds on a CPU of every thread of every VPN process so far
        (the first field of /proc/PID/task/TID/schedstat: exact, where the
        utime and stime of cpu_seconds count in ticks of 10 ms)."""
        total = 0
        for process in self.processes:
            try:
                threads = os.listdir(f"/proc/{process.pid}/task")
            except FileNotFoundError:
                continue
            for thread in threads:
                try:
                    total += int(Path(f"/proc/{process.pid}/task/{thread}/schedstat").read_text().split()[0])
                except FileNotFoundError:  # the thread ended since the listing
                    continue
        return total


def wait_for_ping(pair: Pair, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    for address in (RIGHT_TUNNEL, RIGHT_TUNNEL6):
        while pair.lab.run(pair.left, ["ping", "-c", "1", "-W", "1", address], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the tunnel did not come up: no answer from {address}")
            time.sleep(0.2)


def wait_for_device(pair: Pair, ns: str, device: str, program: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while pair.lab.run(ns, ["ip", "link", "show", device], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{program} did not create {device}")
        time.sleep(0.05)


def address_point_to_point(pair: Pair, ns: str, device: str, side: str) -> None:
    """Both tunnel addresses of ``side`` on ``device``, for VPNs that leave that to the caller."""
    (address, address6), (peer, _) = TUNNEL[side], TUNNEL["right" if side == "left" else "left"]
    pair.lab.run(ns, ["ip", "address", "add", address, "peer", peer, "dev", device])
    pair.lab.run(ns, ["ip", "address", "add", f"{address6}/64", "dev", device, "nodad"])


# --- the VPNs ------------------------------------------------------------------------------

def start_vpncrypt(pair: Pair, workdir: Path, pure: bool = False) -> None:
    """vpncrypt with the compiled path, or (``pure``) with VPNCRYPT_PURE_PYTHON=1."""
    venv = Path(sys.executable).parent
    # Control sockets in the run's own directory, not /run/vpncrypt: another
    # bench run, or a vpncrypt serving this machine, has a "server" there.
    env = {**os.environ, "VPNCRYPT_RUN_DIR": str(workdir / "run")}
    if pure:
        env["VPNCRYPT_PURE_PYTHON"] = "1"
    server = workdir / "server.toml"
    state = workdir / "state"  # key stores and restart state, never this machine's /var/lib/vpncrypt
    run([str(venv / "vpncrypt-keygen"), "server", "--endpoint", f"{LEFT_UNDERLAY}:{PORT}",
         "--tunnel", f"{LEFT_TUNNEL}/24", "--tunnel", f"{LEFT_TUNNEL6}/64", "--out", str(server), "--server-id", "1",
         "--state-directory", str(state)])
    client = workdir / "client.toml"
    run([str(venv / "vpncrypt-keygen"), "client", "--server-config", str(server), "--name", "right",
         "--out", str(client), "--address", RIGHT_TUNNEL, "--address", RIGHT_TUNNEL6,
         "--key-out", str(state / "client.keys.json"), "--client-state-directory", str(state)])
    pair.spawn("left", [str(venv / "vpncrypt-server"), "--config", str(server)], "vpncrypt-server.log", env)
    time.sleep(0.5)
    pair.spawn("right", [str(venv / "vpncrypt-client"), "--config", str(client)], "vpncrypt-client.log", env)


def start_wireguard_go(pair: Pair, workdir: Path) -> None:
    keys = {}
    for side in ("left", "right"):
        private = run(["wg", "genkey"]).stdout.strip()
        public = run(["wg", "pubkey"], input=private).stdout.strip()
        (workdir / f"{side}.key").write_text(private)
        os.chmod(workdir / f"{side}.key", 0o600)
        keys[side] = public
    # Names differ per side: wireguard-go's control sockets live in
    # /var/run/wireguard, which the namespaces share.
    for side, other, endpoint in (("left", "right", RIGHT_UNDERLAY), ("right", "left", LEFT_UNDERLAY)):
        ns, device = getattr(pair, side), f"wg{side}"
        address, address6 = TUNNEL[side]
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
        pair.processes.append(pair.lab.spawn(ns, ["wireguard-go", "-f", device], f"wireguard-go-{side}.log", env=env))
        wait_for_device(pair, ns, device, "wireguard-go")
        pair.lab.run(ns, ["wg", "set", device, "private-key", str(workdir / f"{side}.key"), "listen-port", str(PORT),
                          "peer", keys[other], "allowed-ips", "203.0.113.0/24,2001:db8:7::/64",
                          "endpoint", f"{endpoint}:{PORT}"])
        pair.lab.run(ns, ["ip", "address", "add", f"{address}/24", "dev", device])
        pair.lab.run(ns, ["ip", "address", "add", f"{address6}/64", "dev", device, "nodad"])
        pair.lab.run(ns, ["ip", "link", "set", device, "mtu", str(MTU), "up"])


def start_quicktun(pair: Pair, workdir: Path) -> None:
    """quicktun with the nacltai protocol. Debian's build reads IF_QT_* variables
    and falls back to the unencrypted raw protocol when PROTOCOL is missing, so
    the log is checked for that warning before anything is measured."""
    keys = {}
    for side in ("left", "right"):
        lines = dict(line.split(": ", 1) for line in run(["/usr/sbin/keypair"]).stdout.splitlines() if ": " in line)
        keys[side] = (lines["SECRET"].strip(), lines["PUBLIC"].strip())
    for side, other, local, remote in (
        ("left", "right", LEFT_UNDERLAY, RIGHT_UNDERLAY), ("right", "left", RIGHT_UNDERLAY, LEFT_UNDERLAY),
    ):
        device = f"qt{side}"
        env = dict(os.environ, IFACE=device, IF_QT_PROTOCOL="nacltai", IF_QT_TUN_MODE="1", IF_QT_TIME_WINDOW="5",
                   IF_QT_LOCAL_ADDRESS=local, IF_QT_LOCAL_PORT=str(PORT), IF_QT_REMOTE_ADDRESS=remote,
                   IF_QT_REMOTE_PORT=str(PORT), IF_QT_PRIVATE_KEY=keys[side][0], IF_QT_PUBLIC_KEY=keys[other][1])
        ns = getattr(pair, side)
        pair.processes.append(pair.lab.spawn(ns, ["quicktun"], f"quicktun-{side}.log", env=env))
        wait_for_device(pair, ns, device, "quicktun")
        log = (pair.lab.workdir / f"quicktun-{side}.log").read_text()
        if "insecure" in log or "not specified" in log:
            raise RuntimeError(f"quicktun is not using nacltai: {log}")
        address_point_to_point(pair, ns, device, side)
        pair.lab.run(ns, ["ip", "link", "set", device, "mtu", str(MTU), "up"])


def start_fastd(pair: Pair, workdir: Path) -> None:
    """fastd in TUN mode with its recommended salsa2012+umac method."""
    keys = {}
    for side in ("left", "right"):
        out = run(["fastd", "--generate-key", "--machine-readable"]).stdout.split()
        secret = out[0]
        public = run(["fastd", "--show-key", "--machine-readable", "--config", "-"],
                     input=f'secret "{secret}";\n').stdout.strip()
        keys[side] = (secret, public)
    for side, other, local, remote in (
        ("left", "right", LEFT_UNDERLAY, RIGHT_UNDERLAY), ("right", "left", RIGHT_UNDERLAY, LEFT_UNDERLAY),
    ):
        device = f"fd{side}"
        config = workdir / f"fastd-{side}.conf"
        config.write_text(
            f'log level warn;\nmode tun;\ninterface "{device}";\nmethod "salsa2012+umac";\n'
            f'bind {local}:{PORT};\nsecret "{keys[side][0]}";\nmtu {MTU};\n'
            f'peer "{other}" {{\n  key "{keys[other][1]}";\n  remote {remote}:{PORT};\n}}\n'
        )
        os.chmod(config, 0o600)
        ns = getattr(pair, side)
        pair.processes.append(pair.lab.spawn(ns, ["fastd", "--config", str(config)], f"fastd-{side}.log"))
        wait_for_device(pair, ns, device, "fastd")
        address_point_to_point(pair, ns, device, side)
        pair.lab.run(ns, ["ip", "link", "set", device, "up"])


def make_certificates(workdir: Path) -> None:
    """A throw-away CA and a server and a client certificate (P-256), valid for a day."""
    def openssl(*args: str) -> None:
        run(["openssl", *args], timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", str(workdir / "ca.key"), "-out", str(workdir / "ca.crt"),
            "-subj", "/CN=vpncrypt-bench-ca", "-days", "1")
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        extensions = workdir / f"{name}.ext"
        extensions.write_text(f"extendedKeyUsage={usage}\nkeyUsage=digitalSignature,keyAgreement\n")
        openssl("req", *ec, "-keyout", str(workdir / f"{name}.key"), "-out", str(workdir / f"{name}.csr"),
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", str(workdir / f"{name}.csr"), "-CA", str(workdir / "ca.crt"),
                "-CAkey", str(workdir / "ca.key"), "-CAcreateserial", "-out", str(workdir / f"{name}.crt"),
                "-days", "1", "-extfile", str(extensions))


def start_openvpn(pair: Pair, workdir: Path) -> None:
    """OpenVPN 2.6 point to point over UDP, TLS with certificates, AES-256-GCM."""
    make_certificates(workdir)
    for side, other, role, cert, remote, verify in (
        ("left", "right", "--tls-server", "server", RIGHT_UNDERLAY, "client"),
        ("right", "left", "--tls-client", "client", LEFT_UNDERLAY, "server"),
    ):
        (address, address6), (peer, peer6) = TUNNEL[side], TUNNEL[other]
        device = f"ov{side}"
        command = [
            "openvpn", "--dev", device, "--dev-type", "tun", "--proto", "udp", "--lport", str(PORT),
            "--remote", remote, str(PORT), role, "--dh", "none", "--ca", str(workdir / "ca.crt"),
            "--cert", str(workdir / f"{cert}.crt"), "--key", str(workdir / f"{cert}.key"),
            "--remote-cert-tls", verify, "--data-ciphers", "AES-256-GCM", "--cipher", "AES-256-GCM",
            "--ifconfig", address, peer, "--ifconfig-ipv6", f"{address6}/64", peer6,
            "--tun-mtu", str(MTU), "--verb", "1",
        ]
        pair.processes.append(pair.lab.spawn(getattr(pair, side), command, f"openvpn-{side}.log"))


VPNS = {
    "vpncrypt": start_vpncrypt,
    "vpncrypt-pure": functools.partial(start_vpncrypt, pure=True),
    "wireguard-go": start_wireguard_go,
    "quicktun": start_quicktun,
    "fastd": start_fastd,
    "openvpn": start_openvpn,
}


def start_python_relay(pair: Pair, workdir: Path, seal: bool = False) -> None:
    """bench/python_relay.py at both ends: unencrypted, or (``seal``) with one
    compiled AES-SIV call a packet; a reference for the added round-trip time only."""
    for side, peer in (("left", RIGHT_UNDERLAY), ("right", LEFT_UNDERLAY)):
        address, address6 = TUNNEL[side]
        pair.spawn(side, [sys.executable, str(Path(__file__).resolve().parent / "python_relay.py"), f"relay{side}",
                          f"{address}/24", f"{address6}/64", peer, str(PORT), *(["--seal"] if seal else [])],
                   f"python-relay-{side}.log")


# Not VPNs: measured only with --only rtt, and never by default.
REFERENCES = {"python-relay": start_python_relay,
              "python-relay-siv": functools.partial(start_python_relay, seal=True)}


def versions(peers: list[str]) -> dict[str, str]:
    def package(name: str) -> str:
        return run(["dpkg-query", "-W", "-f", "${Version}", name], check=False).stdout.strip() or "?"

    found = {name: package(name) for name in peers if name in VPNS and not name.startswith("vpncrypt")}
    found["vpncrypt"] = importlib.metadata.version("vpncrypt")
    found.update(iperf3=package("iperf3"), kernel=os.uname().release, python=sys.version.split()[0])
    return found


# --- measurements ----------------------------------------------------------------------------

def iperf(pair: Pair, seconds: int, reverse: bool, address: str = RIGHT_TUNNEL) -> float:
    """Mbit/s received, one TCP stream, left sends (or right, with reverse)."""
    command = ["iperf3", "-c", address, "-t", str(seconds), "-J", "-O", "1"]
    if reverse:
        command.append("-R")
    for _ in range(3):  # iperf3's server may still be busy ending the previous test
        done = pair.lab.run(pair.left, command, timeout=seconds + 30, check=False)
        result = json.loads(done.stdout or "{}")
        if "sum_received" in result.get("end", {}):
            return result["end"]["sum_received"]["bits_per_second"] / 1e6
        time.sleep(1)
    raise RuntimeError(f"iperf3 to {address} failed three times: {result.get('error') or done.stderr.strip()}")


def udp_packet_rate(pair: Pair, seconds: int) -> float:
    """64-byte UDP datagrams per second that arrive, left to right, sent flat out."""
    command = ["iperf3", "-c", RIGHT_TUNNEL, "-u", "-l", "64", "-b", "0", "-t", str(seconds), "-J"]
    result = json.loads(pair.lab.run(pair.left, command, timeout=seconds + 30).stdout)
    summary = result["end"]["sum"]
    return (summary["packets"] - summary["lost_packets"]) / summary["seconds"]


def udp_goodput(pair: Pair, seconds: int) -> float:
    """Mbit/s of full-sized UDP datagrams that arrive, left to right, sent flat out."""
    size = MTU - 20 - 8
    command = ["iperf3", "-c", RIGHT_TUNNEL, "-u", "-l", str(size), "-b", "0", "-t", str(seconds), "-J"]
    result = json.loads(pair.lab.run(pair.left, command, timeout=seconds + 30).stdout)
    summary = result["end"]["sum"]
    return (summary["packets"] - summary["lost_packets"]) * size * 8 / summary["seconds"] / 1e6


def udp_gso_goodput(pair: Pair, seconds: int) -> float:
    """Mbit/s of full-sized UDP datagrams that arrive, left to right, from a UDP_SEGMENT sender."""
    sink = Job(pair.lab, pair.right, "udp-count", RIGHT_TUNNEL, "5301")
    sink.wait_until_ready()
    flood = Job(pair.lab, pair.left, "udp-flood", RIGHT_TUNNEL, "5301", str(seconds), str(MTU - 20 - 8))
    flood.result(timeout=seconds + 30)
    counted = sink.result(timeout=30)
    return counted["bytes"] * 8 / counted["seconds"] / 1e6 if counted["seconds"] else float("nan")


def ping_rtt(pair: Pair, address: str, count: int = 20, interval: float = 0.05) -> float:
    done = pair.lab.run(pair.left, ["ping", "-c", str(count), "-i", str(interval), "-q", address], check=False,
                        timeout=30 + count * interval)
    match = re.search(r"= [\d.]+/([\d.]+)/", done.stdout)
    return float(match.group(1)) if match else float("nan")


def counters(pair: Pair) -> tuple[int, int]:
    stats = Path(f"/sys/class/net/{pair.left_if}/statistics")
    text = pair.lab.run(pair.left, ["cat", str(stats / "tx_bytes"), str(stats / "tx_packets")]).stdout.split()
    return int(text[0]), int(text[1])


def wire_overhead(pair: Pair, count: int = 50, size: int = 1000) -> float:
    """Extra underlay bytes per tunnelled packet, control traffic (handshakes,
    keepalives) included: from the left's transmit counters while it sends
    ``count`` pings of a known size (no ARP: the neighbours are permanent)."""
    before = counters(pair)
    pair.lab.run(pair.left, ["ping", "-c", str(count), "-i", "0.02", "-q", "-s", str(size), RIGHT_TUNNEL], check=False)
    after = counters(pair)
    inner = size + 8 + 20  # ICMP payload + ICMP header + IPv4 header
    framing = 14 + 20 + 8  # Ethernet, IPv4 and UDP around each tunnelled packet
    return (after[0] - before[0] - count * (inner + framing)) / count


def measure(name: str, workdir: Path, runs: int, seconds: int, path_mtu: int | None = None,
            only_rtt: bool = False, pings: int = 20, interval: float = 0.05) -> dict:
    pid_file = workdir / name / "iperf3.pid"
    with Lab(workdir / name) as lab:
        pair = Pair(lab)
        pair.lab.run(pair.right, ["iperf3", "-s", "-D", "--pidfile", str(pid_file)])
        try:
            underlay_rtt = ping_rtt(pair, RIGHT_UNDERLAY, pings, interval)
            (VPNS.get(name) or REFERENCES[name])(pair, workdir / name)
            wait_for_ping(pair)
            figures: dict = {"underlay_rtt_ms": underlay_rtt}
            cpu = pair.cpu_ns()
            figures["tunnel_rtt_ms"] = ping_rtt(pair, RIGHT_TUNNEL, pings, interval)
            # Both ends' CPU time per ping, timers (keepalives, saves) included.
            figures["cpu_us_per_ping"] = (pair.cpu_ns() - cpu) / pings / 1000
            figures["added_rtt_ms"] = figures["tunnel_rtt_ms"] - underlay_rtt
            if only_rtt:
                figures["added_rtt_runs"] = [figures["added_rtt_ms"]]
                return figures
            figures["overhead_bytes"] = wire_overhead(pair)
            for direction, reverse in (("forward", False), ("reverse", True)):
                rates, efficiencies = [], []
                for _ in range(runs):
                    cpu = pair.cpu_seconds()
                    rate = iperf(pair, seconds, reverse)
                    spent = pair.cpu_seconds() - cpu
                    rates.append(rate)
                    efficiencies.append(rate * (seconds + 1) / spent if spent else float("nan"))
                figures[f"tcp_{direction}_mbit"] = statistics.median(rates)
                figures[f"tcp_{direction}_runs"] = rates
                figures[f"mbit_per_cpu_s_{direction}"] = statistics.median(efficiencies)
                rates6 = [iperf(pair, seconds, reverse, RIGHT_TUNNEL6) for _ in range(runs)]
                figures[f"tcp6_{direction}_mbit"] = statistics.median(rates6)
                figures[f"tcp6_{direction}_runs"] = rates6
            figures["udp_mbit"] = statistics.median(udp_goodput(pair, seconds) for _ in range(runs))
            figures["udp_gso_mbit"] = statistics.median(udp_gso_goodput(pair, seconds) for _ in range(runs))
            figures["udp64_pps"] = statistics.median(udp_packet_rate(pair, seconds) for _ in range(runs))
            if path_mtu:
                for ns, interface in ((pair.left, pair.left_if), (pair.right, pair.right_if)):
                    pair.lab.run(ns, ["ip", "link", "set", interface, "mtu", str(path_mtu)])
                for direction, reverse in (("forward", False), ("reverse", True)):
                    rates = [iperf(pair, seconds, reverse) for _ in range(runs)]
                    figures[f"tcp_{direction}_mbit_path_mtu"] = statistics.median(rates)
                    figures[f"tcp_{direction}_path_mtu_runs"] = rates
        finally:
            # iperf3 -D leaves the process tree: end it by its PID even when a VPN fails.
            if pid_file.exists():
                os.kill(int(pid_file.read_text().strip()), 15)
            pair.stop_all()
        return figures


def combined(rounds: list[dict]) -> dict:
    """One VPN's figures over the rounds: the median of each, every run kept."""
    return {key: [run for figures in rounds for run in figures[key]] if key.endswith("_runs")
            else statistics.median(figures[key] for figures in rounds) for key in rounds[0]}


RATIO_KEYS = ("tcp_forward_mbit", "tcp_reverse_mbit", "tcp6_forward_mbit", "tcp6_reverse_mbit",
              "mbit_per_cpu_s_forward", "mbit_per_cpu_s_reverse", "udp_gso_mbit")


def round_ratios(rounds: list[dict], name: str, peer: str) -> dict[str, float]:
    """The median over the rounds of name's figure over peer's in the same round."""
    return {key: statistics.median(figures[name][key] / figures[peer][key] if figures[peer][key] else float("nan")
                                   for figures in rounds) for key in RATIO_KEYS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--peers", default=",".join(VPNS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--path-mtu", type=int, help="also measure TCP with the underlay link at this MTU")
    parser.add_argument("--only", choices=["rtt"], help="measure only the added round-trip time")
    parser.add_argument("--pings", type=int, default=20, help="pings for each RTT figure")
    parser.add_argument("--ping-interval", type=float, default=0.05, help="seconds between two pings")
    args = parser.parse_args()
    peers = args.peers.split(",")
    for name in peers:
        if name not in VPNS and name not in REFERENCES:
            parser.error(f"unknown peer {name!r}: choose from {', '.join([*VPNS, *REFERENCES])}")
        if name in REFERENCES and args.only != "rtt":
            parser.error(f"{name} is a reference for the round-trip time, not a VPN: use it with --only rtt")
    workdir = Path(tempfile.mkdtemp(prefix="vpncrypt-bench-"))
    print(f"this run's configs, throw-away keys and daemon logs: {workdir} (left to read; remove it when done)",
          file=sys.stderr, flush=True)
    # Round after round, each VPN measured once a round: a load that comes and
    # goes on this shared machine hits every VPN alike, not the one whose turn it is.
    rounds = []
    for number in range(1, args.runs + 1):
        figures = {}
        for name in peers:
            figures[name] = measure(name, workdir / f"round-{number}", 1, args.seconds, args.path_mtu,
                                    args.only == "rtt", args.pings, args.ping_interval)
            print(f"round {number}, {name}: "
                  f"{json.dumps({k: v for k, v in figures[name].items() if not k.endswith('_runs')})}",
                  file=sys.stderr, flush=True)
        rounds.append(figures)
    results = {name: combined([figures[name] for figures in rounds]) for name in peers}
    print(f"date {time.strftime('%Y-%m-%d')}; versions {json.dumps(versions(peers))}")
    print(f"command: {' '.join(sys.argv)}\n")
    if args.only == "rtt":
        print("| VPN | underlay RTT ms | tunnel RTT ms | added RTT ms | added RTT ms of each round |"
              " CPU us per ping, both ends |")
        print("|---|---:|---:|---:|---|---:|")
        for name, f in results.items():
            print(f"| {name} | {f['underlay_rtt_ms']:.3f} | {f['tunnel_rtt_ms']:.3f} | {f['added_rtt_ms']:.3f} |"
                  f" {', '.join(f'{v:.3f}' for v in f['added_rtt_runs'])} | {f['cpu_us_per_ping']:.0f} |")
        return 0
    print("| VPN | TCP -> Mbit/s | TCP <- Mbit/s | Mbit per CPU-s -> | Mbit per CPU-s <- |"
          " TCP/IPv6 -> Mbit/s | TCP/IPv6 <- Mbit/s | UDP 1392 B Mbit/s | UDP 1392 B, GSO sender Mbit/s |"
          " UDP 64 B packets/s | added RTT ms | overhead bytes/packet |")
    print("|---|" + "---:|" * 11)
    for name, f in results.items():
        print(f"| {name} | {f['tcp_forward_mbit']:.0f} | {f['tcp_reverse_mbit']:.0f} |"
              f" {f['mbit_per_cpu_s_forward']:.0f} | {f['mbit_per_cpu_s_reverse']:.0f} |"
              f" {f['tcp6_forward_mbit']:.0f} | {f['tcp6_reverse_mbit']:.0f} | {f['udp_mbit']:.0f} |"
              f" {f['udp_gso_mbit']:.0f} |"
              f" {f['udp64_pps']:.0f} | {f['added_rtt_ms']:.3f} | {f['overhead_bytes']:.1f} |")
    if args.path_mtu:
        print(f"\nTCP with the underlay link at {args.path_mtu} bytes, next to the clean 1500-byte path above:\n")
        print(f"| VPN | TCP -> Mbit/s, 1500 | TCP -> Mbit/s, {args.path_mtu} | ratio |"
              f" TCP <- Mbit/s, 1500 | TCP <- Mbit/s, {args.path_mtu} | ratio |")
        print("|---|" + "---:|" * 6)
        for name, f in results.items():
            cells = []
            for direction in ("forward", "reverse"):
                clean, small = f[f"tcp_{direction}_mbit"], f[f"tcp_{direction}_mbit_path_mtu"]
                cells += [f"{clean:.0f}", f"{small:.0f}", f"{small / clean:.2f}" if clean else "-"]
            print(f"| {name} | " + " | ".join(cells) + " |")
    ours = [name for name in peers if name.startswith("vpncrypt")]
    others = [name for name in peers if not name.startswith("vpncrypt")]
    if ours and others:
        print("\nRatios, each the median over the rounds of the two figures of one round:\n")
        print("| VPN / peer | TCP -> | TCP <- | TCP/IPv6 -> | TCP/IPv6 <- | Mbit per CPU-s -> | Mbit per CPU-s <- |"
              " UDP GSO sender |")
        print("|---|" + "---:|" * len(RATIO_KEYS))
        for name in ours:
            for peer in others:
                ratios = round_ratios(rounds, name, peer)
                print(f"| {name} / {peer} | " + " | ".join(f"{ratios[key]:.2f}" for key in RATIO_KEYS) + " |")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "medians": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
