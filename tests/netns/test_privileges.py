"""Issue 12 end to end (needs root): daemons that run as ``nobody`` once started,
and a client that waits for its server's name.

The daemons run from a world-readable copy of vpncrypt (tests/runtime.py):
after the drop they still import modules, and the checkout (or the Python it
uses) may sit where ``nobody`` cannot enter. The lab's directory is made
world-enterable for the same reason (pytest's tmp_path is not)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from tests.netlab import (
    PORT, SERVER_UNDERLAY, TUNNEL_ADDRESS, Lab, ReadinessSocket, build_vpn_lab, lab_namespaces, start_daemon, wait_for,
)
from tests.runtime import ReadableRuntime
from vpncrypt import key_store, privileges
from vpncrypt.core.epochs import oldest_needed_epoch
from vpncrypt.core.keys import new_key

from .conftest import VENV_BIN, ping

SERVER = TUNNEL_ADDRESS["server"]
BEHIND_A = "2001:db8:5::/64"  # a network behind client a, routed on the server after a reload
CAP_NET_ADMIN_MASK = 1 << privileges.CAP_NET_ADMIN
EPOCH_SECONDS = 60


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def shared_directory() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="vpncrypt-lab-", dir="/tmp"))
    os.chmod(directory, 0o755)
    return directory


@pytest.fixture(scope="module")
def runtime():
    readable = ReadableRuntime()
    try:
        yield readable
    finally:
        readable.close()


@pytest.fixture
def unprivileged(runtime):
    """Server and client a, both with user = "nobody", group = "nogroup", key stores
    of 60-second epochs holding keys three epochs old (moved on, and so rewritten,
    as soon as the daemons run), configs 0640 root:nogroup."""
    directory = shared_directory()
    lab = Lab(directory / "lab")
    try:
        vpn = build_vpn_lab(lab, runtime.bin, clients=("a",))
        state = lab.workdir / "state"
        epoch, key = oldest_needed_epoch(time.time(), EPOCH_SECONDS) - 3, new_key()
        for store in (state / "server.keys.json", state / "a.keys.json"):
            key_store.write(store, key_store.KeyTable(EPOCH_SECONDS, {1: (epoch, key)}))
        nogroup = privileges.account("nobody").gid
        for name, table in (("server", "[server]\n"), ("a", "[client]\n")):
            path = vpn.configs / f"{name}.toml"
            path.write_text(path.read_text().replace(table, table + 'user = "nobody"\ngroup = "nogroup"\n', 1))
            os.chown(path, 0, nogroup)
            os.chmod(path, 0o640)
        # Client a: a full tunnel, whose policy rules outlive the device and need CAP_NET_ADMIN to go.
        a_toml = vpn.configs / "a.toml"
        a_toml.write_text(a_toml.read_text().replace("routes = []", 'routes = ["0.0.0.0/0"]'))
        vpn.stale_epoch = epoch
        yield vpn
    finally:
        prefix = lab.prefix
        lab.close()
        shutil.rmtree(directory, ignore_errors=True)
        assert lab_namespaces(prefix) == [], "namespaces left behind"


def rules(vpn, ns) -> list[str]:
    """Policy rules besides the kernel's three defaults (IPv4)."""
    shown = vpn.lab.run(ns, ["ip", "-4", "rule", "show"]).stdout.splitlines()
    return [line for line in shown if not line.startswith(("0:", "32766:", "32767:"))]


def client_routes(vpn) -> str:
    return vpn.lab.run(vpn.server_ns, ["ip", "-6", "route", "show", "dev", "vpncrypt0"]).stdout


def assert_dropped(pid: int) -> None:
    """nobody/nogroup, with CAP_NET_ADMIN alone in every set (ambient too), no new privileges."""
    assert wait_for(lambda: proc_status(pid)["Uid"].split() == ["65534"] * 4), proc_status(pid)
    status = proc_status(pid)
    assert status["Gid"].split() == ["65534"] * 4 and status["Groups"].strip() == ""
    for key in ("CapPrm", "CapEff", "CapAmb", "CapBnd"):
        assert int(status[key], 16) == CAP_NET_ADMIN_MASK, (key, status[key])
    assert status["NoNewPrivs"].strip() == "1"


