"""A running server through its control socket, without root: ``vpncrypt show`` and
live reload (``vpncrypt reload``, SIGHUP) of a server Daemon over loopback UDP with
a fake TUN device, route commands recorded instead of run."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from vpncrypt import control, key_store
from vpncrypt.cli import keygen
from vpncrypt.config import ConfigError, load_client_config, load_server_config
from vpncrypt.core.client import ClientCore
from vpncrypt.core import filtered, siv
from vpncrypt.core.filtered import FLOOD_REFUSALS
from vpncrypt.core.keys import encode_key
from vpncrypt.core.peer import FAILURE_BURST
from vpncrypt.core.server import ServerCore
from vpncrypt.core.wire import KIND_DATA, encode_header
from vpncrypt.daemon import Daemon
from vpncrypt.events import RATE_INTERVAL
from vpncrypt.server import LiveServer, client_routes, route_over_an_endpoint, tunnel_spec
from vpncrypt.transport.udp import open_client_transport, open_server_transport
from vpncrypt.tun import offload_in_use
from vpncrypt.tun.memory import MemoryTun

from tests.builders import install_client_keys, ipv4_packet, keygen_server

BIN = Path(sys.executable).parent
HOLD = 8  # seconds a flooded ID is held in the flood test


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "run"
    monkeypatch.setenv(control.RUN_DIR_VARIABLE, str(directory))
    return directory


@pytest.fixture
def configs(tmp_path) -> Path:
    directory = tmp_path / "etc"
    directory.mkdir()
    keygen_server(directory / "server.toml", "127.0.0.1:51820", 7, {1: "a", 2: "b"})
    return directory


class Runs:
    """Records route commands instead of running them; fails those containing ``fail``."""

    def __init__(self):
        self.commands: list[str] = []
        self.fail: str | None = None

    def __call__(self, command):
        text = " ".join(command)
        self.commands.append(text)
        failed = self.fail is not None and self.fail in text
        return subprocess.CompletedProcess(command, 2 if failed else 0, "", "RTNETLINK answers: refused")


async def with_server(configs: Path, body, runs: Runs | None = None, client_clock=time.time):
    """A live server from configs/server.toml with client a connected; ``body(live, client_daemon)``
    runs in the loop (a coroutine). ``client_clock`` is client a's wall clock."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    edit(configs / "server.toml", "port = 51820", f'port = {port}\nlisten_address = "127.0.0.1"')
    config = load_server_config(configs / "server.toml")
    now = time.time()
    core = ServerCore(config.server_id, config.clients, now, time_window=config.time_window,
                      client_to_client=config.client_to_client)
    transport = open_server_transport("127.0.0.1", port)
    tun = MemoryTun("s")
    server_control = control.ControlServer.bind(control.socket_path("server"))
    daemon = Daemon(tun, transport, core, control=server_control)
    live = LiveServer(config, core, daemon, name="server", interface="vpncrypt0", run=runs or Runs())
    server_control.handlers = live.handlers()
    a = load_client_config(configs / "a.toml")
    client_core = ClientCore(a.client_id, a.key, key_epoch=a.key_epoch, epoch_seconds=a.epoch_seconds, server_id=7,
                             server_endpoint=("127.0.0.1", port),
                             routes=a.allowed_sources, now=client_clock())
    client_tun = MemoryTun("c")
    client_transport = open_client_transport(socket.AF_INET)
    client = Daemon(client_tun, client_transport, client_core, clock=client_clock)
    # The client first: the server's signal handlers (SIGHUP) are the ones that stay.
    tasks = [asyncio.create_task(client.run()), asyncio.create_task(daemon.run())]
    try:
        deadline = time.monotonic() + 5
        while core.peers[a.client_id].endpoint is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return await body(live, client)
    finally:
        daemon.stop()
        client.stop()
        await asyncio.gather(*tasks)
        for closable in (transport, client_transport, tun, client_tun):
            closable.close()


