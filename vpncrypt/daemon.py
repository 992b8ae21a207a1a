"""The event loop around a core: read what is ready, let the core decide, write.

This is the only place that knows about the clock, signals and the event
loop. Each wake-up drains the ready descriptor in batches (the kernel queue
empties faster than one packet a wake-up would) up to a cap, so one busy
direction cannot starve the other. One timer, armed from the core's
``next_timer()``, runs its ``handle_timer()``, as aioquic's asyncio glue does.
Beside the data path the loop serves the control socket (``control.py``),
runs a once-a-second tick (events derived from the core's state) and turns
SIGHUP into a reload; none of them runs per packet. The state files (key
store, restart bounds) are written and synced in one thread of their own, so
that no packet waits for the disk but one the core holds for its restart
bounds (core/restart.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import sysconfig
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from . import files, key_store, netconfig, privileges, sdnotify
from .control import ControlServer, RequestError
from .core import Core
from .core.restart import HELD_MAX
from .restart_state import RestartStore
from .transport import Transport
from .tun import TunDevice, open_tun

try:  # imported here, as root: after a privilege drop its files may be out of reach
    import uvloop
except ImportError:
    uvloop = None

log = logging.getLogger("vpncrypt")

BATCH = 64
MAX_BATCHES_PER_WAKEUP = 16
DROP_SUMMARY_INTERVAL = 60.0
TICK_INTERVAL = 1.0  # seconds between looks at the core's state for events
SAVE_INTERVAL = 0.2  # seconds at least between two writes of the restart state
SAVE_DELAY = 0.01  # seconds a write that no datagram waits for is put off: the answer to what asked for it goes first
CLOCK_STEP = 1.0  # a change of the wall clock against the monotonic one taken as a step, seconds
SAVE_RETRY = 5.0  # seconds before trying again a write that failed


def state_files(state_directory: Path, name: str) -> list[str]:
    """The files the daemon named ``name`` keeps in its state directory: key
    store, its lock and temporary file, restart state and its temporary file,
    and the lock that says a daemon runs with them (``hold_state``)."""
    keys = key_store.store_path(state_directory, name)
    bounds = RestartStore(state_directory, name).path
    return [path.name for path in (keys, files.lock_path(keys), files.temporary_path(keys), bounds,
                                   files.temporary_path(bounds), files.lock_path(state_directory / f"{name}.daemon"))]


class StateInUse(OSError):
    """Another daemon runs with this daemon's state (key store, restart state)."""


def hold_state(stack: contextlib.ExitStack, state_directory: Path, name: str) -> None:
    """Hold, for as long as ``stack`` is open, the lock that says a daemon runs
    with ``name``'s key store and restart state in ``state_directory``: two
    (from two network namespaces, or with two control-socket directories)
    would ratchet one key store and write one restart state between them.
    Raises StateInUse if another holds it, files.LockError if it cannot be made."""
    lock = state_directory / f"{name}.daemon"
    try:
        stack.enter_context(files.locked(lock, 0, holder="vpncrypt daemon"))
    except files.LockError as error:
        if not files.lock_path(lock).exists():
            raise
        raise StateInUse(f"another vpncrypt daemon runs with the state of {name!r} in {state_directory}"
                         f" (it holds {files.lock_path(lock)}): stop it first, or give this config its own"
                         " state_directory") from None


def hand_over_state(account: privileges.Account | None, state_directory: Path, name: str) -> None:
    """Before anything else, as root: give the state directory and this
    daemon's files in it to the user it will run as (privileges.hand_over).
    Raises PrivilegeError, also where capabilities cannot be kept."""
    if account is not None:
        privileges.check_supported(account)
    if account is not None and os.geteuid() == 0:
        privileges.hand_over(state_directory, state_files(state_directory, name), account)


def drop_privileges(account: privileges.Account | None, state_directory: Path, name: str) -> None:
    """Once the device, its addresses and routes and the socket are made: run
    as ``account`` with only CAP_NET_ADMIN (privileges.drop), then make sure
    the state files can still be written. Raises PrivilegeError."""
    privileges.drop(account)
    privileges.check_writable(state_directory, state_files(state_directory, name))
    standard_library = sysconfig.get_paths()["stdlib"]
    if account is not None and not os.access(standard_library, os.R_OK | os.X_OK):
        log.warning("user %r cannot read Python's standard library (%s): a module first needed from now on"
                    " would fail to import; install Python (the venv's base) where that user can read it",
                    account.user, standard_library)