def test_daemons_run_as_nobody_with_cap_net_admin_alone(unprivileged):
    vpn = unprivileged
    a = vpn.client_ns["a"]
    rules_before = rules(vpn, a)
    server = vpn.start_server()
    client = vpn.start_client("a")
    assert_dropped(server.pid)
    assert_dropped(client.pid)
    assert wait_for(lambda: len(rules(vpn, a)) == len(rules_before) + 2)  # the full tunnel's two rules
    assert ping(vpn, a, SERVER).returncode == 0

    # The keys moved on as nobody: both key stores rewritten, and still theirs.
    state = vpn.lab.workdir / "state"
    for store in ("server.keys.json", "a.keys.json"):
        path = state / store
        assert wait_for(lambda: path.stat().st_uid == 65534 and key_store.load(path, (65534,)).keys[1][0]
                        > vpn.stale_epoch), store
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert (state / "server.bounds.json").stat().st_uid == 65534
    first_advance = key_store.load(state / "server.keys.json", (65534,)).keys[1][0]

    # Reload, by the command and by SIGHUP: the config read again (0640 root:nogroup),
    # a route to a network behind client a added, then removed.
    server_toml = vpn.configs / "server.toml"
    text = server_toml.read_text()
    entry = f'addresses = ["{TUNNEL_ADDRESS["a"]}/32", "2001:db8:7::2/128"]'
    assert entry in text
    server_toml.write_text(text.replace(entry, entry[:-1] + f', "{BEHIND_A}"]'))
    assert "re-addressed 'a'" in vpn.vpncrypt("reload").stdout
    assert BEHIND_A in client_routes(vpn)
    server_toml.write_text(text)
    os.kill(server.pid, signal.SIGHUP)
    assert wait_for(lambda: BEHIND_A not in client_routes(vpn))
    server_log = vpn.lab.workdir / "server.log"
    assert wait_for(lambda: server_log.read_text().count("INFO reloaded ") == 2)
    assert "refused" not in server_log.read_text()
    # Re-addressed, a starts afresh on the server (its datagrams stamped before the
    # reload count as superseded): heard again within a few seconds.
    assert wait_for(lambda: ping(vpn, a, SERVER, 1).returncode == 0, 15), json.dumps(vpn.server_status())

    # And as epochs pass (one a minute here), running as nobody all along. Pings
    # meanwhile: an end erases only as far as the other vouches for its clock, and
    # an idle client hears nothing from its server (docs/PROTOCOL.md 1.1).
    for store in ("server.keys.json", "a.keys.json"):
        assert wait_for(lambda: ping(vpn, a, SERVER, 1).returncode == 0
                        and key_store.load(state / store, (65534,)).keys[1][0] > first_advance,
                        EPOCH_SECONDS + 15, 0.5), store
    assert ping(vpn, a, SERVER).returncode == 0

    # SIGTERM: the client's rules (they outlive its device) and the server's device go.
    assert vpn.lab.stop(client) == 0
    assert rules(vpn, a) == rules_before
    assert vpn.lab.stop(server) == 0
    assert vpn.lab.run(vpn.server_ns, ["ip", "link", "show", "vpncrypt0"], check=False).returncode != 0
    for name in ("server.log", "client-a.log"):
        text = (vpn.lab.workdir / name).read_text()
        assert "Traceback" not in text and "WARNING" not in text.split("running as uid 65534", 1)[1], text