async def in_thread(function, *args):
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def vpncrypt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vpncrypt"), *args], capture_output=True, text=True, timeout=30)


def test_show_reports_each_client_and_never_a_key(configs, run_dir):
    async def body(live, client):
        for i in range(5):
            client.tun.peer.send(ipv4_packet("203.0.113.2", "203.0.113.1", bytes(100)))
        deadline = time.monotonic() + 5
        while live.core.peers[1].rx_packets < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return [await in_thread(vpncrypt, "show", "server", "--json"), await in_thread(vpncrypt, "show"),
                await in_thread(vpncrypt, "show", "--prometheus"), await in_thread(vpncrypt, "show", "--json")]

    as_json, text, prometheus, every = asyncio.run(with_server(configs, body))
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert status["format"] == 1 and status["role"] == "server" and status["server_id"] == 7
    assert status["data_path"] == {"cipher": siv.in_use(), "offload": offload_in_use(load_server_config(
        configs / "server.toml").offload)}
    a, b = status["clients"]
    assert (a["name"], a["client_id"], a["addresses"]) == ("a", 1, ["203.0.113.2/32"])
    assert a["rx_packets"] == 5 and a["rx_bytes"] == 5 * 120
    assert a["endpoint"].startswith("127.0.0.1:") and abs(a["last_datagram"] - time.time()) < 5
    assert b["endpoint"] is None and b["last_datagram"] is None
    assert status["totals"]["rx_packets"] == 5 and set(status["drops"]) >= {"auth_failed", "no_route"}
    every = json.loads(every.stdout)
    assert list(every) == ["server"] and every["server"]["clients"][0]["rx_packets"] == 5
    assert "client: a" in text.stdout and "last datagram: " in text.stdout and "600 B received (5 packets)" in text.stdout
    assert "endpoint: (not heard from yet)" in text.stdout
    assert "data path: cipher " in text.stdout
    # b has sent no path MTU probe: the core's mtu (this one is built without the
    # config's); a's search has told the server at least its base, 1232 - 24.
    assert b["path_mtu"] == 65535 and 1208 <= a["path_mtu"] <= 65535 and "path MTU: 65535" in text.stdout
    assert 'vpncrypt_client_receive_packets_total{daemon="server",name="a",client_id="1"} 5' in prometheus.stdout
    for done in (as_json, text, prometheus):
        for name in ("a", "b"):
            key_text = load_client_config(configs / f"{name}.toml").key
            assert encode_key(key_text) not in done.stdout


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("offset, side", [(300, "ahead of"), (-300, "behind")])
def test_the_server_logs_once_how_far_off_a_time_answered_clients_clock_is(configs, run_dir, caplog, offset, side):
    """Client a's clock is off by more than the time window: the server answers it
    with its time (docs/PROTOCOL.md, 7.1), a stamps in the server's time from
    then on, and the server's log says how far off a's own clock is, once."""
    async def body(live, client):
        deadline = time.monotonic() + 5
        while live.core.peers[1].rx_packets < 3 and time.monotonic() < deadline:
            client.tun.peer.send(ipv4_packet("203.0.113.2", "203.0.113.1", bytes(20)))
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.5)  # the server's ticks, once a second, after a's traffic came
        return live.core.peers[1].clock_offset, live.core.peers[1].rx_packets

    with caplog.at_level("INFO", logger="vpncrypt.server"):
        measured, received = asyncio.run(with_server(configs, body, client_clock=lambda: time.time() + offset))
    assert received >= 3 and abs(measured - offset) < 2
    [line] = [r.getMessage() for r in caplog.records if "its clock" in r.getMessage()]
    # Stamps are whole seconds: the offset measured is within a second of the true one.
    about = re.fullmatch(rf"client 'a' \(ID 1\): its clock is about (\d+) s {side} this host's \(measured by a"
                         r" time answer; it stamps in this host's time now: check NTP\)", line)
    assert about is not None and abs(int(about.group(1)) - abs(offset)) <= 1, line


