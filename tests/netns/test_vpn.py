"""The VPN end to end: real namespaces, real TUN devices, real traffic (needs root)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from tests.netlab import (
    CLIENT_B_UNDERLAY6, PORT, ROUTER_CLIENT_SIDE, ROUTER_SECOND_ADDRESS, ROUTER_UNDERLAY, SERVER_UNDERLAY,
    SERVER_UNDERLAY6, TUNNEL_ADDRESS, TUNNEL_ADDRESS6, wait_for,
)
from vpncrypt.core.peer import Peer
from vpncrypt.core.wire import KIND_DATA, TO_SERVER

from .conftest import RESTART_REFUSAL_SECONDS, job, ping

MIB = 1 << 20
SERVER, A, B = TUNNEL_ADDRESS["server"], TUNNEL_ADDRESS["a"], TUNNEL_ADDRESS["b"]


def client_status(vpn, name):
    return next(c for c in vpn.server_status()["clients"] if c["name"] == name)


def assert_intact(sent, received, size):
    assert sent["bytes"] == received["bytes"] == size, (sent, received)
    assert sent["sha256"] == received["sha256"]


def test_traffic_through_the_tunnel(vpn):
    a, b = vpn.client_ns["a"], vpn.client_ns["b"]
    # ICMP echo, IPv4 and IPv6, and client to client through the server.
    assert ping(vpn, a, SERVER).returncode == 0
    assert ping(vpn, b, SERVER).returncode == 0
    assert ping(vpn, a, TUNNEL_ADDRESS6["server"]).returncode == 0
    assert ping(vpn, a, B).returncode == 0
    assert ping(vpn, b, TUNNEL_ADDRESS6["a"]).returncode == 0
    # UDP.
    echo = job(vpn, vpn.server_ns, "udp-echo", SERVER, "7000", "50")
    echo.wait_until_ready()
    assert job(vpn, a, "udp-ping", SERVER, "7000", "50").result()["answered"] == 50
    # 16 MiB each way at once, with client b pulling over IPv6 meanwhile.
    up_sink = job(vpn, vpn.server_ns, "sink", SERVER, "5001")
    down_source = job(vpn, vpn.server_ns, "serve-source", SERVER, "5002", str(16 * MIB), "0")
    six_source = job(vpn, vpn.server_ns, "serve-source", TUNNEL_ADDRESS6["server"], "5003", str(4 * MIB), "0")
    for listener in (up_sink, down_source, six_source):
        listener.wait_until_ready()
    up = job(vpn, a, "source", SERVER, "5001", str(16 * MIB), "0")
    down = job(vpn, a, "fetch", SERVER, "5002")
    six = job(vpn, b, "fetch", TUNNEL_ADDRESS6["server"], "5003")
    assert_intact(up.result(), up_sink.result(), 16 * MIB)
    assert_intact(down_source.result(), down.result(), 16 * MIB)
    assert_intact(six_source.result(), six.result(), 4 * MIB)
    # TCP client to client (a -> b through the server).
    sink_b = job(vpn, b, "sink", B, "5004")
    sink_b.wait_until_ready()
    assert_intact(job(vpn, a, "source", B, "5004", str(2 * MIB), "0").result(), sink_b.result(), 2 * MIB)
    status = vpn.server_status()
    assert status["drops"]["auth_failed"] == 0 and status["drops"]["replayed"] == 0
    # One server socket serves both underlays: a through IPv4 NAT, b over IPv6.
    assert client_status(vpn, "a")["endpoint"].startswith(f"{ROUTER_UNDERLAY}:")
    assert client_status(vpn, "b")["endpoint"].startswith(f"[{CLIENT_B_UNDERLAY6}]:")


def test_udp_segmentation_offload_senders(vpn):
    """A sender using UDP_SEGMENT, as QUIC stacks do, both ways: every datagram arrives
    whole and on its own, short tails included. With offloads on, the sending end cuts
    the kernel's super-packets itself and the receiving end writes runs merged."""
    a, b = vpn.client_ns["a"], vpn.client_ns["b"]
    assert ping(vpn, b, TUNNEL_ADDRESS6["server"]).returncode == 0  # the server learns b's endpoint
    up_sink = job(vpn, vpn.server_ns, "udp-sink", SERVER, "7100", "2000")
    down_sink = job(vpn, b, "udp-sink", TUNNEL_ADDRESS6["b"], "7101", "1000")
    up_sink.wait_until_ready()
    down_sink.wait_until_ready()
    up = job(vpn, a, "udp-gso-source", SERVER, "7100", "2000", "1200")
    down = job(vpn, vpn.server_ns, "udp-gso-source", TUNNEL_ADDRESS6["b"], "7101", "1000", "1000")
    assert up.result()["sent"] == 2000 and down.result()["sent"] == 1000
    assert up_sink.result() == {"received": 2000, "intact": 2000, "sizes": [600, 1200]}
    assert down_sink.result() == {"received": 1000, "intact": 1000, "sizes": [500, 1000]}


