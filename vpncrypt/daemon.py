"""The event loop around a core: read what is ready, let the core decide, write.

This is the only place that knows about the clock, signals and file
descriptors. Each wake-up drains the ready descriptor in batches (the kernel
queue empties faster than one packet a wake-up would) up to a cap, so one busy
direction cannot starve the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import time
from typing import Any, Callable, Iterator

from . import netconfig
from .tun import TunDevice, open_tun
from .transport.udp import UdpBatcher

log = logging.getLogger("vpncrypt")

BATCH = 64
MAX_BATCHES_PER_WAKEUP = 16
DROP_SUMMARY_INTERVAL = 60.0


@contextlib.contextmanager
def tunnel_and_socket(
    interface: str, offload: bool, plan: netconfig.NetworkPlan, open_socket: Callable[[], socket.socket],
) -> Iterator[tuple[TunDevice, socket.socket]]:
    """The TUN device configured by ``plan``, then the UDP socket; closed in
    reverse order. The device, and its addresses and routes with it, goes away
    when this process lets go of it; the plan's teardown undoes the rest."""
    backend = netconfig.backend()
    tun = open_tun(interface, offload=offload)
    try:
        try:
            backend.apply(plan)
            sock = open_socket()
            try:
                yield tun, sock
            finally:
                sock.close()
        finally:
            backend.tear_down(plan)  # also after a setup that failed half-way
    finally:
        tun.close()
    log.info("stopped; %s removed", interface)


def run_until_signalled(daemon: "Daemon", on_start: Callable[[], None] | None = None) -> None:
    """Serve on a fresh event loop until SIGINT or SIGTERM, then log the final status."""
    loop = new_event_loop()
    try:
        loop.run_until_complete(daemon.run(on_start))
    finally:
        loop.close()
    daemon.log_status()


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed: using the standard asyncio loop (slower)")
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Daemon:
    """Wires a TUN device and a UDP socket to a core through an event loop.

    ``from_network(datagrams, now) -> (to_tun, to_network)`` and
    ``from_tun(packets, now) -> to_network`` are the core's two entry points;
    ``status()`` what SIGUSR1 logs; ``on_timer`` an optional periodic duty.
    """

    def __init__(
        self,
        tun: TunDevice,
        udp: UdpBatcher,
        *,
        from_network: Callable[[list, float], tuple[list, list]],
        from_tun: Callable[[list, float], list],
        status: Callable[[], dict[str, Any]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tun = tun
        self.udp = udp
        self._from_network = from_network
        self._from_tun = from_tun
        self._status = status
        self.clock = clock
        self.tun_refused = 0
        self._stopped: asyncio.Event | None = None
        self._last_drops: dict[str, int] = {}

    def network_readable(self) -> None:
        for _ in range(MAX_BATCHES_PER_WAKEUP):
            datagrams = self.udp.receive(BATCH)
            if not datagrams:
                return
            to_tun, to_network = self._from_network(datagrams, self.clock())
            if to_tun:
                self.tun_refused += self.tun.write_batch(to_tun)
            if to_network:
                self.udp.send(to_network)
            if len(datagrams) < BATCH:
                return

    def tun_readable(self) -> None:
        for _ in range(MAX_BATCHES_PER_WAKEUP):
            packets = self.tun.read_batch(BATCH)
            if not packets:
                return
            self.udp.send(self._from_tun(packets, self.clock()))
            if len(packets) < BATCH:
                return

    def status(self) -> dict[str, Any]:
        status = self._status()
        status["tun_write_refused"] = self.tun_refused
        status["udp_send_errors"] = self.udp.send_errors
        return status

    def log_status(self) -> None:
        log.info("status %s", json.dumps(self.status(), sort_keys=True))

    def _summarize_drops(self, loop: asyncio.AbstractEventLoop) -> None:
        """One line a minute at most, whatever the rate of drops."""
        drops = {k: v for k, v in self.status().get("drops", {}).items() if v}
        if drops != self._last_drops:
            new = {k: v - self._last_drops.get(k, 0) for k, v in drops.items() if v != self._last_drops.get(k, 0)}
            log.info("dropped in the last %ds: %s", DROP_SUMMARY_INTERVAL, json.dumps(new, sort_keys=True))
            self._last_drops = drops
        loop.call_later(DROP_SUMMARY_INTERVAL, self._summarize_drops, loop)

    def stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    async def run(self, on_start: Callable[[], None] | None = None) -> None:
        """Serve until SIGINT or SIGTERM (or ``stop()``)."""
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        loop.add_reader(self.udp.sock.fileno(), self.network_readable)
        loop.add_reader(self.tun.fileno(), self.tun_readable)
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, self.log_status)
        loop.call_later(DROP_SUMMARY_INTERVAL, self._summarize_drops, loop)
        try:
            if on_start is not None:
                on_start()
            await self._stopped.wait()
        finally:
            loop.remove_reader(self.udp.sock.fileno())
            loop.remove_reader(self.tun.fileno())
            for number in signals:
                loop.remove_signal_handler(number)