def test_a_broken_config_is_refused_with_the_line_a_start_gives_and_the_old_one_stays(configs, run_dir):
    path = configs / "server.toml"

    async def body(live, client):
        edit(path, "client_to_client = false", "client_to_client = no")
        with pytest.raises(ConfigError) as start_error:
            load_server_config(path)
        done = await in_thread(vpncrypt, "reload", "server")
        again = await in_thread(vpncrypt, "reload")  # the one daemon running: no name needed
        return start_error.value, done, again, sorted(live.core.peers), live.config.client_to_client

    error, done, again, peers, client_to_client = asyncio.run(with_server(configs, body))
    assert done.returncode == 2 and again.returncode == 2
    assert done.stderr == again.stderr == f"vpncrypt: error: {error}\n"
    assert "server.toml: not valid TOML" in done.stderr
    assert peers == [1, 2] and client_to_client is False


@pytest.mark.parametrize("old, new, key", [
    ("server_id = 7", "server_id = 8", "server_id"),
    ('tunnel = ["203.0.113.1/24"]', 'tunnel = ["203.0.113.1/25"]', "tunnel"),
    ('interface = "vpncrypt0"', 'interface = "vpn1"', "interface"),
    ("mtu = 1420", "mtu = 1400", "mtu"),
])
def test_settings_that_cannot_change_live_are_refused_by_name(configs, run_dir, old, new, key):
    path = configs / "server.toml"

    async def body(live, client):
        edit(path, old, new)
        with pytest.raises(control.RequestError) as refused:
            await live.reload()
        return str(refused.value), refused.value.status, live.config

    message, status, config = asyncio.run(with_server(configs, body))
    assert f"[server] {key} cannot change while the server runs" in message and status == 2
    assert config.server_id == 7 and config.mtu == 1420


def test_the_port_cannot_change_live(configs, run_dir):
    async def body(live, client):
        edit(configs / "server.toml", f"port = {live.config.port}", f"port = {live.config.port + 1}")
        with pytest.raises(control.RequestError, match=r"\[server\] port cannot change"):
            await live.reload()

    asyncio.run(with_server(configs, body))


def test_clients_added_removed_and_rekeyed_live(configs, run_dir):
    path = configs / "server.toml"

    async def body(live, client):
        kept = live.core.peers[1]
        assert keygen.main(["client", "--server-config", str(path), "--name", "c",
                            "--out", str(configs / "c.toml")]) == 0
        install_client_keys(configs)
        added = await live.reload()
        after_add = dict(live.core.peers)
        store = key_store.store_path(live.config.state_directory, "server")
        table = key_store.load(store)
        table.keys[2] = (table.keys[2][0], os.urandom(64))  # client b re-keyed in the store, as rotate does
        key_store.write(store, table)
        rekeyed = await live.reload()
        after_rekey = dict(live.core.peers)
        time_window = live.core.time_window
        edit(path, "time_window = 128", "time_window = 60")
        changed = await live.reload()
        return added, rekeyed, changed, kept, after_add, after_rekey, time_window, live

    added, rekeyed, changed, kept, after_add, after_rekey, window_before, live = asyncio.run(
        with_server(configs, body))
    c_id = load_client_config(configs / "c.toml").client_id
    assert "3 clients" in added and "added 'c'" in added
    assert sorted(after_add) == sorted([1, 2, c_id]) and after_add[1] is kept  # untouched: the same peer
    assert "re-keyed 'b'" in rekeyed and after_rekey[1] is kept and after_rekey[2] is not after_add[2]
    assert window_before == 128 and live.core.time_window == 60 and "time_window now 60" in changed
    assert live.reloaded is not None


def test_a_removed_client_is_gone_at_once(configs, run_dir):
    path = configs / "server.toml"

    async def body(live, client):
        text = path.read_text()
        start = text.index("[[client]]")
        b_block = text.index("[[client]]", start + 1)
        path.write_text(text[:b_block])  # b removed by hand
        message = await live.reload()
        return message, sorted(live.core.peers)

    message, peers = asyncio.run(with_server(configs, body))
    assert message == "1 client; removed 'b'" and peers == [1]