@contextlib.contextmanager
def tunnel_and_transport(
    spec: netconfig.TunnelSpec, offload: bool, open_transport: Callable[[], Transport],
    then: Callable[[], None] | None = None,
) -> Iterator[tuple[TunDevice, Transport]]:
    """The TUN device configured as ``spec`` says, then the transport, then
    ``then()`` (the privilege drop); closed in reverse order. The device, and
    its addresses and routes with it, goes away when this process lets go of
    it; the plan's teardown undoes the rest (with CAP_NET_ADMIN, which the drop
    keeps). Raises TunError, NetconfigError, PrivilegeError or OSError with a
    message for the operator."""
    tun = open_tun(spec.interface, offload=offload)
    try:
        # The OS may have named the device otherwise: configure the one opened.
        plan = netconfig.plan(dataclasses.replace(spec, interface=tun.name))
        try:
            netconfig.apply(plan)
            transport = open_transport()
            try:
                if then is not None:
                    then()
                yield tun, transport
            finally:
                transport.close()
        finally:
            netconfig.tear_down(plan)  # also after a setup that failed half-way
    finally:
        tun.close()
    log.info("stopped; %s removed", tun.name)


class StopRequested(BaseException):
    """SIGINT or SIGTERM while the daemon starts: raised where the start is, so
    that everything made so far (routes, rules, DNS) is undone on the way out.
    A BaseException, so that no ``except Exception`` on the way swallows it."""


def _stop_requested(signum: int, _frame) -> None:
    raise StopRequested(signal.Signals(signum).name)