def start_as_systemd_would(vpn, role: str, capabilities: str):
    """As a unit with User=nobody, Group=nogroup, AmbientCapabilities= and
    CapabilityBoundingSet= ``capabilities`` starts it (setpriv(1) does the same),
    and with the directories systemd makes for it (StateDirectory=, RuntimeDirectory=) its own."""
    name, config = ("server", "server") if role == "server" else ("client-a", "a")
    script = "vpncrypt-server" if role == "server" else "vpncrypt-client"
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", f"--inh-caps=-all,{capabilities}",
               f"--ambient-caps=-all,{capabilities}", f"--bounding-set=-all,{capabilities}",
               str(vpn.venv_bin / script), "--config", str(vpn.configs / f"{config}.toml")]
    ns = vpn.server_ns if role == "server" else vpn.client_ns["a"]
    vpn.processes[name] = start_daemon(vpn.lab, ns, command, f"{name}.log", vpn.env())
    return vpn.processes[name]


def test_daemons_that_systemd_started_unprivileged_keep_cap_net_admin_alone(unprivileged):
    vpn = unprivileged
    a = vpn.client_ns["a"]
    rules_before = rules(vpn, a)
    for directory in (vpn.lab.workdir / "state", vpn.run_dir):
        directory.mkdir(mode=0o700, exist_ok=True)
        for path in (directory, *directory.iterdir()):
            os.chown(path, 65534, 65534)
    server = start_as_systemd_would(vpn, "server", "+net_admin,+net_bind_service")
    client = start_as_systemd_would(vpn, "client", "+net_admin")
    for process, bounding in ((server, CAP_NET_ADMIN_MASK | 1 << 10), (client, CAP_NET_ADMIN_MASK)):
        status = proc_status(process.pid)
        assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
        # CAP_NET_BIND_SERVICE went once the socket was bound; the bounding set stays systemd's.
        assert wait_for(lambda: int(proc_status(process.pid)["CapPrm"], 16) == CAP_NET_ADMIN_MASK)
        status = proc_status(process.pid)
        assert int(status["CapEff"], 16) == int(status["CapAmb"], 16) == CAP_NET_ADMIN_MASK
        assert int(status["CapBnd"], 16) == bounding
    assert wait_for(lambda: len(rules(vpn, a)) == len(rules_before) + 2)  # the full tunnel's two rules
    assert ping(vpn, a, SERVER).returncode == 0
    assert "re-addressed" not in vpn.vpncrypt("reload").stdout  # the control socket, to root
    assert vpn.lab.stop(client) == 0
    assert rules(vpn, a) == rules_before
    assert vpn.lab.stop(server) == 0
    assert list(vpn.run_dir.iterdir()) == []  # the sockets removed: the run directory is theirs


def test_a_user_that_cannot_write_the_state_stops_the_start_with_one_line(unprivileged):
    """The state directory inside a directory nobody cannot enter: the start stops before any device."""
    vpn = unprivileged
    hidden = vpn.lab.workdir / "hidden"
    hidden.mkdir(mode=0o700)
    os.chmod(hidden, 0o700)
    server_toml = vpn.configs / "server.toml"
    (vpn.lab.workdir / "state").rename(hidden / "state")
    server_toml.write_text(re.sub(r"(?m)^state_directory = .*$", f'state_directory = "{hidden}/state"',
                                  server_toml.read_text()))
    done = vpn.lab.run(vpn.server_ns, [str(vpn.venv_bin / "vpncrypt-server"), "--config", str(server_toml)],
                       check=False, env=vpn.env())
    assert done.returncode == 1
    assert done.stderr == (f"vpncrypt-server: error: the state directory {hidden}/state is inside a directory user"
                           " 'nobody' cannot enter; set state_directory in the config to one it can reach"
                           " (/var/lib/vpncrypt, say)\n")
    assert vpn.lab.run(vpn.server_ns, ["ip", "link", "show", "vpncrypt0"], check=False).returncode != 0


