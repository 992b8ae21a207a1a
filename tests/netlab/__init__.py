"""Throw-away networks of namespaces for the demo, the end-to-end tests and benchmarks.

A Lab owns everything it makes: namespaces (under a prefix unique to the run),
the veth pairs between them, and the processes it starts (each in its own
session, ended by PID). ``close()`` removes all of it, and runs however the
work ended. Addresses are documentation ranges only.

The standard topology (``build_vpn_lab``)::

    client a 198.51.100.10 --+                       +-- 192.0.2.1 server
    client b 198.51.100.130 -- router (SNAT to 192.0.2.254)   2001:db8:1::1
             2001:db8:2::b   |
    outsider 198.51.100.200 -+   (not NATed: a third party on the path)

Client a reaches the server over IPv4 through NAT, client b over IPv6.

Tunnel 203.0.113.0/24 and 2001:db8:7::/64; server .1, clients from .2.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


# The repository root: ``tests.netlab.traffic`` is run from it inside namespaces.
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


class LabError(Exception):
    pass


def run(command: list[str], *, check: bool = True, timeout: float = 30, input: str | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, input=input, env=env)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(command)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


class Lab:
    def __init__(self, workdir: Path, prefix: str | None = None) -> None:
        self.prefix = prefix or f"vc{secrets.token_hex(3)}"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self._links = 0

    # --- building ---------------------------------------------------------------------

    def namespace(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.run(name, ["ip", "link", "set", "lo", "up"])
        return name

    def link(self, ns_a: str, ns_b: str) -> tuple[str, str]:
        """A veth pair between two namespaces; returns the two interface names."""
        self._links += 1
        a, b = f"{self.prefix}a{self._links}", f"{self.prefix}b{self._links}"
        run(["ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b])
        self.run(ns_a, ["ip", "link", "set", a, "up"])
        self.run(ns_b, ["ip", "link", "set", b, "up"])
        return a, b

    def address(self, ns: str, interface: str, cidr: str) -> None:
        self.run(ns, ["ip", "address", "add", cidr, "dev", interface])

    def run(self, ns: str, command: list[str], **options) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", ns, *command], **options)

    def spawn(self, ns: str, command: list[str], log_name: str, env: dict | None = None) -> subprocess.Popen:
        """Start a long-running process in ``ns``, its output in workdir/log_name."""
        log = open(self.workdir / log_name, "ab")
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, *command], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, env=env,
        )
        log.close()
        self.processes.append(process)
        return process

    # --- ending -----------------------------------------------------------------------

    def stop(self, process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Signal one process we started (its whole group) and wait for it."""
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        return process.returncode

    def close(self) -> None:
        for process in reversed(self.processes):
            try:
                self.stop(process, timeout=5)
            except (OSError, subprocess.SubprocessError):
                pass
        self.processes.clear()
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "delete", ns], check=False)
        self.namespaces.clear()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