BEYOND_SERVER, BEYOND_SERVER6 = "192.0.2.100", "2001:db8:9::1"  # on the server, reached through it


def start_client_again(vpn, name: str, old: str | None = None, new: str | None = None) -> None:
    """A client started anew (after a stop or a kill), its config edited first."""
    if old is not None:
        config = vpn.configs / f"{name}.toml"
        text = config.read_text()
        assert old in text
        config.write_text(text.replace(old, new))
    # A new socket: the router's NAT forgets the old one's fixed mapping (client a's).
    vpn.snat(ROUTER_UNDERLAY, 40000)
    time.sleep(RESTART_REFUSAL_SECONDS)
    vpn.start_client(name)


def our_rules(vpn, ns):
    """The policy rules in ``ns`` besides the kernel's three default ones, each family."""
    rules = []
    for family in ("-4", "-6"):
        shown = vpn.lab.run(ns, ["ip", family, "rule", "show"]).stdout.splitlines()
        rules += [f"{family} {line}" for line in shown if not line.startswith(("0:", "32766:", "32767:"))]
    return rules


def test_default_route_through_the_tunnel(vpn):
    """routes = 0.0.0.0/0 and ::/0 on client a: everything goes through the tunnel but
    the tunnel's own datagrams and the client's local networks; at exit, and after
    a kill -9 at the next start, the policy rules are gone."""
    a = vpn.client_ns["a"]
    vpn.lab.run(vpn.server_ns, ["ip", "address", "add", f"{BEYOND_SERVER}/32", "dev", "lo"])
    vpn.lab.run(vpn.server_ns, ["ip", "address", "add", f"{BEYOND_SERVER6}/128", "dev", "lo"])
    # The router will not carry client a's packets there itself: only the tunnel can.
    vpn.lab.run(vpn.router_ns, ["nft", "-f", "-"], input=(
        "table ip vcfilter {\n  chain forward { type filter hook forward priority 0;"
        f" ip daddr {BEYOND_SERVER} drop; }}\n}}\n"))
    assert ping(vpn, a, BEYOND_SERVER, 1).returncode != 0
    assert vpn.lab.stop(vpn.processes["client-a"]) == 0
    start_client_again(vpn, "a", "routes = []", 'routes = ["0.0.0.0/0", "::/0"]')
    # The device is up before its routes and rules are: wait for the last of them.
    assert wait_for(lambda: len(our_rules(vpn, a)) == 4, 5.0)
    assert ping(vpn, a, BEYOND_SERVER).returncode == 0
    assert ping(vpn, a, BEYOND_SERVER6).returncode == 0
    assert ping(vpn, a, ROUTER_CLIENT_SIDE["a"]).returncode == 0  # the local network: not through the tunnel
    assert len(our_rules(vpn, a)) == 4
    os.kill(vpn.processes["client-a"].pid, signal.SIGKILL)
    vpn.processes["client-a"].wait(5)
    assert len(our_rules(vpn, a)) == 4  # left behind by the killed client
    start_client_again(vpn, "a")
    assert ping(vpn, a, BEYOND_SERVER).returncode == 0
    assert len(our_rules(vpn, a)) == 4  # cleared at start, then made again: not twice
    assert vpn.lab.stop(vpn.processes["client-a"]) == 0
    assert our_rules(vpn, a) == []
    assert ping(vpn, a, SERVER_UNDERLAY).returncode == 0  # the main table's default route again


