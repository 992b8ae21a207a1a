"""systemd notifications (Type=notify): the messages a daemon sends, read from a
socketpair standing in for $NOTIFY_SOCKET, and the socket found from the environment
(a path or the abstract namespace)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest

from vpncrypt import sdnotify
from vpncrypt.control import RequestError
from vpncrypt.daemon import Daemon
from vpncrypt.transport.udp import open_server_transport
from vpncrypt.tun.memory import MemoryTun



class IdleCore:
    """A core with nothing to do: no timer, nothing to send."""

    drops: dict = {}

    def next_timer(self):
        return None

    def status(self):
        return {}


def messages(sock: socket.socket) -> list[dict[str, str]]:
    """Every datagram waiting on ``sock``, as its KEY=value lines."""
    received = []
    sock.setblocking(False)
    while True:
        try:
            datagram = sock.recv(4096)
        except BlockingIOError:
            return received
        received.append(dict(line.split("=", 1) for line in datagram.decode().split("\n")))


def test_without_notify_socket_nothing_is_sent():
    notifier = sdnotify.Notifier.from_environment({})
    assert not notifier.enabled and notifier.ready("x") is False and notifier.watchdog_interval is None


@pytest.mark.parametrize("abstract", [True, False])
def test_the_socket_of_notify_socket_gets_the_lines(tmp_path, abstract):
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"vpncrypt-test-{os.getpid()}-{os.urandom(4).hex()}"
        systemd.bind("\0" + name)
        environ = {"NOTIFY_SOCKET": "@" + name}
    else:
        systemd.bind(str(tmp_path / "notify"))
        environ = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    notifier = sdnotify.Notifier.from_environment(environ)
    try:
        assert notifier.ready("serving on vpncrypt0")
        assert notifier.watchdog()
        assert messages(systemd) == [{"READY": "1", "STATUS": "serving on vpncrypt0"}, {"WATCHDOG": "1"}]
    finally:
        notifier.close()
        systemd.close()


def test_a_socket_that_went_away_is_not_an_error(tmp_path):
    notifier = sdnotify.Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled and notifier.stopping() is False
    notifier.close()


def test_the_watchdog_interval_is_for_this_process_only():
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 4.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert sdnotify.watchdog_interval({}) is None


def test_a_daemon_says_ready_reloading_stopping_and_feeds_the_watchdog():
    """READY once it serves; RELOADING then READY around each SIGHUP reload, with
    what came of it; WATCHDOG=1 at half the interval; STOPPING at the end."""
    outcomes = iter(["1 client added", RequestError("server.toml: client_id: missing", 2)])

    async def reload() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def scenario(daemon_end: socket.socket, systemd_end: socket.socket) -> list[dict[str, str]]:
        transport = open_server_transport("127.0.0.1", 0)
        tun = MemoryTun("vpn7")
        daemon = Daemon(tun, transport, IdleCore(), reload=reload)
        daemon.notifier = sdnotify.Notifier(daemon_end, watchdog_interval=0.4)
        task = asyncio.create_task(daemon.run())
        seen: list[dict[str, str]] = []
        try:
            await asyncio.sleep(0.05)
            seen += messages(systemd_end)
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGHUP)
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
        finally:
            daemon.stop()
            await task
            transport.close()
            tun.close()
        return seen + messages(systemd_end)

    daemon_end, systemd_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with daemon_end, systemd_end:
        seen = asyncio.run(scenario(daemon_end, systemd_end))
    watchdogs = [m for m in seen if m == {"WATCHDOG": "1"}]
    events = [m for m in seen if m != {"WATCHDOG": "1"}]
    assert events[0] == {"READY": "1", "STATUS": "serving on vpn7"}
    assert events[1]["RELOADING"] == "1" and int(events[1]["MONOTONIC_USEC"]) > 0
    assert events[2] == {"READY": "1", "STATUS": "serving on vpn7; reloaded: 1 client added"}
    assert events[3]["RELOADING"] == "1"
    assert events[4] == {"READY": "1", "STATUS": "serving on vpn7; reload refused: server.toml: client_id: missing"}
    assert events[5]["STOPPING"] == "1" and len(events) == 6
    assert 3 <= len(watchdogs) <= 5  # at once, then every 0.2 s for about 0.75 s