class Job:
    """A traffic.py run in a namespace; ``result()`` is its last JSON line."""

    def __init__(self, lab: Lab, ns: str, *args: str) -> None:
        self.name = f"traffic-{len(lab.processes)}-{args[0]}.log"
        self.lab = lab
        # The venv's python finds tests.netlab only with the repository root on its path,
        # whatever the working directory.
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=path)
        self.process = lab.spawn(ns, [sys.executable, "-m", "tests.netlab.traffic", *args], self.name, env=env)

    def wait_until_ready(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if '"listening"' in self.log() or '"capturing"' in self.log():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise LabError(f"{self.name} did not get ready: {self.log()}")

    def log(self) -> str:
        return (self.lab.workdir / self.name).read_text()

    def result(self, timeout: float = 90) -> dict:
        self.process.wait(timeout)
        lines = [line for line in self.log().splitlines() if line.startswith("{")]
        if not lines:
            raise LabError(f"{self.name} printed no result: {self.log()}")
        return json.loads(lines[-1])


def lab_namespaces(prefix: str) -> list[str]:
    listing = run(["ip", "netns", "list"], check=False).stdout.split("\n")
    return [line.split()[0] for line in listing if line.startswith(prefix + "-")]


# --- the standard VPN topology ---------------------------------------------------------

SERVER_UNDERLAY = "192.0.2.1"
ROUTER_UNDERLAY = "192.0.2.254"
ROUTER_SECOND_ADDRESS = "192.0.2.253"  # what client a's traffic moves to when it "changes address"
CLIENT_UNDERLAY = {"a": "198.51.100.10", "b": "198.51.100.130", "outsider": "198.51.100.200"}
ROUTER_CLIENT_SIDE = {"a": "198.51.100.1", "b": "198.51.100.129", "outsider": "198.51.100.193"}
CLIENT_PREFIX = {"a": 25, "b": 26, "outsider": 26}
SERVER_UNDERLAY6 = "2001:db8:1::1"
ROUTER_UNDERLAY6 = "2001:db8:1::fe"
CLIENT_B_UNDERLAY6 = "2001:db8:2::b"
ROUTER_CLIENT_B_SIDE6 = "2001:db8:2::1"
PORT = 51820
TUNNEL = ["203.0.113.1/24", "2001:db8:7::1/64"]


@dataclass
class VpnLab:
    lab: Lab
    server_ns: str
    router_ns: str
    client_ns: dict[str, str]
    outsider_ns: str
    server_underlay_interface: str
    configs: Path
    venv_bin: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """The daemons' control sockets: the lab's own, never this machine's /run/vpncrypt."""
        return self.lab.workdir / "run"

    def env(self) -> dict[str, str]:
        return dict(os.environ, VPNCRYPT_RUN_DIR=str(self.run_dir))

    def keygen(self, *args: str) -> subprocess.CompletedProcess:
        return run([str(self.venv_bin / "vpncrypt-keygen"), *args], env=self.env())

    def add_client(self, name: str, *extra: str) -> subprocess.CompletedProcess:
        """``vpncrypt-keygen client`` for configs/NAME.toml with the server running (``extra``: --reload ...)."""
        return self.keygen("client", "--server-config", str(self.configs / "server.toml"), "--name", name,
                           "--out", str(self.configs / f"{name}.toml"), *self.client_key_args(name), *extra)

    def client_key_args(self, name: str) -> list[str]:
        """Client NAME runs on this machine: its key file and state go into the lab's state directory."""
        state = self.lab.workdir / "state"
        return ["--key-out", str(state / f"{name}.keys.json"), "--client-state-directory", str(state)]

    def rotate_client(self, name: str, *extra: str) -> subprocess.CompletedProcess:
        """A new key for client NAME, into configs/NAME.toml (and its key file)."""
        return self.keygen("rotate", "--server-config", str(self.configs / "server.toml"), "--name", name,
                           "--out", str(self.configs / f"{name}.toml"), *self.client_key_args(name), *extra)

    def remove_client(self, name: str, *extra: str) -> subprocess.CompletedProcess:
        return self.keygen("remove", "--server-config", str(self.configs / "server.toml"), "--name", name, *extra)

    def vpncrypt(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The ``vpncrypt`` command (show, reload) against the lab's daemons."""
        return run([str(self.venv_bin / "vpncrypt"), *args], check=check, env=self.env())

    def start_server(self, config: str = "server") -> subprocess.Popen:
        command = [str(self.venv_bin / "vpncrypt-server"), "--config", str(self.configs / f"{config}.toml")]
        self.processes["server"] = start_daemon(self.lab, self.server_ns, command, "server.log", self.env())
        return self.processes["server"]

    def start_client(self, name: str, ns: str | None = None, config: str | None = None, env: dict | None = None
                     ) -> subprocess.Popen:
        """Client ``name`` from configs/CONFIG.toml (default: NAME.toml) in namespace ``ns``
        (default: its own), with ``env`` added to the environment."""
        config_path = self.configs / f"{config or name}.toml"
        command = [str(self.venv_bin / "vpncrypt-client"), "--config", str(config_path)]
        ns = ns or self.client_ns[name]
        process = start_daemon(self.lab, ns, command, f"client-{name}.log", {**self.env(), **(env or {})})
        self.processes[f"client-{name}"] = process
        return process

    def server_status(self, name: str = "server") -> dict:
        """The running server's status, as ``vpncrypt show NAME --json`` gives it."""
        return json.loads(self.vpncrypt("show", name, "--json").stdout)

    def start_with_stepped_clock(self, name: str, offset_file: Path, ns: str | None = None) -> subprocess.Popen:
        """The server (``name`` "server") or client ``name``, started as start_server and
        start_client do, with a wall clock that can be stepped while it runs: the real clock
        plus the seconds in ``offset_file`` (clockstep.py; step it with ``write_offset``)."""
        role, script = ("server", "vpncrypt-server") if name == "server" else ("client", "vpncrypt-client")
        ns = ns or (self.server_ns if role == "server" else self.client_ns[name])
        key, log_name = ("server", "server.log") if role == "server" else (f"client-{name}", f"client-{name}.log")
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        command = [str(self.venv_bin / "python"), "-m", "tests.netlab.clockstep", str(offset_file),
                   str(self.venv_bin / script), "--config", str(self.configs / f"{name}.toml")]
        process = start_daemon(self.lab, ns, command, log_name, {**self.env(), "PYTHONPATH": path})
        self.processes[key] = process
        return process

    def log_status(self, key: str = "server", timeout: float = 5) -> dict:
        """What ``kill -USR1`` makes the daemon started as ``key`` ("server",
        "client-a") log: its core's own status, which holds more than
        ``vpncrypt show`` does (each peer's measured clock offset, say)."""
        process = self.processes[key]
        log = self.lab.workdir / ("server.log" if key == "server" else f"{key}.log")
        before = log.read_text().count(" status {")
        os.kill(process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in log.read_text().splitlines() if " status {" in line]
            if len(lines) > before:
                return json.loads(lines[-1].split(" status ", 1)[1])
            time.sleep(0.05)
        raise LabError(f"{key} logged no status line after SIGUSR1")

    def snat(self, address: str, port: int) -> None:
        """Client a's UDP traffic leaves the router from address:port; replaces the rule atomically
        and forgets the old conntrack mapping, as a home router does when its mapping expires."""
        rules = (
            "table ip vcnat {\n"
            "  chain post { type nat hook postrouting priority 100; }\n"
            "}\n"
            "flush chain ip vcnat post\n"
            f"add rule ip vcnat post ip saddr {CLIENT_UNDERLAY['a']} udp dport {PORT} snat to {address}:{port}\n"
            f"add rule ip vcnat post ip saddr {CLIENT_UNDERLAY['b']} masquerade\n"
        )
        self.lab.run(self.router_ns, ["nft", "-f", "-"], input=rules)
        self.lab.run(self.router_ns, ["conntrack", "-D", "-p", "udp", "--orig-src", CLIENT_UNDERLAY["a"]], check=False)


def wait_for(condition, timeout: float = 10.0, interval: float = 0.05):
    """Poll ``condition()`` until it gives something true or ``timeout`` seconds
    pass; returns its last value (the end-to-end tests' one polling loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return condition()


class ReadinessSocket:
    """Where a daemon started by the lab says it is ready, as systemd's
    ``Type=notify`` hears it (sd_notify(3)): ``NOTIFY_SOCKET`` in the daemon's
    environment names a datagram socket in a directory any user may reach (a
    daemon that dropped privileges sends READY=1 after the drop)."""

    def __init__(self) -> None:
        import socket
        import tempfile

        self.directory = Path(tempfile.mkdtemp(prefix="vpncrypt-notify-"))
        self.directory.chmod(0o711)
        self.path = self.directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.path.chmod(0o666)

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}

    def wait_until_ready(self, process: subprocess.Popen, log: Path, timeout: float = 15) -> str:
        """The STATUS= of the first READY=1; LabError if the process exits or stays silent."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.05)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LabError(f"process exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in message.splitlines() if "=" in line)
            if fields.get("READY") == "1":
                return fields.get("STATUS", "")
        raise LabError(f"no READY=1 within {timeout} s: {log.read_text()[-2000:]}")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
        self.directory.rmdir()


def start_daemon(lab: Lab, ns: str, command: list[str], log_name: str, env: dict[str, str],
                 interface: str = "vpncrypt0") -> subprocess.Popen:
    """Start a vpncrypt daemon in ``ns`` and return once it says READY=1 (its
    tunnel, socket and control socket are up), checking its interface is up."""
    readiness = ReadinessSocket()
    try:
        process = lab.spawn(ns, command, log_name, env={**env, **readiness.env()})
        readiness.wait_until_ready(process, lab.workdir / log_name)
    finally:
        readiness.close()
    shown = lab.run(ns, ["ip", "-o", "link", "show", interface], check=False)
    if shown.returncode != 0 or ",UP" not in shown.stdout:
        raise LabError(f"READY=1 but {interface} is not up in {ns}: {shown.stdout or shown.stderr}")
    return process


# --- clocks ------------------------------------------------------------------------------

def libfaketime() -> str:
    """The path of libfaketime (Debian package ``faketime``, which tools/setup installs)."""
    for candidate in [*sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1")),
                      Path("/usr/lib/faketime/libfaketime.so.1")]:
        if candidate.exists():
            return str(candidate)
    raise LabError("libfaketime not found: install the Debian package faketime (tools/setup does)")


def faketime_env(offset: int) -> dict[str, str]:
    """Environment for a process whose wall clock runs ``offset`` seconds off the real one
    for its whole life (libfaketime; its monotonic clock gets the same constant offset,
    which is harmless). For start_client's ``env``, or Lab.spawn's."""
    return {"LD_PRELOAD": libfaketime(), "FAKETIME": f"{offset:+d}s"}


def icmp_counters(lab: Lab, ns: str) -> dict[str, int]:
    """The ICMP (IPv4) counters of namespace ``ns``'s stack (InEchos: echo requests
    it received, InEchoReps: replies), from /proc/net/snmp."""
    rows = [line.split()[1:] for line in lab.run(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
            if line.startswith("Icmp:")]
    return dict(zip(rows[0], map(int, rows[1])))


def build_vpn_lab(lab: Lab, venv_bin: Path | None = None, clients=("a", "b"), client_to_client: bool = True,
                  offload: bool = True) -> VpnLab:
    """Namespaces, links, routing and NAT of the standard topology, and fresh configs."""
    venv_bin = venv_bin or Path(sys.executable).parent
    server = lab.namespace("server")
    router = lab.namespace("router")
    client_ns = {name: lab.namespace(f"client-{name}") for name in clients}
    s_if, r_if = lab.link(server, router)
    lab.address(server, s_if, f"{SERVER_UNDERLAY}/24")
    lab.address(router, r_if, f"{ROUTER_UNDERLAY}/24")
    lab.address(router, r_if, f"{ROUTER_SECOND_ADDRESS}/24")
    lab.run(server, ["ip", "route", "add", "198.51.100.0/24", "via", ROUTER_UNDERLAY])
    lab.run(server, ["ip", "address", "add", f"{SERVER_UNDERLAY6}/64", "dev", s_if, "nodad"])
    lab.run(router, ["ip", "address", "add", f"{ROUTER_UNDERLAY6}/64", "dev", r_if, "nodad"])
    lab.run(server, ["ip", "-6", "route", "add", "2001:db8:2::/64", "via", ROUTER_UNDERLAY6])
    outsider = lab.namespace("outsider")
    for name, ns in [*client_ns.items(), ("outsider", outsider)]:
        c_if, rc_if = lab.link(ns, router)
        lab.address(ns, c_if, f"{CLIENT_UNDERLAY[name]}/{CLIENT_PREFIX[name]}")
        lab.address(router, rc_if, f"{ROUTER_CLIENT_SIDE[name]}/{CLIENT_PREFIX[name]}")
        lab.run(ns, ["ip", "route", "add", "default", "via", ROUTER_CLIENT_SIDE[name]])
        if name == "b":
            lab.run(ns, ["ip", "address", "add", f"{CLIENT_B_UNDERLAY6}/64", "dev", c_if, "nodad"])
            lab.run(router, ["ip", "address", "add", f"{ROUTER_CLIENT_B_SIDE6}/64", "dev", rc_if, "nodad"])
            lab.run(ns, ["ip", "-6", "route", "add", "default", "via", ROUTER_CLIENT_B_SIDE6])
    lab.run(router, ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
    configs = lab.workdir / "configs"
    configs.mkdir(exist_ok=True)
    vpn = VpnLab(lab, server, router, client_ns, outsider, s_if, configs, venv_bin)
    vpn.snat(ROUTER_UNDERLAY, 40000)
    server_toml = configs / "server.toml"
    # Restart state and key stores in the lab, never in this machine's /var/lib/vpncrypt.
    state = lab.workdir / "state"
    args = ["server", "--endpoint", f"{SERVER_UNDERLAY}:{PORT}", "--out", str(server_toml), "--server-id", "7",
            "--state-directory", str(state)]
    for cidr in TUNNEL:
        args += ["--tunnel", cidr]
    vpn.keygen(*args)
    if client_to_client:
        server_toml.write_text(server_toml.read_text().replace("client_to_client = false", "client_to_client = true"))
    for client_id, name in enumerate(clients, 1):  # IDs 1, 2 ... named: keygen's own choice is random
        vpn.keygen("client", "--server-config", str(server_toml), "--name", name, "--out", str(configs / f"{name}.toml"),
                   "--client-id", str(client_id), "--key-out", str(state / f"{name}.keys.json"))
    for path, table in [(server_toml, "[server]\n"), *((configs / f"{n}.toml", "[client]\n") for n in clients)]:
        settings = "" if table == "[server]\n" else f'state_directory = "{state}"\n'
        settings += "" if offload else "offload = false\n"
        path.write_text(path.read_text().replace(table, table + settings, 1))
    if "b" in clients:
        b_toml = configs / "b.toml"
        b_toml.write_text(b_toml.read_text().replace(
            f'server = "{SERVER_UNDERLAY}:{PORT}"', f'server = "[{SERVER_UNDERLAY6}]:{PORT}"'))
    return vpn


# Tunnel addresses keygen hands out, in order.
TUNNEL_ADDRESS = {"server": "203.0.113.1", "a": "203.0.113.2", "b": "203.0.113.3"}
TUNNEL_ADDRESS6 = {"server": "2001:db8:7::1", "a": "2001:db8:7::2", "b": "2001:db8:7::3"}
