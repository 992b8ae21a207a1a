"""The I/O shell without root: a server and a client Daemon over loopback UDP, TUN devices faked."""

from __future__ import annotations

import asyncio
from collections import Counter
import ipaddress
import os
import signal
import socket
import time

import pytest

from vpncrypt.core import Delivery
from vpncrypt.core.client import ClientCore
from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.daemon import Daemon
from vpncrypt.transport import format_endpoint
from vpncrypt.transport.udp import open_client_transport, open_server_transport
from vpncrypt.tun.memory import MemoryTun

from tests.builders import ipv4_packet

KEY = os.urandom(64)
KEY_EPOCH = int(time.time()) // 3600 - 1  # the key of the previous hour: a step to derive


async def exchange(count: int) -> tuple[list[bytes], list[bytes], dict, dict]:
    now = time.time()
    server_core = ServerCore(3, [ClientEntry(1, KEY, KEY_EPOCH, (ipaddress.ip_network("203.0.113.2/32"),), "a")], now)
    server_transport = open_server_transport("127.0.0.1", 0)
    port = server_transport.sock.getsockname()[1]
    client_core = ClientCore(1, KEY, key_epoch=KEY_EPOCH, server_id=3, server_endpoint=("127.0.0.1", port),
                             routes=[ipaddress.ip_network("203.0.113.0/24")], now=now, underlay_version=4)
    server_tun, client_tun = MemoryTun("s"), MemoryTun("c")
    server = Daemon(server_tun, server_transport, server_core)
    client_transport = open_client_transport(socket.AF_INET)
    client = Daemon(client_tun, client_transport, client_core)
    tasks = [asyncio.create_task(server.run()), asyncio.create_task(client.run())]
    try:
        up = [ipv4_packet("203.0.113.2", "203.0.113.1", i.to_bytes(4, "big") * 50) for i in range(count)]
        down = [ipv4_packet("203.0.113.1", "203.0.113.2", i.to_bytes(4, "big") * 50) for i in range(count)]
        received_up, received_down = [], []
        deadline = time.monotonic() + 10
        while server_core.peers[1].endpoint is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for packet in up:
            client_tun.peer.send(packet)
        for packet in down:
            server_tun.peer.send(packet)
        while len(received_up) + len(received_down) < 2 * count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            for tun, into in ((server_tun, received_up), (client_tun, received_down)):
                while True:
                    try:
                        into.append(tun.peer.recv(65536))
                    except BlockingIOError:
                        break
        return received_up, received_down, server.status(), client.status()
    finally:
        server.stop()
        client.stop()
        await asyncio.gather(*tasks)
        for closable in (server_transport, client_transport, server_tun, client_tun):
            closable.close()


def test_packets_cross_both_daemons_in_order_batches():
    up, down, server_status, client_status = asyncio.run(exchange(300))
    assert len(up) == 300 and len(down) == 300
    assert up[7][20:24] == (7).to_bytes(4, "big") and down[299][20:24] == (299).to_bytes(4, "big")
    assert server_status["clients"][0]["rx_packets"] == 300
    assert server_status["tun_write_refused"] == 0 and client_status["udp_send_errors"] == 0


def test_format_endpoint():
    assert format_endpoint(("::ffff:198.51.100.7", 4000, 0, 0)) == "198.51.100.7:4000"
    assert format_endpoint(("2001:db8::7", 4000, 0, 0)) == "[2001:db8::7]:4000"
    assert format_endpoint(("192.0.2.1", 1)) == "192.0.2.1:1" and format_endpoint(None) is None


class ScheduledCore:
    """A core that asks for its timer only once a datagram has come in, at once,
    and answers the timer with one datagram to ``reply_to``."""

    filter_version = 0

    def __init__(self, reply_to) -> None:
        self.drops = Counter()
        self.deadline = None
        self.reply_to = reply_to
        self.fired: list[float] = []

    def datagrams_received(self, datagrams, now):
        self.deadline = now  # due at once: earlier than anything armed (nothing)
        return Delivery([], [])

    def tun_packets_received(self, packets, now):
        return Delivery([], [])

    def held_datagrams(self):
        return 0

    def next_timer(self):
        return self.deadline

    def handle_timer(self, now):
        self.fired.append(now)
        self.deadline = None
        return [(b"timer", self.reply_to)]

    def status(self):
        return {}


def test_the_loop_arms_the_timer_when_the_core_asks_for_an_earlier_one():
    async def scenario():
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(5)
        transport = open_server_transport("127.0.0.1", 0)
        core = ScheduledCore(listener.getsockname())
        tun = MemoryTun("t")
        daemon = Daemon(tun, transport, core)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.sleep(0.05)
            assert core.fired == []  # nothing scheduled: the timer never ran
            listener.sendto(b"wake", transport.sock.getsockname())
            reply = await asyncio.get_running_loop().run_in_executor(None, listener.recv, 100)
            return reply, core.fired
        finally:
            daemon.stop()
            await task
            for closable in (transport, tun, listener):
                closable.close()

    reply, fired = asyncio.run(scenario())
    assert reply == b"timer" and len(fired) == 1


def test_sighup_does_not_end_a_daemon_and_the_tick_runs_each_second(caplog):
    """SIGHUP used to kill the process (its default action); a daemon with nothing
    to reload says so and goes on. The once-a-second tick gets ``now``."""
    async def scenario():
        transport = open_server_transport("127.0.0.1", 0)
        tun = MemoryTun("t")
        ticks: list[float] = []
        daemon = Daemon(tun, transport, ScheduledCore(None), tick=ticks.append)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.sleep(1.2)
            return task.done(), ticks
        finally:
            daemon.stop()
            await task
            transport.close()
            tun.close()

    with caplog.at_level("INFO"):
        ended, ticks = asyncio.run(scenario())
    assert not ended and "SIGHUP: nothing to reload here" in caplog.text
    assert len(ticks) == 1 and abs(ticks[0] - time.time()) < 5