def test_a_client_added_by_hand_with_a_removed_clients_id_is_refused_at_reload(configs, run_dir):
    """b's [[client]] deleted by hand and d added by hand with b's ID: b's key,
    still in the key store, never becomes d's. The reload is refused and b runs on."""
    path = configs / "server.toml"

    async def body(live, client):
        b = live.core.peers[2]
        edit(path, 'name = "b"', 'name = "d"')
        edit(path, '"203.0.113.3/32"', '"203.0.113.9/32"')
        with pytest.raises(control.RequestError) as refused:
            await live.reload()
        return refused.value, b, live.core.peers[2], live.config

    refused, b_before, b_after, config = asyncio.run(with_server(configs, body))
    assert refused.status == 2
    assert str(refused).startswith(f"{path}: [[client]] 'd' (ID 2): the key store of server.toml holds the key of"
                                   " client 'b' for this ID")
    assert b_after is b_before and b_after.name == "b" and [c.name for c in config.clients] == ["a", "b"]


def test_routes_to_networks_behind_clients_follow_reloads(configs, run_dir):
    path = configs / "server.toml"
    runs = Runs()

    async def body(live, client):
        edit(path, 'addresses = ["203.0.113.3/32"]', 'addresses = ["203.0.113.3/32", "2001:db8:5::/64"]')
        await live.reload()
        routes_added = list(runs.commands)
        await live.reload()  # nothing new: no command
        unchanged = list(runs.commands)
        edit(path, '"203.0.113.3/32", "2001:db8:5::/64"', '"203.0.113.3/32", "2001:db8:6::/64"')
        runs.fail = "2001:db8:6::"
        with pytest.raises(control.RequestError, match="RTNETLINK answers: refused") as refused:
            await live.reload()
        assert refused.value.status == 1
        failed = list(runs.commands)
        runs.fail = None
        await live.reload()
        return routes_added, unchanged, failed, list(runs.commands), set(live.routes), live.config

    added, unchanged, failed, moved, routes, config = asyncio.run(with_server(configs, body, runs))
    assert added == ["ip -6 route add 2001:db8:5::/64 dev vpncrypt0 proto 118"] and unchanged == added
    # The refused route changed nothing: the old client table and route stay.
    assert failed == added + ["ip -6 route add 2001:db8:6::/64 dev vpncrypt0 proto 118"]
    assert moved == failed + ["ip -6 route add 2001:db8:6::/64 dev vpncrypt0 proto 118",
                              "ip -6 route delete 2001:db8:5::/64 dev vpncrypt0 proto 118"]
    assert [str(r) for r in routes] == ["2001:db8:6::/64"]
    assert [str(a) for a in config.clients[1].addresses] == ["203.0.113.3/32", "2001:db8:6::/64"]


def test_the_servers_tunnel_spec_routes_only_what_the_tunnel_prefix_does_not_cover(configs):
    path = configs / "server.toml"
    edit(path, 'addresses = ["203.0.113.3/32"]', 'addresses = ["203.0.113.3/32", "203.0.113.128/25",'
         ' "192.0.2.0/26", "2001:db8:5::/64"]')
    config = load_server_config(path)
    assert [str(n) for n in client_routes(config)] == ["192.0.2.0/26", "2001:db8:5::/64"]
    assert tunnel_spec(config).routes == client_routes(config)
    done = subprocess.run([str(BIN / "vpncrypt-server"), "--config", str(path), "--dry-run"],
                          capture_output=True, text=True, timeout=30)
    assert "ip -4 route add 192.0.2.0/26 dev vpncrypt0 proto 118" in done.stdout
    assert "203.0.113.128/25" not in done.stdout