def test_a_server_answers_from_the_address_a_client_sent_to(vpn):
    """Second addresses on the server (floating IPs): client a, behind NAT, uses the
    IPv4 one, client b, behind a stateful IPv6 firewall, the IPv6 one. Answers from
    the server's first addresses would match neither the NAT's mapping nor the
    firewall's connection."""
    a, b = vpn.client_ns["a"], vpn.client_ns["b"]
    second, second6 = "192.0.2.2", "2001:db8:1::2"
    interface = vpn.server_underlay_interface
    vpn.lab.run(vpn.server_ns, ["ip", "address", "add", f"{second}/24", "dev", interface])
    vpn.lab.run(vpn.server_ns, ["ip", "address", "add", f"{second6}/64", "dev", interface, "nodad"])
    vpn.lab.run(vpn.router_ns, ["nft", "-f", "-"], input=(
        "table ip6 vcstate {\n  chain forward { type filter hook forward priority 0;"
        " ct state established accept; ip6 saddr 2001:db8:1::/64 udp sport 51820 drop; }\n}\n"))
    # For IPv6 the kernel's source selection may well pick the new address: client b
    # uses whichever of the two it does not pick.
    route = vpn.lab.run(vpn.server_ns, ["ip", "-6", "route", "get", CLIENT_B_UNDERLAY6]).stdout
    picked = route.split(" src ")[1].split()[0]
    unpicked6 = second6 if picked == SERVER_UNDERLAY6 else SERVER_UNDERLAY6
    for name, old, new in (("a", f"{SERVER_UNDERLAY}:{PORT}", f"{second}:{PORT}"),
                           ("b", f"[{SERVER_UNDERLAY6}]:{PORT}", f"[{unpicked6}]:{PORT}")):
        assert vpn.lab.stop(vpn.processes[f"client-{name}"]) == 0
        start_client_again(vpn, name, f'server = "{old}"', f'server = "{new}"')
    assert ping(vpn, a, SERVER).returncode == 0
    assert ping(vpn, a, TUNNEL_ADDRESS6["server"]).returncode == 0
    assert ping(vpn, b, TUNNEL_ADDRESS6["server"]).returncode == 0
    assert client_status(vpn, "a")["endpoint"] == f"{ROUTER_UNDERLAY}:40000"
    assert client_status(vpn, "b")["endpoint"].startswith(f"[{CLIENT_B_UNDERLAY6}]:")


def test_a_server_given_by_name_is_followed_to_its_new_address(vpn):
    """The server's address changes and its name with it (dynamic DNS): client a,
    which names it, finds it again without a restart. The name is made with a hosts
    file for client a's namespace alone (``ip netns exec`` mounts /etc/netns/NS/hosts)."""
    a = vpn.client_ns["a"]
    hosts = Path("/etc/netns") / a / "hosts"
    made_etc_netns = not hosts.parent.parent.exists()
    hosts.parent.mkdir(parents=True)
    try:
        hosts.write_text(f"{SERVER_UNDERLAY} vpn.example\n")
        assert vpn.lab.stop(vpn.processes["client-a"]) == 0
        start_client_again(vpn, "a", f'server = "{SERVER_UNDERLAY}:{PORT}"', f'server = "vpn.example:{PORT}"\n'
                             "resolve_interval = 1")
        assert ping(vpn, a, SERVER).returncode == 0
        moved = "192.0.2.2"
        interface = vpn.server_underlay_interface
        # The new address takes over from the old, with its routes (not deleted with it).
        vpn.lab.run(vpn.server_ns, ["sysctl", "-qw", f"net.ipv4.conf.{interface}.promote_secondaries=1"])
        vpn.lab.run(vpn.server_ns, ["ip", "address", "add", f"{moved}/24", "dev", interface])
        vpn.lab.run(vpn.server_ns, ["ip", "address", "delete", f"{SERVER_UNDERLAY}/24", "dev", interface])
        with hosts.open("w") as file:  # the same file: the mount shows what is written to it
            file.write(f"{moved} vpn.example\n")
        log = vpn.lab.workdir / "client-a.log"
        assert wait_for(lambda: f"is now at {moved}:{PORT}" in log.read_text(), 5)
        assert ping(vpn, a, SERVER).returncode == 0
    finally:
        hosts.unlink(missing_ok=True)
        hosts.parent.rmdir()
        if made_etc_netns:
            hosts.parent.parent.rmdir()


def test_roaming_across_source_ports_and_addresses(vpn):
    a = vpn.client_ns["a"]
    assert ping(vpn, a, SERVER, 1).returncode == 0
    assert client_status(vpn, "a")["endpoint"] == f"{ROUTER_UNDERLAY}:40000"
    sink = job(vpn, vpn.server_ns, "sink", SERVER, "5001")
    sink.wait_until_ready()
    size = 12 * MIB
    upload = job(vpn, a, "source", SERVER, "5001", str(size), str(4 * MIB))  # about 3 s
    time.sleep(0.8)
    vpn.snat(ROUTER_UNDERLAY, 40001)  # NAT rebinding: new source port
    assert wait_for(lambda: client_status(vpn, "a")["endpoint"] == f"{ROUTER_UNDERLAY}:40001", 2)
    time.sleep(0.5)
    vpn.snat(ROUTER_SECOND_ADDRESS, 40002)  # new source address
    assert wait_for(lambda: client_status(vpn, "a")["endpoint"] == f"{ROUTER_SECOND_ADDRESS}:40002", 2)
    assert_intact(upload.result(), sink.result(), size)
    assert client_status(vpn, "a")["roams"] == 2