def keepalives_after_a_step(step: float, packet: bytes | None = None) -> int:
    """A client daemon with keepalives every 0.2 s, its wall clock stepped by
    ``step`` seconds after 0.5 s (and ``packet`` sent through it at once): the
    keepalives its server gets in the second after."""

    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    async def scenario() -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.bind(("127.0.0.1", 0))
        listener.setblocking(False)
        core = ClientCore(1, KEY, key_epoch=KEY_EPOCH, server_id=3, server_endpoint=listener.getsockname(),
                          routes=[ipaddress.ip_network("203.0.113.0/24")], now=clock(), keepalive_interval=0.2,
                          underlay_version=4)
        transport = open_client_transport(socket.AF_INET)
        tun = MemoryTun("k")
        daemon = Daemon(tun, transport, core, clock=clock)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.sleep(0.5)  # the first keepalive and a couple more
            offset[0] = step
            if packet is not None:
                tun.peer.send(packet)
            await asyncio.sleep(0.05)
            while True:
                try:
                    listener.recv(2000)
                except BlockingIOError:
                    break
            await asyncio.sleep(1.0)
            received = 0
            while True:
                try:
                    received += len(listener.recv(2000)) == 24  # keepalives only
                except BlockingIOError:
                    return received
        finally:
            daemon.stop()
            await task
            for closable in (transport, tun, listener):
                closable.close()

    return asyncio.run(scenario())


def test_keepalives_keep_their_pace_when_the_wall_clock_is_stepped_back():
    """Issue 10: the keepalive deadline is on the wall clock, the loop's timer on the
    monotonic one; a clock stepped back 60 s used to silence keepalives for a minute."""
    assert keepalives_after_a_step(-60.0) >= 3  # about 5 in the second after the step; none without the fix


def test_keepalives_keep_their_pace_when_data_goes_out_right_after_a_forward_step():
    """Found by a fresh user: a clock stepped forward, then a packet sent before
    the next timer fired. The step was noticed only when the timer fired, and
    moved the last send, already in the new time, by the step again: no
    keepalive for as long as the step (here 120 s). The shell now tells the
    core of a step at every reading of the clock it passes it."""
    assert keepalives_after_a_step(120.0, ipv4_packet("203.0.113.2", "203.0.113.1", b"right after the step")) >= 3


def test_one_daemon_at_a_time_holds_a_configs_state(tmp_path):
    """Found by a fresh user: the same server.toml started in a second network
    namespace (or with another control-socket directory) ran, and both
    ratcheted one key store and wrote one restart state."""
    import contextlib

    from vpncrypt.daemon import StateInUse, hold_state

    first = contextlib.ExitStack()
    hold_state(first, tmp_path, "server")
    with contextlib.ExitStack() as second, pytest.raises(StateInUse, match="another vpncrypt daemon runs with the"
                                                                          " state of 'server'"):
        hold_state(second, tmp_path, "server")
    with contextlib.ExitStack() as other:
        hold_state(other, tmp_path, "laptop")  # another config's state: its own lock
    first.close()
    with contextlib.ExitStack() as again:
        hold_state(again, tmp_path, "server")


class HeldLoop(asyncio.SelectorEventLoop):
    """An event loop whose monotonic clock (``time()``, which its timers run
    on) the test moves ahead: as if the loop had been held that long (a
    stopped process, a busy machine) with no test waiting for it."""

    held = 0.0

    def time(self) -> float:
        return super().time() + self.held


def test_the_drop_summary_names_the_period_it_counted(caplog):
    """Found by an operator: every summary said "dropped in the last 60s",
    also one that came later than DROP_SUMMARY_INTERVAL after the start or
    after the summary before it. It names the period on the loop's
    monotonic clock, in whole seconds."""
    from vpncrypt import daemon as daemon_module

    async def scenario(loop: HeldLoop) -> None:
        transport = open_server_transport("127.0.0.1", 0)
        tun = MemoryTun("t")
        core = ScheduledCore(None)
        daemon = Daemon(tun, transport, core)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.sleep(0.01)  # running: the first summary is armed
            core.drops["replayed"] += 3
            loop.held += 77.4  # held for 77 s from the start: the first summary comes then
            await asyncio.sleep(0.01)
            core.drops["replayed"] += 2
            loop.held += daemon_module.DROP_SUMMARY_INTERVAL  # the next one, a minute after
            await asyncio.sleep(0.01)
            core.drops["auth_failed"] += 1
            loop.held += 3 * daemon_module.DROP_SUMMARY_INTERVAL + 5  # the one due a minute on comes 185 s on
            await asyncio.sleep(0.01)
        finally:
            daemon.stop()
            await task
            transport.close()
            tun.close()

    loop = HeldLoop()
    with caplog.at_level("INFO", logger="vpncrypt"):
        try:
            loop.run_until_complete(scenario(loop))
        finally:
            loop.close()
    summaries = [record.getMessage() for record in caplog.records if record.getMessage().startswith("dropped")]
    assert summaries == [
        'dropped in the last 77s: {"replayed": 3}',
        'dropped in the last 60s: {"replayed": 2}',
        'dropped in the last 185s: {"auth_failed": 1}',
    ]