def test_sighup_reloads_and_a_broken_config_on_sighup_keeps_the_old_one(configs, run_dir, caplog):
    path = configs / "server.toml"

    async def body(live, client):
        edit(path, "time_window = 128", "time_window = 100")
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 5
        while live.core.time_window != 100 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        edit(path, "time_window = 100", "time_window = 1000")
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.3)
        return live.core.time_window

    with caplog.at_level("INFO"):
        window = asyncio.run(with_server(configs, body))
    assert window == 100
    assert "reloaded" in caplog.text and "time_window now 100" in caplog.text
    assert "reload refused, still running on the config as it was" in caplog.text
    assert "time_window: must be from 1 to 511, not 1000" in caplog.text




def test_keygen_changes_reach_the_running_server_in_one_step(configs, run_dir):
    path = configs / "server.toml"

    def keygen_reload(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "vpncrypt-keygen"), *args, "--server-config", str(path), "--reload"],
                              capture_output=True, text=True, timeout=30)

    async def body(live, client):
        added = await in_thread(keygen_reload, "client", "--name", "c", "--out", str(configs / "c.toml"))
        install_client_keys(configs)
        c_id = load_client_config(configs / "c.toml").client_id
        with_c = sorted(live.core.peers)
        a_peer = live.core.peers[1]
        rotated = await in_thread(keygen_reload, "rotate", "--name", "a", "--out", str(configs / "a.toml"))
        rotated_peer = live.core.peers[1]
        removed = await in_thread(keygen_reload, "remove", "--name", "c")
        return added, c_id, with_c, a_peer, rotated, rotated_peer, removed, sorted(live.core.peers)

    added, c_id, with_c, a_peer, rotated, rotated_peer, removed, after = asyncio.run(with_server(configs, body))
    for done in (added, rotated, removed):
        assert done.returncode == 0, done.stderr
        assert "server 'server' reloaded: " in done.stdout
    assert with_c == sorted([1, 2, c_id]) and after == [1, 2]
    install_client_keys(configs)
    a_config = load_client_config(configs / "a.toml")
    assert rotated_peer is not a_peer and rotated_peer.keys.same_chain(a_config.key, a_config.key_epoch)
    assert "re-keyed 'a'" in rotated.stdout and "removed 'c'" in removed.stdout


def test_a_reload_whose_new_route_covers_a_connected_clients_endpoint_is_refused(configs, run_dir):
    """Issue 13, on the server: client a talks to it from 127.0.0.1 (loopback here);
    a network behind client b that covers that address would take the server's
    datagrams to a into the tunnel. Refused, status 2, no route command run."""
    path = configs / "server.toml"
    runs = Runs()

    async def body(live, client):
        edit(path, 'addresses = ["203.0.113.3/32"]', 'addresses = ["203.0.113.3/32", "127.0.0.0/30"]')
        with pytest.raises(control.RequestError) as refused:
            await live.reload()
        return refused.value, set(live.routes)

    refused, routes = asyncio.run(with_server(configs, body, runs))
    assert refused.status == 2 and runs.commands == [] and routes == set()
    assert str(refused).startswith(f"{path}: route 127.0.0.0/30 (behind a client) covers the endpoint 127.0.0.1:")
    assert str(refused).endswith(" of client 'a': the server's datagrams to it would loop into the tunnel;"
                                 " leave that address out of the client's network")


def test_an_ipv4_client_seen_through_an_ipv6_socket_is_caught_too(configs):
    """A server on "::" sees IPv4 clients as ::ffff:A.B.C.D."""
    config = load_server_config(configs / "server.toml")
    peer = types.SimpleNamespace(endpoint=("::ffff:198.51.100.10", 40000, 0, 0), name="a")
    behind = [ipaddress.ip_network("198.51.100.0/25")]
    assert "covers the endpoint 198.51.100.10:40000 of client 'a'" in route_over_an_endpoint(config, behind, [peer])
    assert route_over_an_endpoint(config, [ipaddress.ip_network("198.51.100.128/25")], [peer]) is None
    assert route_over_an_endpoint(config, behind, [types.SimpleNamespace(endpoint=None, name="b")]) is None
    # With the local address it was sent to, as the server's transport gives it (IP_PKTINFO).
    answered = types.SimpleNamespace(endpoint=(("::ffff:198.51.100.10", 40000, 0, 0), "::ffff:192.0.2.1"), name="a")
    assert "covers the endpoint 198.51.100.10:40000 of client 'a'" in route_over_an_endpoint(config, behind, [answered])


