"""A client whose server name does not resolve yet waits for it (client.wait_for_server),
in-process with a fake resolver and a fake clock, and answers ``vpncrypt show`` meanwhile;
a malformed name is a config error. The real process, its SIGTERM and the name
appearing are in tests/netns/test_privileges.py."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vpncrypt import client, control, daemon
from vpncrypt.cli.daemons import client_main
from vpncrypt.cli.keygen import main as keygen
from vpncrypt.client import RESOLVE_RETRY_MAX, ResolveError, StopFlag, wait_for_server
from vpncrypt.config import ConfigError, host_name_problem, load_client_config

from tests.builders import install_client_keys

ADDRESS = (socket.AF_INET, ("192.0.2.1", 51820))


class Resolver:
    """Fails ``failures`` times, then answers ADDRESS."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def __call__(self, host: str, port: int):
        self.calls += 1
        if self.calls <= self.failures:
            raise ResolveError(f"cannot resolve server {host!r}: Name or service not known")
        return ADDRESS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Notifier:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, **fields) -> bool:
        self.sent.append(fields)
        return True


def test_the_wait_backs_off_to_a_minute_and_ends_when_the_name_resolves(caplog):
    clock, notifier, resolver = Clock(), Notifier(), Resolver(10)
    with caplog.at_level(logging.INFO):
        found = wait_for_server("vpn.example", 51820, look_up=resolver, sleep=clock.sleep, clock=lambda: clock.now,
                                notifier=notifier)
    assert found == ADDRESS and resolver.calls == 11
    assert clock.sleeps == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    # systemd sees every failure, and is asked to wait for each retry plus a lookup.
    assert len(notifier.sent) == 10
    assert notifier.sent[0]["STATUS"].startswith("waiting for the server's name: cannot resolve server 'vpn.example'")
    assert [fields["EXTEND_TIMEOUT_USEC"] for fields in notifier.sent[:2]] == [31_000_000, 32_000_000]
    # The log: at most one line a minute about failures (at 0, 63, 123, 183 and 243 s), then the success.
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 5
    assert failures[0] == ("cannot resolve server 'vpn.example': Name or service not known (1 failed lookup so far);"
                           " trying again in 1 s, until it resolves or the client is stopped")
    assert "(7 failed lookups so far); trying again in 60 s" in failures[1]
    assert caplog.records[-1].getMessage() == "server 'vpn.example' resolved after 10 failed lookups"


def test_a_name_that_resolves_at_once_is_quiet(caplog):
    clock = Clock()
    assert wait_for_server("vpn.example", 51820, look_up=Resolver(0), sleep=clock.sleep) == ADDRESS
    assert clock.sleeps == [] and caplog.records == []


def test_a_stop_while_waiting_ends_the_wait():
    stop, clock = StopFlag(), Clock()

    def sleep(seconds):
        clock.sleep(seconds)
        if len(clock.sleeps) == 3:
            stop()  # SIGTERM during the third wait

    resolver = Resolver(100)
    assert wait_for_server("vpn.example", 51820, look_up=resolver, sleep=sleep, stopped=lambda: stop.stopped) is None
    assert resolver.calls == 3


def test_the_stop_flag_cuts_a_sleep_and_a_lookup_short():
    stop = StopFlag()
    stop()
    stop.sleep(RESOLVE_RETRY_MAX)  # returns at once: a stop came
    assert client.look_up_in_thread("vpn.example", 51820, stop) is None


@pytest.mark.parametrize("server, problem", [
    ("vpn..example:51820", "not a host name (the part ''"),
    ("-vpn.example:51820", "the part '-vpn'"),
    ("vpn example:51820", "the part 'vpn example'"),
    ("192.0.2.300:51820", "neither an IP address nor a host name"),
    (f"{'a' * 64}.example:51820", "1 to 63 of them"),
])
def test_a_malformed_name_is_a_config_error(tmp_path, server, problem):
    keygen(["server", "--endpoint", "192.0.2.1:51820", "--tunnel", "203.0.113.1/24", "--out",
            str(tmp_path / "server.toml"), "--server-id", "3"])
    keygen(["client", "--server-config", str(tmp_path / "server.toml"), "--name", "alice", "--out",
            str(tmp_path / "alice.toml")])
    path = tmp_path / "alice.toml"
    path.write_text(path.read_text().replace('server = "192.0.2.1:51820"', f'server = "{server}"'))
    with pytest.raises(ConfigError, match="server: .*" + problem.replace("(", r"\(")):
        load_client_config(path)
    assert client_main(["--config", str(path)]) == 2


def test_names_that_may_resolve_one_day_are_accepted():
    for host in ("vpn.example", "vpn.example.", "host_1.vpn-2.example", "localhost", "203.0.113.1", "2001:db8::1"):
        assert host_name_problem(host) is None, host