def unwind_on_stop_signals() -> None:
    """From the start until the loop serves: SIGINT and SIGTERM raise
    StopRequested (Python's default for SIGTERM ends the process at once,
    leaving a full tunnel's policy rules and DNS changed)."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _stop_requested)


def run_until_signalled(daemon: "Daemon", on_start: Callable[[], None] | None = None) -> None:
    """Serve on a fresh event loop until SIGINT or SIGTERM, then log the final
    status. Further SIGINT and SIGTERM are ignored from then on: the teardown
    that follows must not be cut short (systemd's stop timeout still ends a
    teardown that hangs)."""
    loop = new_event_loop()
    try:
        loop.run_until_complete(daemon.run(on_start))
    finally:
        loop.close()
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
    daemon.log_status()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where installed (it halves the loop's overhead), else asyncio's."""
    if uvloop is None:
        log.warning("uvloop is not installed: using the standard asyncio loop (slower)")
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Daemon:
    """Wires a TUN device and a transport to a core through an event loop.

    ``status`` turns the core's status into what SIGUSR1 logs (endpoints
    formatted, say); ``clock`` gives ``now`` to the core, wall-clock Unix
    seconds (see ``vpncrypt.core``). ``control`` is served while the loop
    runs; ``reload`` (a coroutine function) is what SIGHUP does, and logs its
    own outcome; ``tick`` is called with ``now`` once a second.
    """

    def __init__(
        self,
        tun: TunDevice,
        transport: Transport,
        core: Core,
        *,
        status: Callable[[], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
        control: ControlServer | None = None,
        reload: Callable[[], Awaitable[Any]] | None = None,
        tick: Callable[[float], None] | None = None,
        restart_store: RestartStore | None = None,
        key_store_path: Path | None = None,
    ) -> None:
        self.tun = tun
        self.transport = transport
        self.core = core
        self._status = status or core.status
        self.clock = clock
        self.tun_refused = 0
        self._filter_version = 0  # the core's filter_version the transport was last given
        self.kernel_filter = True  # whether the kernel refuses exactly the filtered client IDs now (none yet)
        self._stopped: asyncio.Event | None = None
        self._last_drops: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._clock_offset: float | None = None  # wall clock minus monotonic clock, seconds
        self.control = control
        self.reload = reload
        self.tick = tick
        self.restart_store = restart_store
        self.key_store_path = key_store_path
        self._save_due: asyncio.TimerHandle | None = None
        self._saving: asyncio.Future | None = None  # the write under way in the save thread
        self._saver: concurrent.futures.ThreadPoolExecutor | None = None
        self._save_failed = False  # the last write failed: the next waits SAVE_RETRY
        self._network_paused = False  # no reads from the network until the write under way ends
        self._closing = False  # run() is ending: no new write, nothing resumed
        self._last_save = float("-inf")  # monotonic seconds
        self._tick_handle: asyncio.TimerHandle | None = None
        self._drop_summary: asyncio.TimerHandle | None = None
        self._drops_since = 0.0  # the loop's monotonic time the next drop summary counts from
        self._reloads: set[asyncio.Task] = set()  # held: the loop keeps tasks only weakly
        # systemd (Type=notify): READY once serving, RELOADING and READY around a
        # SIGHUP reload, STOPPING, and WATCHDOG=1 if WatchdogSec= is set.
        self.notifier = sdnotify.Notifier.from_environment()
        self._watchdog: asyncio.TimerHandle | None = None

    def network_readable(self) -> None:
        """Drain the transport: open, then write to TUN (and forward) batch by batch."""
        for _ in range(MAX_BATCHES_PER_WAKEUP):
            datagrams = self.transport.receive(BATCH)
            if not datagrams:
                break
            to_tun, to_network = self.core.datagrams_received(datagrams, self._now())
            if self.core.filter_version != self._filter_version:
                self._apply_filter()
            if to_tun:
                self.tun_refused += self.tun.write_batch(to_tun)
            if to_network:
                self.transport.send(to_network)
            if len(datagrams) < BATCH or self.core.held_datagrams() >= HELD_MAX:
                break
        self._schedule_save()
        if self.core.held_datagrams() >= HELD_MAX:
            self._pause_network()
        self._arm_timer_if_earlier()

    def _apply_filter(self) -> None:
        """Hand the transport the client IDs the core wants refused (a flood
        of forgeries names them, core/filtered.py), at once: the next batch
        already comes without them."""
        self._filter_version = self.core.filter_version
        self.kernel_filter = self.transport.refuse_client_ids(self.core.filtered_client_ids())

    def _schedule_save(self) -> None:
        """Coalesced: one write serves everything asked for in the meantime,
        and one write at a time (a later table must not land before an earlier
        one). Writes are SAVE_INTERVAL apart and start SAVE_DELAY after they
        are asked for (the thread takes a CPU and the GIL for a moment, and the
        packet that asked may be a request whose answer is on its way); but
        datagrams the core holds for the restart bounds (core/restart.py) wait
        for neither. After a failed write, SAVE_RETRY apart."""
        if self._saving is not None or self._closing or (self.restart_store is None and self.key_store_path is None):
            return
        held = self.core.held_datagrams()
        if self._save_due is not None:
            if not held or self._save_failed:
                return
            self._save_due.cancel()
            self._save_due = None
        if held:
            self._save_state()
            return
        if self.core.save_wanted(bounds=self.restart_store is not None, keys=self.key_store_path is not None):
            delay = max(SAVE_DELAY, self._last_save + SAVE_INTERVAL - time.monotonic())
            self._save_due = asyncio.get_running_loop().call_later(delay, self._save_state)

    def _save_state(self) -> None:
        """Hand what the core asked for to the save thread: the keys that moved
        forward (erasing the old ones from disk, key_store.py) and the restart
        bounds. The loop goes on serving while the files are written and
        synced (milliseconds, or seconds behind keygen's lock); only datagrams
        the core holds for the bounds wait (``_state_written``)."""
        self._save_due = None
        self._last_save = time.monotonic()
        keys = self.core.keys_to_save() if self.key_store_path is not None else None
        bounds = self.core.bounds_to_save() if self.restart_store is not None else None
        if keys is None and bounds is None:
            return
        if self._saver is None:  # made here, after the privilege drop: the thread starts with its rights
            self._saver = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpncrypt-save")
        self._saving = asyncio.get_running_loop().run_in_executor(self._saver, self._write_state, keys, bounds)
        self._saving.add_done_callback(functools.partial(self._state_written, keys, bounds))

    def _write_state(self, keys: dict | None, bounds: dict | None) -> tuple[bool, Exception | None]:
        """In the save thread: the files only, never the core. Returns whether
        the keys were written, and the error that stopped the writes, if any."""
        try:
            if keys is not None:
                key_store.advance(self.key_store_path, keys)  # type: ignore[arg-type]
        except (OSError, key_store.KeyStoreError) as error:
            return False, error
        try:
            if bounds is not None:
                self.restart_store.save(bounds)  # type: ignore[union-attr]
        except OSError as error:
            return keys is not None, error
        return keys is not None, None

    def _state_written(self, keys: dict | None, bounds: dict | None, written: asyncio.Future) -> None:
        """Back on the loop: let the core rely on what is on disk, deliver what
        waited for it (core/restart.py), and write what was asked for meanwhile.
        A failed write is logged and retried."""
        self._saving = None
        self._resume_network()
        keys_written, error = written.result()
        if keys_written:
            self.core.keys_saved(keys)
        self._save_failed = error is not None
        if error is not None:
            log.warning("cannot save the state in %s (%s): datagrams past the restart bounds saved wait, and"
                        " beyond %d are dropped (pending_restart_state), until it can; retrying in %gs",
                        self._state_directory(), getattr(error, "strerror", None) or error, HELD_MAX, SAVE_RETRY)
            if not self._closing:
                self._save_due = asyncio.get_running_loop().call_later(SAVE_RETRY, self._save_state)
            return
        if bounds is not None:
            to_tun, to_network = self.core.bounds_saved(bounds, self._now())
            if to_tun:
                self.tun_refused += self.tun.write_batch(to_tun)
            if to_network:
                self.transport.send(to_network)
            if not self._closing:
                # What waited was received only now: as for any datagram
                # received (network_readable), the core may want its timer
                # earlier (a probe's acknowledgement, the server heard after
                # a path MTU search's ERROR: core/pmtu.py).
                self._arm_timer_if_earlier()
        self._schedule_save()

    def _save_bounds_at_stop(self) -> None:
        """Nothing more is read or opened: write the restart bounds down to
        what was accepted (core.bounds_at_stop), so that after this clean
        stop a peer is heard again as soon as its clock passes its last
        datagram, rather than once it passes a bound kept ahead of it. A
        write that fails leaves the last table, which is as safe."""
        if self.restart_store is None:
            return
        table = self.core.bounds_at_stop()
        if table is None:
            return
        try:
            self.restart_store.save(table)
        except OSError as error:
            log.warning("cannot save the restart state at stop (%s): peers are heard again once their clocks"
                        " pass the state saved before", getattr(error, "strerror", None) or error)

    def _state_directory(self) -> Path | str:
        """Where the state files are, for the operator: the directory of either."""
        path = self.key_store_path or getattr(self.restart_store, "path", None)
        return path.parent if isinstance(path, Path) else "the state directory"

    def _pause_network(self) -> None:
        """The core holds all it may while a save is written: leave what comes
        next in the socket's buffer until then, as a loop blocked in the write
        would, rather than have the core drop it (pending_restart_state)."""
        if self._network_paused or self._saving is None:
            return
        self._network_paused = True
        asyncio.get_running_loop().remove_reader(self.transport.fileno())

    def _resume_network(self) -> None:
        if self._network_paused and not self._closing:
            self._network_paused = False
            asyncio.get_running_loop().add_reader(self.transport.fileno(), self.network_readable)

    def tun_readable(self) -> None:
        """Drain the TUN device: seal and send batch by batch; what the core
        answers back (ICMP errors) is written to TUN."""
        for _ in range(MAX_BATCHES_PER_WAKEUP):
            packets = self.tun.read_batch(BATCH)
            if not packets:
                break
            to_tun, to_network = self.core.tun_packets_received(packets, self._now())
            if to_tun:
                self.tun_refused += self.tun.write_batch(to_tun)
            if to_network:
                self.transport.send(to_network)
            if len(packets) < BATCH:
                break
        self._arm_timer_if_earlier()

    def _arm_timer_if_earlier(self) -> None:
        """Deadlines that only move later (a keepalive after traffic) leave the
        armed timer alone: it finds nothing due and re-arms. One that moved
        earlier re-arms it now."""
        deadline = self.core.next_timer()
        if deadline is not None and (self._timer_deadline is None or deadline < self._timer_deadline):
            self._arm_timer(deadline)

    def _arm_timer(self, deadline: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None:
            delay = max(deadline - self.clock(), 0.0)
            self._timer = asyncio.get_running_loop().call_later(delay, self._timer_fired)

    def _now(self) -> float:
        """The wall clock for the core (Unix seconds), the core told first if it
        was stepped since the last reading (against the monotonic clock, by
        more than CLOCK_STEP). Checked at every reading the core gets, not only
        when its timer fires: a time it records after a step (the last send,
        say) must not be moved by that step again when the timer fires, nor
        keepalives wait that much longer."""
        now = self.clock()
        offset = now - time.monotonic()
        if self._clock_offset is not None and abs(offset - self._clock_offset) > CLOCK_STEP:
            self.core.clock_stepped(offset - self._clock_offset)
        self._clock_offset = offset
        return now

    def _timer_fired(self) -> None:
        self._timer = None
        to_network = self.core.handle_timer(self._now())
        if self.core.filter_version != self._filter_version:
            self._apply_filter()
        if to_network:
            self.transport.send(to_network)
        self._schedule_save()
        self._arm_timer(self.core.next_timer())

    def status(self) -> dict[str, Any]:
        """The core's status plus the refusals counted here."""
        status = self._status()
        status["tun_write_refused"] = self.tun_refused
        status["udp_send_errors"] = self.transport.send_errors
        return status

    def log_status(self) -> None:
        """One ``status {json}`` line (SIGUSR1)."""
        log.info("status %s", json.dumps(self.status(), sort_keys=True))

    def _summarize_drops(self, loop: asyncio.AbstractEventLoop) -> None:
        """One line a minute at most, whatever the rate of drops: what was
        dropped since the last summary (or the start), and over how long, in
        whole seconds of the loop's monotonic clock. That is the interval
        only if this runs on time: a loop held up (a stopped process, a busy
        machine) runs it late."""
        now = loop.time()
        period, self._drops_since = now - self._drops_since, now
        drops = {k: v for k, v in self.core.drops.items() if v}
        if drops != self._last_drops:
            new = {k: v - self._last_drops.get(k, 0) for k, v in drops.items() if v != self._last_drops.get(k, 0)}
            log.info("dropped in the last %ds: %s", max(round(period), 1), json.dumps(new, sort_keys=True))
            self._last_drops = drops
        self._drop_summary = loop.call_later(DROP_SUMMARY_INTERVAL, self._summarize_drops, loop)

    def _ticked(self) -> None:
        """Re-armed first, so that a failing tick cannot stop the ticks."""
        self._tick_handle = asyncio.get_running_loop().call_later(TICK_INTERVAL, self._ticked)
        if self.tick is not None:
            self.tick(self.clock())

    def _hangup(self) -> None:
        """SIGHUP: reload in the background; the reload logs what came of it."""
        if self.reload is None:
            log.info("SIGHUP: nothing to reload here; restart to read the config again")
            return
        task = asyncio.get_running_loop().create_task(self._reload_quietly())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_quietly(self) -> None:
        self.notifier.reloading()
        try:
            message = await self.reload()  # type: ignore[misc]
        except RequestError as error:
            # logged by the reload itself; the old config stays
            self.notifier.ready(f"{self._serving()}; reload refused: {error}")
        else:
            self.notifier.ready(f"{self._serving()}; reloaded: {message}")

    def _serving(self) -> str:
        return f"serving on {self.tun.name}"

    def _watchdog_due(self) -> None:
        """WATCHDOG=1 at half systemd's interval, from the loop: a loop that hangs stops it."""
        self.notifier.watchdog()
        interval = self.notifier.watchdog_interval
        self._watchdog = asyncio.get_running_loop().call_later(interval / 2, self._watchdog_due)  # type: ignore[operator]

    def stop(self) -> None:
        """Make ``run`` return (SIGINT, SIGTERM)."""
        if self._stopped is not None:
            self._stopped.set()

    async def run(self, on_start: Callable[[], None] | None = None) -> None:
        """Serve until SIGINT or SIGTERM (or ``stop()``); the core's timer is
        armed at once (a client's first keepalive is due then), and
        ``on_start`` runs once the loop is serving (duties of the shell's own,
        such as looking the server up again)."""
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        loop.add_reader(self.transport.fileno(), self.network_readable)
        loop.add_reader(self.tun.fileno(), self.tun_readable)
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, self.log_status)
        loop.add_signal_handler(signal.SIGHUP, self._hangup)
        self._drops_since = loop.time()  # the first summary counts from the start
        self._drop_summary = loop.call_later(DROP_SUMMARY_INTERVAL, self._summarize_drops, loop)
        self._tick_handle = loop.call_later(TICK_INTERVAL, self._ticked)
        self._arm_timer(self.core.next_timer())
        self._schedule_save()  # what the core moved on at start (keys) is written at once
        try:
            if self.control is not None:
                await self.control.start()
            if on_start is not None:
                on_start()
            self.notifier.ready(self._serving())
            if self.notifier.watchdog_interval:
                self._watchdog_due()
            await self._stopped.wait()
        finally:
            self.notifier.stopping()
            self._closing = True
            self._arm_timer(None)
            for handle in (self._drop_summary, self._tick_handle, self._save_due, self._watchdog):
                if handle is not None:
                    handle.cancel()
            loop.remove_reader(self.transport.fileno())
            loop.remove_reader(self.tun.fileno())
            if self._saving is not None:
                await asyncio.wait([self._saving])  # a write under way ends whole
            self._save_bounds_at_stop()
            if self._saver is not None:
                self._saver.shutdown()
            for number in signals:
                loop.remove_signal_handler(number)
            for task in list(self._reloads):
                task.cancel()
            if self.control is not None:
                await self.control.close()