def test_server_restart_mid_transfer(vpn):
    a = vpn.client_ns["a"]
    clients_before = {name: p.pid for name, p in vpn.processes.items() if name.startswith("client")}
    sink = job(vpn, vpn.server_ns, "sink", SERVER, "5001")
    sink.wait_until_ready()
    size = 12 * MIB
    upload = job(vpn, a, "source", SERVER, "5001", str(size), str(3 * MIB))  # about 4 s
    time.sleep(0.8)
    assert vpn.lab.stop(vpn.processes["server"], signal.SIGTERM) == 0  # clean stop: exit 0
    vpn.start_server()
    time.sleep(0.8)
    server = vpn.processes["server"]
    os.kill(server.pid, signal.SIGKILL)
    server.wait(5)
    vpn.start_server()
    assert_intact(upload.result(), sink.result(), size)
    for name, pid in clients_before.items():
        assert vpn.processes[name].pid == pid and vpn.processes[name].poll() is None


def hostile_datagrams(captured: list[bytes]) -> list[bytes]:
    rng = random.Random(4242)
    out = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(300)]
    for datagram in captured:
        out.append(datagram[: rng.randrange(0, len(datagram))])  # truncated
        flipped = bytearray(datagram)
        bit = rng.randrange(len(flipped) * 8)
        flipped[bit // 8] ^= 1 << (bit % 8)
        out.append(bytes(flipped))  # one bit flipped
        out.extend([datagram] * 3)  # exact replays
    # Valid client ID, wrong key. Stamped 5 s ahead (inside the window), so that
    # the replay window cannot turn them away before the cipher does: a random
    # counter behind client a's, in the same second, would be "too old" first.
    forger = Peer(1, os.urandom(64), key_epoch=int(time.time()) // 3600 - 1, server_id=7, send_direction=TO_SERVER,
                  now=time.time())
    inner = bytes.fromhex("45000054000040004001" "0000") + bytes([203, 0, 113, 2, 203, 0, 113, 1]) + bytes(64)
    out += forger.seal(KIND_DATA, [inner] * 300, time.time() + 5)
    for client_id in (0, 3, 999, 65535):
        out.append(bytes([KIND_DATA << 2, 0, client_id >> 8, client_id & 255]) + os.urandom(60))
    rng.shuffle(out)
    return out


def test_hostile_datagrams_change_nothing(vpn, tmp_path):
    a = vpn.client_ns["a"]
    capture = job(vpn, vpn.server_ns, "capture", vpn.server_underlay_interface, str(PORT), "40")
    capture.wait_until_ready()
    assert ping(vpn, a, SERVER, 40, "-s", "200").returncode == 0
    captured = [bytes.fromhex(h) for h in capture.result()["datagrams"]]
    assert len(captured) == 40
    endpoint_before = client_status(vpn, "a")["endpoint"]
    drops_before = vpn.server_status()["drops"]
    hostile_file = tmp_path / "hostile.hex"
    hostile_file.write_text("\n".join(d.hex() for d in hostile_datagrams(captured)))

    sink = job(vpn, vpn.server_ns, "sink", SERVER, "5001")
    sink.wait_until_ready()
    upload = job(vpn, a, "source", SERVER, "5001", str(8 * MIB), str(4 * MIB))
    attack = job(vpn, vpn.outsider_ns, "hostile", SERVER_UNDERLAY, str(PORT), str(hostile_file)).result()
    assert_intact(upload.result(), sink.result(), 8 * MIB)

    assert attack["sent"] > 600 and attack["replies"] == 0
    assert vpn.processes["server"].poll() is None
    status = vpn.server_status()
    assert client_status(vpn, "a")["endpoint"] == endpoint_before
    drops = status["drops"]
    for reason in ("auth_failed", "bad_length", "unknown_client"):
        assert drops[reason] > drops_before[reason], reason
    replay_drops = ("replayed", "counter_too_old", "superseded")
    assert sum(drops[r] for r in replay_drops) >= sum(drops_before[r] for r in replay_drops) + 3 * 40
    assert "Traceback" not in (vpn.lab.workdir / "server.log").read_text()


def test_inner_source_spoofing_is_dropped(vpn):
    a = vpn.client_ns["a"]
    before = vpn.server_status()["drops"]["inner_source_not_allowed"]
    vpn.lab.run(a, ["ip", "address", "add", f"{B}/32", "dev", "vpncrypt0"])
    assert ping(vpn, a, SERVER, 3, "-I", B).returncode != 0
    assert vpn.server_status()["drops"]["inner_source_not_allowed"] >= before + 3
    assert ping(vpn, a, SERVER, 1).returncode == 0  # a itself still works