def test_a_dry_run_with_a_name_that_does_not_resolve_is_as_before(tmp_path, monkeypatch, capsys):
    """Only a full tunnel needs the server's address in its plan: that dry run says
    the name does not resolve (exit 1); any other prints the plan without a lookup."""
    keygen(["server", "--endpoint", "vpn.example:51820", "--tunnel", "203.0.113.1/24", "--out",
            str(tmp_path / "server.toml"), "--server-id", "3"])
    keygen(["client", "--server-config", str(tmp_path / "server.toml"), "--name", "alice", "--out",
            str(tmp_path / "alice.toml")])
    install_client_keys(tmp_path)
    lookups = []

    def no_such_name(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    assert client_main(["--config", str(tmp_path / "alice.toml"), "--dry-run", "--platform", "freebsd"]) == 0
    assert lookups == []
    path = tmp_path / "alice.toml"
    path.write_text(re.sub(r"(?m)^routes = .*$", 'routes = ["0.0.0.0/0"]', path.read_text()))
    capsys.readouterr()
    assert client_main(["--config", str(path), "--dry-run", "--platform", "freebsd"]) == 1
    assert capsys.readouterr().err == ("vpncrypt-client: error: cannot resolve server 'vpn.example': Name or service"
                                       " not known\n")
    assert lookups == ["vpn.example"]


def test_vpncrypt_show_says_that_a_client_waits_for_its_servers_name(tmp_path, monkeypatch):
    """run_client itself, in this process, with a name that does not resolve: its
    control socket answers meanwhile, says what it waits for and never a key,
    it holds its state's lock (a second daemon is refused at once), and the
    socket goes when a SIGTERM ends the wait."""
    keygen(["server", "--endpoint", "vpn.example:51820", "--tunnel", "203.0.113.1/24", "--out",
            str(tmp_path / "server.toml"), "--server-id", "3"])
    keygen(["client", "--server-config", str(tmp_path / "server.toml"), "--name", "alice", "--out",
            str(tmp_path / "alice.toml")])
    install_client_keys(tmp_path)
    config = load_client_config(tmp_path / "alice.toml")
    monkeypatch.setenv(control.RUN_DIR_VARIABLE, str(tmp_path / "run"))
    lookups = []

    def no_such_name(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    path = control.socket_path("alice")
    seen: dict = {}

    def operator() -> None:
        """What an operator runs while the client waits, then SIGTERM."""
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if path.exists() and control.request(path, "show")["status"]["waiting_for_server"]["failed_lookups"]:
                    break
                time.sleep(0.05)
            seen["json"] = control.request(path, "show")
            seen["text"] = subprocess.run([str(Path(sys.executable).parent / "vpncrypt"), "show", "alice"],
                                          capture_output=True, text=True, timeout=30)
            seen["prometheus"] = subprocess.run([str(Path(sys.executable).parent / "vpncrypt"), "show",
                                                 "--prometheus"], capture_output=True, text=True, timeout=30)
            seen["reload"] = control.request(path, "reload")
            seen["garbage"] = control.request(path, "nonsense")
            try:  # what a second client with this state (from another namespace) would do
                with contextlib.ExitStack() as stack:
                    daemon.hold_state(stack, config.state_directory, "alice")
                seen["second"] = "let in"
            except daemon.StateInUse as error:
                seen["second"] = str(error)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=operator)
    helper.start()
    try:
        assert client.run_client(config) == 0
    finally:
        helper.join(30)
    status = seen["json"]["status"]
    assert seen["json"]["ok"] and status["role"] == "client" and status["name"] == "alice"
    waiting = status["waiting_for_server"]
    assert waiting["server"] == "vpn.example:51820" and 1 <= waiting["failed_lookups"] <= len(lookups)
    assert waiting["error"] == "cannot resolve server 'vpn.example': Name or service not known"
    assert status["now"] <= waiting["next_lookup"] <= status["now"] + 2  # the second wait is 2 s
    text = seen["text"]
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[:2] == ["client: alice", "  waiting for the server's name: vpn.example:51820 (no tunnel yet)"]
    assert re.fullmatch(r"  lookups: \d+ failed so far, the next (in \d s|one under way)", lines[2]), lines[2]
    assert lines[3] == "  last error: cannot resolve server 'vpn.example': Name or service not known"
    [entry] = json.loads((Path(os.environ["STATE_DIRECTORY"]) / "alice.keys.json").read_text())["keys"].values()
    assert entry["key"] not in json.dumps(status) and entry["key"] not in text.stdout
    metrics = seen["prometheus"].stdout.splitlines()
    assert seen["prometheus"].returncode == 0, seen["prometheus"].stderr
    assert any(re.fullmatch(r'vpncrypt_server_name_lookup_failures_total\{daemon="alice"\} [1-9]', m) for m in metrics)
    assert seen["reload"] == {"ok": False, "status": 2,
                              "error": f"{config.path}: a client cannot reload its config; restart it"}
    assert not seen["garbage"]["ok"] and "commands: reload, show" in seen["garbage"]["error"]
    assert "another vpncrypt daemon runs with the state of 'alice'" in seen["second"]  # held while waiting
    assert not path.exists()  # stopped while waiting: the socket goes with it
