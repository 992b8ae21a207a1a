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
    metrics = render_prometheus([status])
    assert 'vpncrypt_server_last_datagram_timestamp_seconds{daemon="laptop"} 1063' in metrics
    assert 'vpncrypt_drops_total{daemon="laptop",reason="replayed"} 4' in metrics
    assert 'vpncrypt_server_path_mtu_bytes{daemon="laptop"} 1327' in metrics
    assert metrics.count("# TYPE vpncrypt_drops_total counter") == 1


def test_prometheus_label_values_are_escaped_and_families_grouped():
    def server(name, client_name):
        return {"role": "server", "name": name, "started": 1.0, "drops": {"no_route": 1}, "tun_write_refused": 0,
                "udp_send_errors": 0, "icmp_sent": 2, "clients": [{
                    "name": client_name, "client_id": 1, "rx_bytes": 1, "rx_packets": 1, "tx_bytes": 1,
                    "tx_packets": 1, "last_datagram": None, "roams": 0, "auth_failures": 0, "time_drops": 0,
                    "path_mtu": 1327}]}

    metrics = render_prometheus([server("s1", 'we"ird\\name\n'), server("s2", "b")]).splitlines()
    assert 'vpncrypt_client_roams_total{daemon="s1",name="we\\"ird\\\\name\\n",client_id="1"} 0' in metrics
    family = [i for i, line in enumerate(metrics) if line.startswith("vpncrypt_client_roams_total")]
    assert len(family) == 2 and family[1] == family[0] + 1  # one family, its samples together
    assert 'vpncrypt_client_last_datagram_timestamp_seconds{daemon="s2",name="b",client_id="1"} 0' in metrics
    assert 'vpncrypt_icmp_sent_total{daemon="s1"} 2' in metrics
    assert 'vpncrypt_client_path_mtu_bytes{daemon="s2",name="b",client_id="1"} 1327' in metrics
