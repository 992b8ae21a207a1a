"""DNS on a full-tunnel client, end to end (needs root): resolved through
the tunnel, nothing to port 53 on the underlay, resolv.conf put back after
SIGTERM and after kill -9.

The client's namespace gets its own resolv.conf through ``ip netns exec``'s
bind mount of /etc/netns/NS/resolv.conf over /etc/resolv.conf, so nothing
here reads or writes this machine's own. The client's PATH holds only ``ip``,
``sysctl`` and ``sh``: no resolvectl or resolvconf it could reach, so it
takes the file way, which changes that bind-mounted file and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.netlab import (
    REPO_ROOT, ROUTER_CLIENT_SIDE, ROUTER_UNDERLAY, TUNNEL_ADDRESS, Lab, LabError, build_vpn_lab, lab_namespaces,
    wait_for,
)

from .conftest import RESTART_REFUSAL_SECONDS, VENV_BIN

ANSWER = "192.0.2.80"  # what the tunnel's DNS server says www.example.internal is
NAME = "www.example.internal"
LAN_RESOLVER = ROUTER_CLIENT_SIDE["a"]  # the resolver the client had: on its own network, outside the tunnel
ORIGINAL = f"# the namespace's own resolver\nnameserver {LAN_RESOLVER}\n".encode()
COUNT_PORT_53 = (  # every DNS packet that reaches or crosses the router: the underlay
    "table inet vcdns {\n"
    "  counter port53 { }\n"
    "  chain input { type filter hook input priority 0; meta l4proto { tcp, udp } th dport 53 counter name port53; }\n"
    "  chain forward { type filter hook forward priority 0; meta l4proto { tcp, udp } th dport 53 counter name port53; }\n"
    "}\n"
)


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path / "lab")
    etc = None
    try:
        vpn = build_vpn_lab(lab, VENV_BIN, clients=("a",))
        etc = Path("/etc/netns") / vpn.client_ns["a"]
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_bytes(ORIGINAL)
        yield vpn, etc / "resolv.conf"
    finally:
        prefix = lab.prefix
        lab.close()
        if etc is not None:
            shutil.rmtree(etc, ignore_errors=True)
        assert lab_namespaces(prefix) == [], "namespaces left behind"


def underlay_dns_packets(vpn) -> int:
    listed = json.loads(vpn.lab.run(vpn.router_ns, ["nft", "-j", "list", "counter", "inet", "vcdns", "port53"]).stdout)
    return next(item["counter"]["packets"] for item in listed["nftables"] if "counter" in item)


def resolve(vpn) -> str:
    """What the client's namespace resolves NAME to (getent: the C library's
    resolver, reading /etc/resolv.conf), or "" if it does not."""
    result = vpn.lab.run(vpn.client_ns["a"], ["getent", "ahostsv4", NAME], check=False, timeout=30)
    return result.stdout.split()[0] if result.returncode == 0 else ""


def start_client(vpn, path_dir: Path):
    time.sleep(RESTART_REFUSAL_SECONDS)
    vpn.snat(ROUTER_UNDERLAY, 40000)  # a new socket: the router forgets client a's old mapping
    client = vpn.start_client("a", env={"PATH": str(path_dir)})
    # Serving its control socket: its loop runs, so SIGTERM is handled (not the default action).
    assert wait_for(lambda: vpn.vpncrypt("show", "a", check=False).returncode == 0)
    return client


def test_a_full_tunnel_resolves_through_the_tunnel_only_and_puts_resolv_conf_back(lab, tmp_path):
    vpn, resolv_conf = lab
    backup = vpn.lab.workdir / "state" / "a.resolv.conf.json"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "sysctl", "sh"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    vpn.lab.run(vpn.router_ns, ["nft", "-f", "-"], input=COUNT_PORT_53)
    vpn.start_server()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    responder = vpn.lab.spawn(vpn.server_ns, [sys.executable, "-m", "tests.netlab.dns", TUNNEL_ADDRESS["server"],
                                              ANSWER, "20", "120"], "dns.log", env=env)
    log = vpn.lab.workdir / "dns.log"
    assert wait_for(lambda: '"listening"' in log.read_text()), log.read_text()

    # Without the tunnel's DNS, the query goes to the local resolver, over the underlay: the counter sees it.
    assert resolve(vpn) == ""
    leaked = underlay_dns_packets(vpn)
    assert leaked >= 1

    config = vpn.configs / "a.toml"
    text = config.read_text()
    assert "routes = []" in text
    config.write_text(text.replace("routes = []", 'routes = ["0.0.0.0/0", "::/0"]\n'
                                   f'dns = ["{TUNNEL_ADDRESS["server"]}"]\ndns_search = ["example.internal"]'))
    client = start_client(vpn, bin_dir)
    tunnel_lines = f"nameserver {TUNNEL_ADDRESS['server']}\nsearch example.internal\n".encode()
    assert wait_for(lambda: resolv_conf.read_bytes().endswith(tunnel_lines)), resolv_conf.read_bytes()
    assert "through /etc/resolv.conf" in (vpn.lab.workdir / "client-a.log").read_text()
    assert json.loads(backup.read_text())["text"].encode() == ORIGINAL

    assert resolve(vpn) == ANSWER
    queries = [json.loads(line) for line in log.read_text().splitlines() if '"query"' in line]
    assert queries and all(q["from"] == TUNNEL_ADDRESS["a"] for q in queries), queries
    assert {q["query"] for q in queries} == {NAME}
    assert underlay_dns_packets(vpn) == leaked  # nothing to port 53 outside the tunnel

    # SIGTERM: the original file back, no backup left.
    assert vpn.lab.stop(client) == 0
    assert resolv_conf.read_bytes() == ORIGINAL
    assert not backup.exists()

    # kill -9 leaves the tunnel's file and the backup; the next start puts the
    # original back first, so the backup it makes holds the original again.
    client = start_client(vpn, bin_dir)
    assert wait_for(lambda: resolv_conf.read_bytes().endswith(tunnel_lines))
    os.kill(client.pid, signal.SIGKILL)
    client.wait(5)
    assert resolv_conf.read_bytes().endswith(tunnel_lines)
    assert json.loads(backup.read_text())["text"].encode() == ORIGINAL
    client = start_client(vpn, bin_dir)
    assert wait_for(lambda: resolv_conf.read_bytes().endswith(tunnel_lines))
    assert client.poll() is None, (vpn.lab.workdir / "client-a.log").read_text()
    assert json.loads(backup.read_text())["text"].encode() == ORIGINAL
    assert resolve(vpn) == ANSWER
    assert underlay_dns_packets(vpn) == leaked
    assert vpn.lab.stop(client) == 0
    assert resolv_conf.read_bytes() == ORIGINAL
    assert not backup.exists()

    # Killed, then started with dns taken out of its config: no plan sets DNS,
    # and the start still puts back what the killed run left.
    client = start_client(vpn, bin_dir)
    assert wait_for(lambda: resolv_conf.read_bytes().endswith(tunnel_lines))
    os.kill(client.pid, signal.SIGKILL)
    client.wait(5)
    config.write_text(config.read_text().replace(f'dns = ["{TUNNEL_ADDRESS["server"]}"]\n', "")
                      .replace('dns_search = ["example.internal"]', ""))
    client = start_client(vpn, bin_dir)
    assert resolv_conf.read_bytes() == ORIGINAL and not backup.exists()
    assert "put back /etc/resolv.conf" in (vpn.lab.workdir / "client-a.log").read_text()
    assert vpn.lab.stop(client) == 0
    assert resolv_conf.read_bytes() == ORIGINAL
    vpn.lab.stop(responder)
    if responder.returncode not in (0, -signal.SIGTERM):
        raise LabError(f"the DNS responder failed: {log.read_text()}")
