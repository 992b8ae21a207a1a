"""Operating a live server end to end (needs root): vpncrypt show during traffic,
reloads with traffic running, a broken config on reload, clients added, removed and
re-keyed with the server running, routes to a network behind a client, and the
events the log names clients in."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from tests.netlab import (
    CLIENT_UNDERLAY, PORT, ROUTER_UNDERLAY, SERVER_UNDERLAY, TUNNEL_ADDRESS, TUNNEL_ADDRESS6, Lab, VpnLab,
    build_vpn_lab, lab_namespaces, wait_for,
)
from vpncrypt.config import load_client_config
from vpncrypt.core.keys import encode_key
from vpncrypt.core.peer import Peer
from vpncrypt.core.wire import KIND_KEEPALIVE, TO_SERVER

from .conftest import VENV_BIN, job, ping

MIB = 1 << 20
SERVER, A, B = TUNNEL_ADDRESS["server"], TUNNEL_ADDRESS["a"], TUNNEL_ADDRESS["b"]
BEHIND_B, BEHIND_B_HOST = "2001:db8:5::/64", "2001:db8:5::1"  # a network behind client b


@pytest.fixture
def vpn(tmp_path) -> VpnLab:
    lab = Lab(tmp_path / "lab")
    try:
        vpn = build_vpn_lab(lab, VENV_BIN)
        vpn.start_server()
        vpn.start_client("a")
        vpn.start_client("b")
        yield vpn
    finally:
        prefix = lab.prefix
        lab.close()
        assert lab_namespaces(prefix) == [], "namespaces left behind"
        assert not list((lab.workdir / "run").glob("*.sock")), "control sockets left behind"


def log(vpn: VpnLab) -> str:
    return (vpn.lab.workdir / "server.log").read_text()


def clients(vpn: VpnLab) -> dict[str, dict]:
    return {c["name"]: c for c in vpn.server_status()["clients"]}


def flood_ping(vpn: VpnLab, ns: str, address: str, count: int, name: str, interval: float = 0.01
               ) -> subprocess.Popen:
    """``count`` pings ``interval`` seconds apart, in the background."""
    return vpn.lab.spawn(ns, ["ping", "-q", "-i", str(interval), "-c", str(count), "-W", "2", address], name)


def ping_result(vpn: VpnLab, process: subprocess.Popen, name: str) -> tuple[int, int]:
    process.wait(30)
    text = (vpn.lab.workdir / name).read_text()
    found = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    assert found, text
    return int(found.group(1)), int(found.group(2))


def test_show_and_reloads_with_traffic_running(vpn):
    """Three reloads (a client added, a setting changed, another client re-keyed) while
    client a pings every 10 ms and uploads: not one of a's pings is lost, and the
    upload arrives intact. A broken config is refused, by the command and on SIGHUP,
    with the line a start gives; the server goes on with the old one."""
    a = vpn.client_ns["a"]
    assert ping(vpn, a, SERVER, 1).returncode == 0
    sink = job(vpn, vpn.server_ns, "sink", SERVER, "5001")
    sink.wait_until_ready()
    upload = job(vpn, a, "source", SERVER, "5001", str(6 * MIB), str(2 * MIB))  # about 3 s
    pings = flood_ping(vpn, a, SERVER, 300, "ping-a.log")
    time.sleep(0.3)
    first = clients(vpn)["a"]
    text = vpn.vpncrypt("show").stdout
    vpn.add_client("c", "--reload")
    server_toml = vpn.configs / "server.toml"
    server_toml.write_text(server_toml.read_text().replace("time_window = 128", "time_window = 120"))
    reloaded = vpn.vpncrypt("reload", "server")
    vpn.rotate_client("b", "--reload")
    second = clients(vpn)["a"]
    prometheus = vpn.vpncrypt("show", "server", "--prometheus").stdout
    assert ping_result(vpn, pings, "ping-a.log") == (300, 300)
    sent, received = upload.result(), sink.result()
    assert sent["sha256"] == received["sha256"] and received["bytes"] == 6 * MIB

    assert "time_window now 120" in reloaded.stdout
    assert second["rx_packets"] > first["rx_packets"] > 0 and second["tx_bytes"] > first["tx_bytes"]
    assert first["endpoint"] == f"{ROUTER_UNDERLAY}:40000"
    assert "client: a\n  ID: 1\n" in text and "last datagram: " in text and "received (" in text
    assert re.search(r'vpncrypt_client_receive_packets_total\{daemon="server",name="a",client_id="1"\} \d+',
                     prometheus)
    status = vpn.server_status()
    assert sorted(c["name"] for c in status["clients"]) == ["a", "b", "c"]
    own = json.loads(vpn.vpncrypt("show", "a", "--json").stdout)  # a client daemon answers too
    assert own["role"] == "client" and own["client_id"] == 1 and own["server"]["endpoint"] == f"{SERVER_UNDERLAY}:{PORT}"
    assert own["server"]["rx_packets"] >= 300 and own["server"]["last_datagram"] is not None
    assert "client: a\n  ID: 1, server ID 7" in text  # vpncrypt show: every daemon here
    for name in ("a", "b", "c"):
        key = encode_key(load_client_config(vpn.configs / f"{name}.toml").key)
        assert key not in json.dumps(status) and key not in text and key not in log(vpn)

    # A broken config: refused with the start's own line; the old one stays.
    good = server_toml.read_text()
    server_toml.write_text(good.replace("client_to_client = true", "client_to_client = no"))
    start = subprocess.run([str(VENV_BIN / "vpncrypt-server"), "--config", str(server_toml), "--dry-run"],
                           capture_output=True, text=True, timeout=30)
    refused = vpn.vpncrypt("reload", "server", check=False)
    assert refused.returncode == start.returncode == 2
    assert refused.stderr.split(": error: ", 1)[1] == start.stderr.split(": error: ", 1)[1]
    os.kill(vpn.processes["server"].pid, signal.SIGHUP)
    assert wait_for(lambda: log(vpn).count("reload refused, still running on the config as it was") == 2, 5)
    assert vpn.processes["server"].poll() is None
    assert ping(vpn, a, SERVER, 2).returncode == 0
    assert sorted(clients(vpn)) == ["a", "b", "c"]
    # SIGHUP with the config mended takes it.
    server_toml.write_text(good.replace("time_window = 120", "time_window = 128"))
    os.kill(vpn.processes["server"].pid, signal.SIGHUP)
    assert wait_for(lambda: "time_window now 128" in log(vpn), 5)


def test_add_remove_and_rotate_with_the_server_running(vpn):
    """Client c added and started (in the outsider's namespace) with the server
    running; client a re-keyed while its old config still runs, which the server then
    refuses and names; a started with its new config works at the same address;
    c removed and refused at once; a route to a network behind client b."""
    a, b, outsider = vpn.client_ns["a"], vpn.client_ns["b"], vpn.outsider_ns
    vpn.add_client("c", "--reload")
    vpn.start_client("c", ns=outsider)
    c_address = str(load_client_config(vpn.configs / "c.toml").addresses[0].ip)
    assert ping(vpn, outsider, SERVER, 2).returncode == 0
    assert clients(vpn)["c"]["endpoint"].startswith(f"{CLIENT_UNDERLAY['outsider']}:")
    assert ping(vpn, a, c_address, 2).returncode == 0

    vpn.rotate_client("a", "--reload")
    # The old key: refused. (Datagrams stamped before the re-keyed client's start
    # count as "superseded"; the later ones fail authentication.)
    assert ping(vpn, a, SERVER, 2).returncode != 0
    assert wait_for(lambda: ping(vpn, a, SERVER, 2).returncode != 0 and clients(vpn)["a"]["auth_failures"] >= 5,
                    10), {k: v for k, v in vpn.server_status()["drops"].items() if v}
    assert wait_for(lambda: "client 'a' (ID 1): " in log(vpn) and "failed authentication" in log(vpn), 3)
    assert vpn.lab.stop(vpn.processes["client-a"]) == 0
    vpn.snat(ROUTER_UNDERLAY, 40000)  # a new socket: forget the old mapping
    vpn.start_client("a")
    assert ping(vpn, a, SERVER, 2).returncode == 0
    assert str(load_client_config(vpn.configs / "a.toml").addresses[0].ip) == A

    vpn.remove_client("c", "--reload")
    unknown_before = vpn.server_status()["drops"]["unknown_client"]
    assert ping(vpn, outsider, SERVER, 2).returncode != 0
    status = vpn.server_status()
    assert "c" not in {c["name"] for c in status["clients"]}
    assert status["drops"]["unknown_client"] > unknown_before

    # A network behind client b: routed on the server once b's entry names it, and no longer after.
    vpn.lab.run(b, ["ip", "address", "add", f"{BEHIND_B_HOST}/128", "dev", "lo"])
    text = (vpn.configs / "server.toml").read_text()
    entry = f'addresses = ["{B}/32", "{TUNNEL_ADDRESS6["b"]}/128"]'
    assert entry in text
    (vpn.configs / "server.toml").write_text(text.replace(entry, entry[:-1] + f', "{BEHIND_B}"]'))
    vpn.vpncrypt("reload")
    routes = vpn.lab.run(vpn.server_ns, ["ip", "-6", "route", "show", "dev", "vpncrypt0"]).stdout
    assert BEHIND_B in routes
    # Re-addressed, b starts afresh on the server, which knows where it is from its next datagram.
    assert ping(vpn, b, SERVER, 1).returncode == 0
    assert ping(vpn, vpn.server_ns, BEHIND_B_HOST, 2).returncode == 0
    (vpn.configs / "server.toml").write_text(text)
    vpn.vpncrypt("reload")
    assert BEHIND_B not in vpn.lab.run(vpn.server_ns, ["ip", "-6", "route", "show", "dev", "vpncrypt0"]).stdout
    assert ping(vpn, vpn.server_ns, BEHIND_B_HOST, 1).returncode != 0


def forged(key: bytes, key_epoch: int, client_id: int, ahead: float, count: int) -> list[bytes]:
    """Keepalives of ``client_id`` sealed with its key, stamped ``ahead`` seconds from now."""
    peer = Peer(client_id, key, key_epoch=key_epoch, server_id=7, send_direction=TO_SERVER, now=time.time() + ahead)
    return [peer.seal(KIND_KEEPALIVE, [b""], time.time() + ahead)[0] for _ in range(count)]


def test_events_name_the_client_once(vpn, tmp_path):
    a, outsider = vpn.client_ns["a"], vpn.outsider_ns
    assert wait_for(lambda: "client 'a' (ID 1) heard for the first time" in log(vpn), 5)
    # Roaming: a's NAT mapping changes.
    vpn.snat(ROUTER_UNDERLAY, 40001)
    assert ping(vpn, a, SERVER, 2).returncode == 0
    # A clock 40 s ahead, and datagrams 300 s ahead (outside the window), of a client "skew".
    vpn.add_client("skew", "--reload")
    skew = load_client_config(vpn.configs / "skew.toml")
    hostile = tmp_path / "skew.hex"
    hostile.write_text("\n".join(d.hex() for d in forged(skew.key, skew.key_epoch, skew.client_id, 40, 2)))
    assert job(vpn, outsider, "hostile", SERVER_UNDERLAY, str(PORT), str(hostile)).result()["replies"] == 0
    # A clock is named ahead once its stamps have moved on with the server's (events.py, _check_clock).
    assert wait_for(lambda: f"client 'skew' (ID {skew.client_id}) heard for the first time" in log(vpn), 5)
    time.sleep(2)
    hostile.write_text("\n".join(d.hex() for d in forged(skew.key, skew.key_epoch, skew.client_id, 40, 1)
                                 + forged(skew.key, skew.key_epoch, skew.client_id, 300, 5)))
    # Authentic but 300 s ahead: one time answer (at most one every 2 s), nothing else.
    assert job(vpn, outsider, "hostile", SERVER_UNDERLAY, str(PORT), str(hostile)).result()["replies"] <= 1
    # Send errors: the server's firewall refuses its datagrams to a for a moment.
    vpn.lab.run(vpn.server_ns, ["nft", "-f", "-"], input=(
        "table inet vcout {\n  chain out { type filter hook output priority 0;"
        f" udp sport {PORT} ip daddr {ROUTER_UNDERLAY} drop; }}\n}}\n"))
    ping(vpn, vpn.server_ns, A, 3)
    vpn.lab.run(vpn.server_ns, ["nft", "delete", "table", "inet", "vcout"])
    # The same config on two machines: a's copy started in the outsider's namespace.
    (vpn.configs / "a2.toml").write_bytes((vpn.configs / "a.toml").read_bytes())
    os.chmod(vpn.configs / "a2.toml", 0o600)
    state = vpn.lab.workdir / "state"  # and its key store, copied with it
    (state / "a2.keys.json").write_bytes((state / "a.keys.json").read_bytes())
    os.chmod(state / "a2.keys.json", 0o600)
    vpn.start_client("a2", ns=outsider, config="a2")
    both = [flood_ping(vpn, ns, SERVER, 100, f"ping-{ns}.log", 0.05) for ns in (a, outsider)]  # both for 5 s
    for process in both:
        process.wait(30)

    expected = {
        "first": "client 'a' (ID 1) heard for the first time since start, from 192.0.2.254:40000",
        "first b": "client 'b' (ID 2) heard for the first time since start",
        "roam": "client 'a' (ID 1) roamed from 192.0.2.254:40000 to 192.0.2.254:40001",
        "clock": f"client 'skew' (ID {skew.client_id}): its clock is about ",
        "window": f"client 'skew' (ID {skew.client_id}): 5 datagrams in the last",
        "added": f"client 'skew' (ID {skew.client_id}) heard for the first time since it was added",
        "send": "datagrams could not be sent in the last",
        "two machines": "client 'a' (ID 1) moved",
    }
    assert wait_for(lambda: all(line in log(vpn) for line in expected.values()), 5), log(vpn)[-3000:]
    text = log(vpn)
    for what, line in expected.items():
        assert text.count(line) == 1, (what, text[-3000:])
    assert "is its config in use on two machines at once?" in text
    # Stamped 40 s ahead when forged, seen a second or more later on a busy machine.
    measured = re.search(r"its clock is about (\d+) s ahead of this host's", text)
    assert measured is not None and 35 <= int(measured.group(1)) <= 41, text[-3000:]
