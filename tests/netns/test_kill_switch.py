"""The kill switch of a full tunnel, end to end (needs root): while the client
runs nothing leaves its namespace outside the tunnel but its own datagrams,
counted on the router; the table goes at exit, stays after kill -9 (the
host stays cut off) and is replaced, not doubled, at the next start."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.netlab import (
    CLIENT_UNDERLAY, PORT, ROUTER_CLIENT_SIDE, ROUTER_UNDERLAY, TUNNEL_ADDRESS, Lab, build_vpn_lab, lab_namespaces,
    wait_for,
)

from .conftest import RESTART_REFUSAL_SECONDS, VENV_BIN, ping

TABLE = "vpncrypt_ks_vpncrypt0"
COUNT_OTHER_THAN_DATAGRAMS = (  # what client a sends the router but its datagrams to the server
    "table inet vcks {\n"
    "  counter other { }\n"
    f"  chain input {{ type filter hook input priority 0; ip saddr {CLIENT_UNDERLAY['a']} udp dport {PORT} accept;"
    f" ip saddr {CLIENT_UNDERLAY['a']} counter name other; }}\n"
    f"  chain forward {{ type filter hook forward priority 0; ip saddr {CLIENT_UNDERLAY['a']} udp dport {PORT} accept;"
    f" ip saddr {CLIENT_UNDERLAY['a']} counter name other; }}\n"
    "}\n"
)


@pytest.fixture
def vpn(tmp_path):
    lab = Lab(tmp_path / "lab")
    try:
        yield build_vpn_lab(lab, VENV_BIN, clients=("a",))
    finally:
        prefix = lab.prefix
        lab.close()
        assert lab_namespaces(prefix) == [], "namespaces left behind"


def other_packets(vpn) -> int:
    listed = json.loads(vpn.lab.run(vpn.router_ns, ["nft", "-j", "list", "counter", "inet", "vcks", "other"]).stdout)
    return next(item["counter"]["packets"] for item in listed["nftables"] if "counter" in item)


def kill_switch_tables(vpn) -> int:
    return vpn.lab.run(vpn.client_ns["a"], ["nft", "list", "tables"]).stdout.count(TABLE)


def start_client(vpn):
    time.sleep(RESTART_REFUSAL_SECONDS)
    vpn.snat(ROUTER_UNDERLAY, 40000)  # a new socket: the router forgets client a's old mapping
    client = vpn.start_client("a")
    assert wait_for(lambda: vpn.vpncrypt("show", "a", check=False).returncode == 0)  # its loop runs
    return client


def test_nothing_but_the_tunnels_datagrams_leaves_while_the_client_runs(vpn):
    a, lan = vpn.client_ns["a"], ROUTER_CLIENT_SIDE["a"]
    vpn.lab.run(vpn.router_ns, ["nft", "-f", "-"], input=COUNT_OTHER_THAN_DATAGRAMS)
    vpn.start_server()
    assert ping(vpn, a, lan, 1).returncode == 0  # no client: the local network answers, and is counted
    before = other_packets(vpn)
    assert before >= 1

    config = vpn.configs / "a.toml"
    text = config.read_text()
    assert "routes = []" in text
    config.write_text(text.replace("routes = []", 'routes = ["0.0.0.0/0", "::/0"]\nkill_switch = true'))
    client = start_client(vpn)
    assert kill_switch_tables(vpn) == 1
    assert ping(vpn, a, TUNNEL_ADDRESS["server"]).returncode == 0  # through the tunnel: its datagrams pass
    assert ping(vpn, a, lan, 2).returncode != 0  # the local network, outside the tunnel: cut off
    assert other_packets(vpn) == before

    assert vpn.lab.stop(client) == 0
    assert kill_switch_tables(vpn) == 0
    assert ping(vpn, a, lan, 1).returncode == 0

    client = start_client(vpn)
    os.kill(client.pid, signal.SIGKILL)
    client.wait(5)
    assert kill_switch_tables(vpn) == 1  # left by the killed client: the host stays cut off
    counted = other_packets(vpn)
    assert ping(vpn, a, lan, 1).returncode != 0 and other_packets(vpn) == counted
    client = start_client(vpn)
    assert kill_switch_tables(vpn) == 1  # deleted at start, then added again: not twice
    assert ping(vpn, a, TUNNEL_ADDRESS["server"]).returncode == 0
    assert vpn.lab.stop(client) == 0
    assert kill_switch_tables(vpn) == 0
    assert ping(vpn, a, lan, 1).returncode == 0


def test_a_start_without_the_kill_switch_clears_what_a_killed_one_left(vpn):
    """Found by a fresh user: kill -9 of a full tunnel with a kill switch, then a
    start with both taken out of the config left the table and the rules, and
    the tunnel never came up (its datagrams refused: EPERM)."""
    a = vpn.client_ns["a"]
    vpn.start_server()
    config = vpn.configs / "a.toml"
    plain = config.read_text()
    config.write_text(plain.replace("routes = []", 'routes = ["0.0.0.0/0", "::/0"]\nkill_switch = true'))
    client = start_client(vpn)
    os.kill(client.pid, signal.SIGKILL)
    client.wait(5)
    assert kill_switch_tables(vpn) == 1
    rules = vpn.lab.run(a, ["ip", "-4", "rule", "show"]).stdout
    assert "lookup 30307" in rules
    config.write_text(plain)
    client = start_client(vpn)
    assert kill_switch_tables(vpn) == 0
    assert "30307" not in vpn.lab.run(a, ["ip", "-4", "rule", "show"]).stdout
    assert "30307" not in vpn.lab.run(a, ["ip", "-6", "rule", "show"]).stdout
    assert ping(vpn, a, TUNNEL_ADDRESS["server"]).returncode == 0
    assert vpn.lab.stop(client) == 0