def test_a_flooded_client_id_is_refused_by_the_socket_shown_logged_once_and_let_go(configs, run_dir, monkeypatch):
    """Forgeries naming client b: the daemon hands b's ID to the socket filter
    as soon as a flood's worth is refused, show lists it, the log names b
    once, and the timer lets it go after the hold (made longer than the three
    ``vpncrypt show`` runs take on a loaded machine)."""
    monkeypatch.setattr(filtered, "HOLD_FIRST", HOLD)

    async def body(live, client):
        port = live.daemon.transport.sock.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            # Stamped after the server's start, so that nothing refuses them before the cipher.
            stamp = int(time.time()) + 5
            for counter in range(1, FAILURE_BURST + 2 * FLOOD_REFUSALS):
                attacker.sendto(encode_header(KIND_DATA, stamp, 2, counter) + os.urandom(100),
                                ("127.0.0.1", port))
                if counter % 64 == 0:
                    await asyncio.sleep(0)
        deadline = time.monotonic() + 5
        while live.daemon.transport.refused_ids != (2,) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        refused = live.daemon.transport.refused_ids
        shown = await in_thread(vpncrypt, "show", "server")
        as_json = json.loads((await in_thread(vpncrypt, "show", "server", "--json")).stdout)
        prometheus = (await in_thread(vpncrypt, "show", "--prometheus")).stdout
        lines = live.filter_lines(time.time()) + live.filter_lines(time.time())
        while live.daemon.transport.refused_ids and time.monotonic() < deadline + HOLD:
            await asyncio.sleep(0.05)
        return refused, shown.stdout, as_json, prometheus, lines, live.daemon.transport.refused_ids

    refused, text, status, prometheus, lines, after = asyncio.run(with_server(configs, body))
    assert refused == (2,)
    assert status["kernel_filter"] == {"client_ids": [2], "full": 0, "in_kernel": True}
    assert "flood filter: 1 client ID refused in the kernel, for a flood of forgeries: 2" in text
    assert 'vpncrypt_filtered_client_ids{daemon="server"} 1' in prometheus
    assert [line for _, line in lines] == [
        f"client 'b' (ID 2): a flood of forgeries names it (over 1024 a second refused unopened; {FAILURE_BURST}"
        f" failed authentication since it was configured): all its datagrams are refused in the kernel for {HOLD} s"]
    assert after == ()


def test_filter_lines_are_one_a_minute_per_client_id_and_count_what_they_held_back(configs):
    config = load_server_config(configs / "server.toml")
    now = time.time()
    core = ServerCore(config.server_id, config.clients, now)
    daemon = types.SimpleNamespace(kernel_filter=False, tun_refused=0, transport=types.SimpleNamespace(send_errors=0))
    live = LiveServer(config, core, daemon, name="server", interface="vpncrypt0", run=Runs())
    core.filtered.enter(2, now)
    [(level, first)] = live.filter_lines(now)
    assert level == logging.WARNING and first.endswith("are refused unopened (no socket filter here) for 1 s")
    assert live.filter_lines(now + 0.5) == []  # the same hold: said already
    core.filtered.expire(now + 1)
    core.filtered.enter(2, now + 1.5)
    assert live.filter_lines(now + 1.5) == []  # a new hold, within a minute of the last line
    core.filtered.expire(now + 3.5)
    core.filtered.enter(2, now + RATE_INTERVAL + 2)
    [(_, later)] = live.filter_lines(now + RATE_INTERVAL + 2)
    assert later.endswith("for 1 s (and 1 more time since the last such line)")  # a quiet spell: 1 s again
