"""The control socket and its protocol, and the text and Prometheus forms of
``vpncrypt show``; no root needed (sockets in a temporary directory)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vpncrypt import control
from vpncrypt.cli.vpncrypt import render_prometheus, render_text

BIN = Path(sys.executable).parent


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "run"
    monkeypatch.setenv(control.RUN_DIR_VARIABLE, str(directory))
    return directory


# --- the socket and its protocol ------------------------------------------------------------


async def echo(request):
    if request.get("fail"):
        raise control.RequestError("refused as asked", 2)
    return {"echo": request["command"]}


def serve(path: Path, handlers, body):
    """Run ``body(path)`` in a thread while a ControlServer serves ``handlers`` at ``path``."""
    async def scenario():
        server = control.ControlServer.bind(path, handlers)
        await server.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, body, path)
        finally:
            await server.close()
    return asyncio.run(scenario())


def test_a_request_and_its_answer(run_dir):
    path = control.socket_path("server")
    assert path == run_dir / "server.sock"

    def body(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert control.daemon_names() == ["server"]
        return [control.request(path, "show"), control.request(path, "show", fail=True),
                control.request(path, "nonsense")]

    ok, refused, unknown = serve(path, {"show": echo}, body)
    assert ok == {"ok": True, "echo": "show"}
    assert refused == {"ok": False, "error": "refused as asked", "status": 2}
    assert unknown["ok"] is False and "commands: show" in unknown["error"]
    assert not path.exists()  # removed at close
    assert control.daemon_names() == []


def test_garbage_and_several_requests_on_one_connection(run_dir):
    def body(path):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b"not json\n" + json.dumps({"command": "show"}).encode() + b"\n")
            reader = sock.makefile("rb")
            return [json.loads(reader.readline()), json.loads(reader.readline())]

    garbage, ok = serve(control.socket_path("x"), {"show": echo}, body)
    assert garbage["ok"] is False and ok == {"ok": True, "echo": "show"}


def test_a_handler_that_breaks_does_not_take_the_daemon_down(run_dir):
    async def broken(_request):
        raise RuntimeError("bug")

    answer = serve(control.socket_path("x"), {"show": broken, "ok": echo},
                   lambda path: [control.request(path, "show"), control.request(path, "ok")])
    assert answer[0]["ok"] is False and answer[0]["status"] == 1 and answer[1]["ok"] is True


def test_answer_pending_serves_one_request_a_connection_with_no_event_loop(run_dir):
    """As a client waiting for its server's name serves the socket: garbage, a
    refusal, a bug and a connection that says nothing each cost one call, and
    never an exception."""
    path = control.socket_path("client")
    listener = control.bind(path)

    def show(_request):
        return {"status": {"waiting": True}}

    def reload(_request):
        raise control.RequestError("a client cannot reload", 2)

    def broken(_request):
        raise KeyError("bug")

    handlers = {"show": show, "reload": reload, "broken": broken}
    answers = []

    def ask(*lines: bytes) -> None:
        with socket.socket(socket.AF_UNIX) as connection:
            connection.connect(str(path))
            connection.sendall(b"".join(lines))
            control.answer_pending(listener, handlers, 1.0)
            connection.settimeout(5)
            answers.append(connection.recv(1 << 16))

    try:
        control.answer_pending(listener, handlers, 0.01)  # nobody there: returns
        ask(b'{"command": "show"}\n', b'{"command": "show"}\n')  # the first line only
        ask(b'{"command": "reload"}\n')
        ask(b'{"command": "broken"}\n')
        ask(b"nonsense\n")
        ask(b"")  # says nothing: dropped after PENDING_READ_TIMEOUT, with no answer
    finally:
        listener.close()
    assert [json.loads(a) if a else None for a in answers] == [
        {"ok": True, "status": {"waiting": True}},
        {"ok": False, "error": "a client cannot reload", "status": 2},
        {"ok": False, "error": "broken failed: 'bug'", "status": 1},
        {"ok": False, "error": "unknown request; commands: broken, reload, show"},
        None,
    ]


def test_a_socket_left_by_a_killed_daemon_is_replaced_but_a_live_one_is_not(run_dir):
    path = control.socket_path("server")
    run_dir.mkdir(mode=0o700)
    left = socket.socket(socket.AF_UNIX)
    left.bind(str(path))  # bound, never listening: what a killed daemon leaves
    left.close()
    with pytest.raises(control.ControlError, match="no daemon named 'server' is running"):
        control.request(path, "show")

    def body(path):
        with pytest.raises(control.ControlError, match="already running"):
            control.bind(path)
        return control.request(path, "show")

    assert serve(path, {"show": echo}, body)["ok"] is True


def test_the_directory_is_closed_to_others_and_must_be_ours(run_dir):
    run_dir.mkdir(mode=0o755)
    os.chmod(run_dir, 0o755)
    control.ControlServer.bind(control.socket_path("x")).discard()
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    if os.geteuid() == 0:
        os.chown(run_dir, 65534, 65534)
        with pytest.raises(control.ControlError, match="belongs to user 65534"):
            control.bind(control.socket_path("x"))


def test_not_root(run_dir):
    """As another user, the 0700 directory is closed: one line that says what to do."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory another user cannot read")
    run_dir.mkdir(mode=0o700)
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(BIN / "vpncrypt"),
                           "show"], capture_output=True, text=True, timeout=30,
                          env={k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")})
    assert done.returncode == 1 and "permission denied (run as root)" in done.stderr, done.stderr


def test_nothing_running(run_dir):
    done = subprocess.run([str(BIN / "vpncrypt"), "show"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "no vpncrypt daemon is running" in done.stderr
    done = subprocess.run([str(BIN / "vpncrypt"), "show", "nope"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "no daemon named 'nope' is running" in done.stderr


# --- the text and Prometheus forms -----------------------------------------------------------


def test_render_text_and_prometheus_of_a_client_daemon():
    status = {
        "format": 1, "role": "client", "name": "laptop", "config": "/etc/vpncrypt/laptop.toml", "pid": 9,
        "interface": "vpncrypt0", "client_id": 3, "server_id": 7, "addresses": ["203.0.113.2/24"],
        "data_path": {"cipher": "compiled AES-SIV (OpenSSL 3.0.19, CMAC on aes-ni)", "offload": "compiled"},
        "started": 1000.0, "now": 1075.0,
        "server": {"endpoint": "192.0.2.1:51820", "last_datagram": 1063.0, "rx_bytes": 2048, "rx_packets": 2,
                   "tx_bytes": 3 << 20, "tx_packets": 3000, "auth_failures": 0, "time_drops": 0,
                   "path_mtu": 1327, "path_mtu_state": "search_complete"},
        "drops": {"auth_failed": 0, "replayed": 4}, "tun_write_refused": 0, "udp_send_errors": 1,
    }
    text = render_text(status)
    assert "last datagram from it: 12 seconds ago" in text and "up: 1 min 15 s" in text
    assert "2.00 KiB received (2 packets), 3.00 MiB sent (3000 packets)" in text
    assert "drops: replayed 4, udp_send_errors 1" in text
    assert "path MTU: 1327 (search complete)" in text
    assert "data path: cipher compiled AES-SIV (OpenSSL 3.0.19, CMAC on aes-ni); offload compiled" in text
    assert "data path: (not reported)" in render_text({**status, "data_path": None})
    assert "clock" not in text and "clock" not in render_text({**status, "clock_offset": 0.3})
    assert render_text({**status, "clock_offset": -300.4}).endswith(
        "\n  server's clock: about 300 s behind this host's (from a time answer: this client stamps in it)")
    metrics = render_prometheus([status])
    assert 'vpncrypt_server_last_datagram_timestamp_seconds{daemon="laptop"} 1063' in metrics
    assert 'vpncrypt_drops_total{daemon="laptop",reason="replayed"} 4' in metrics
    assert 'vpncrypt_server_path_mtu_bytes{daemon="laptop"} 1327' in metrics
    assert metrics.count("# TYPE vpncrypt_drops_total counter") == 1


def test_render_text_and_prometheus_of_a_client_waiting_for_its_servers_name():
    status = {"format": 1, "role": "client", "name": "laptop", "config": "/etc/vpncrypt/laptop.toml", "pid": 901,
              "started": 1000.0, "now": 1063.0,
              "waiting_for_server": {"server": "vpn.example.org:51820", "failed_lookups": 6,
                                     "error": "cannot resolve server 'vpn.example.org': Name or service not known",
                                     "next_lookup": 1088.0}}
    assert render_text(status) == (
        "client: laptop\n"
        "  waiting for the server's name: vpn.example.org:51820 (no tunnel yet)\n"
        "  lookups: 6 failed so far, the next in 25 s\n"
        "  last error: cannot resolve server 'vpn.example.org': Name or service not known\n"
        "  up: 1 min 3 s, pid 901, config /etc/vpncrypt/laptop.toml")
    status["now"] = status["waiting_for_server"]["next_lookup"]
    assert "  lookups: 6 failed so far, the next one under way\n" in render_text(status)
    first = {**status, "waiting_for_server": {**status["waiting_for_server"], "failed_lookups": 0, "error": None,
                                              "next_lookup": None}}
    assert render_text(first).splitlines()[2:] == ["  lookups: the first one under way",
                                                   "  up: 1 min 28 s, pid 901, config /etc/vpncrypt/laptop.toml"]
    assert render_prometheus([status]).splitlines()[-3:] == [
        "# HELP vpncrypt_server_name_lookup_failures_total Failed lookups of the server's name by a client still"
        " waiting for it.",
        "# TYPE vpncrypt_server_name_lookup_failures_total counter",
        'vpncrypt_server_name_lookup_failures_total{daemon="laptop"} 6']


def test_prometheus_label_values_are_escaped_and_families_grouped():
    def server(name, client_name):
        return {"role": "server", "name": name, "started": 1.0, "drops": {"no_route": 1}, "tun_write_refused": 0,
                "udp_send_errors": 0, "icmp_sent": 2, "clients": [{
                    "name": client_name, "client_id": 1, "rx_bytes": 1, "rx_packets": 1, "tx_bytes": 1,
                    "tx_packets": 1, "last_datagram": None, "roams": 0, "auth_failures": 0, "time_drops": 0,
                    "path_mtu": 1327}]}

    newer = server("s1", 'we"ird\\name\n')
    newer["clients"][0]["stale_drops"] = 37
    metrics = render_prometheus([newer, server("s2", "b")]).splitlines()  # s2 from a daemon without stale_drops
    assert 'vpncrypt_client_roams_total{daemon="s1",name="we\\"ird\\\\name\\n",client_id="1"} 0' in metrics
    family = [i for i, line in enumerate(metrics) if line.startswith("vpncrypt_client_roams_total")]
    assert len(family) == 2 and family[1] == family[0] + 1  # one family, its samples together
    assert 'vpncrypt_client_last_datagram_timestamp_seconds{daemon="s2",name="b",client_id="1"} 0' in metrics
    assert 'vpncrypt_icmp_sent_total{daemon="s1"} 2' in metrics
    assert 'vpncrypt_client_path_mtu_bytes{daemon="s2",name="b",client_id="1"} 1327' in metrics
    assert [line for line in metrics if line.startswith("vpncrypt_client_stale_drops_total")] == [
        'vpncrypt_client_stale_drops_total{daemon="s1",name="we\\"ird\\\\name\\n",client_id="1"} 37']


def test_render_text_of_a_server_says_how_far_off_a_clients_clock_is():
    client = {"name": "skewed", "client_id": 4, "addresses": ["203.0.113.4/32"], "endpoint": "192.0.2.9:4000",
              "last_datagram": 990.0, "path_mtu": 1420, "rx_bytes": 0, "rx_packets": 0, "tx_bytes": 0,
              "tx_packets": 0, "roams": 0, "auth_failures": 0, "time_drops": 2, "stale_drops": 37,
              "clock_offset": 300.6, "clock_offset_at": 700.0}
    status = {"format": 1, "role": "server", "name": "vpn", "server_id": 7, "port": 51820,
              "listen_address": "0.0.0.0", "interface": "vpncrypt0", "data_path": None, "started": 900.0,
              "now": 1000.0, "pid": 5, "config": "/etc/vpncrypt/vpn.toml", "reloaded": None,
              "totals": {"rx_bytes": 0, "rx_packets": 0, "tx_bytes": 0, "tx_packets": 0},
              "drops": {}, "tun_write_refused": 0, "udp_send_errors": 0, "kernel_filter": None,
              "clients": [client, {**client, "name": "fine", "client_id": 5, "clock_offset": None}]}
    lines = render_text(status).splitlines()
    assert lines[lines.index("client: skewed") + 7:lines.index("client: fine")] == [
        "  counts: outside the time window 2, authentic but superseded or counter too old 37",
        "  clock: about 301 s ahead of this host's (measured by a time answer 5 min ago)", ""]
    assert not [line for line in lines[lines.index("client: fine"):] if "clock" in line]