@pytest.fixture
def named(tmp_path):
    """The standard lab with client a only, not started, and a hosts file and resolv.conf of
    its own for client a's namespace (``ip netns exec`` mounts /etc/netns/NS/*): the
    server's name is not there yet, and the only name server is on the namespace's own
    loopback, where nothing answers (no query leaves the namespace)."""
    lab = Lab(tmp_path / "lab")
    etc_netns = Path("/etc/netns")
    made_etc_netns = not etc_netns.exists()
    own = None
    try:
        vpn = build_vpn_lab(lab, VENV_BIN, clients=("a",))
        own = etc_netns / vpn.client_ns["a"]
        own.mkdir(parents=True)
        (own / "hosts").write_text("127.0.0.1 localhost\n")
        (own / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        a_toml = vpn.configs / "a.toml"
        a_toml.write_text(a_toml.read_text().replace(f'server = "{SERVER_UNDERLAY}:{PORT}"',
                                                     f'server = "vpn.example:{PORT}"'))
        vpn.start_server()
        yield vpn, own / "hosts"
    finally:
        prefix = lab.prefix
        lab.close()
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)
        if made_etc_netns:
            with contextlib.suppress(OSError):
                etc_netns.rmdir()  # only if empty: other tests may use it meanwhile
        assert lab_namespaces(prefix) == [], "namespaces left behind"


def start_waiting_client(vpn, readiness: ReadinessSocket):
    """Client a, started as systemd would (its notify socket ``readiness``),
    once it has said that it waits for its server's name: in the log and to systemd."""
    command = [str(vpn.venv_bin / "vpncrypt-client"), "--config", str(vpn.configs / "a.toml")]
    process = vpn.lab.spawn(vpn.client_ns["a"], command, "client-a.log", env={**vpn.env(), **readiness.env()})
    vpn.processes["client-a"] = process
    log = vpn.lab.workdir / "client-a.log"
    readiness.sock.settimeout(10)
    fields = dict(line.split("=", 1) for line in readiness.sock.recv(4096).decode().splitlines())
    assert fields["STATUS"].startswith("waiting for the server's name: cannot resolve server 'vpn.example'")
    assert int(fields["EXTEND_TIMEOUT_USEC"]) > 0 and "READY" not in fields
    assert wait_for(lambda: "trying again in" in log.read_text()), log.read_text()
    return process, log


def test_a_client_waits_for_its_servers_name(named):
    vpn, hosts = named
    a = vpn.client_ns["a"]
    # Stopped while waiting: exit 0 at once, and nothing made.
    readiness = ReadinessSocket()
    try:
        process, log = start_waiting_client(vpn, readiness)
    finally:
        readiness.close()
    assert process.poll() is None
    # vpncrypt show reaches it, and says what it waits for.
    shown = vpn.vpncrypt("show", "a").stdout
    assert f"waiting for the server's name: vpn.example:{PORT} (no tunnel yet)" in shown, shown
    assert "last error: cannot resolve server 'vpn.example'" in shown, shown
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert "stopped while waiting for the server's name 'vpn.example'" in log.read_text()
    assert "Traceback" not in log.read_text()
    assert vpn.lab.run(a, ["ip", "link", "show", "vpncrypt0"], check=False).returncode != 0
    assert not vpn.run_dir.exists() or not list(vpn.run_dir.glob("a.*"))
    assert not (vpn.lab.workdir / "state" / "a.bounds.json").exists()
    # Started again, the name appears while it waits: it comes up and traffic flows.
    log.write_text("")
    readiness = ReadinessSocket()
    try:
        process, log = start_waiting_client(vpn, readiness)
        with hosts.open("a") as file:  # the same file: the mount shows what is written to it
            file.write(f"{SERVER_UNDERLAY} vpn.example\n")
        assert readiness.wait_until_ready(process, log).startswith("serving on vpncrypt0")
    finally:
        readiness.close()
    assert ping(vpn, a, SERVER).returncode == 0
    assert "server 'vpn.example' resolved after" in log.read_text()
    assert vpn.lab.stop(process) == 0
