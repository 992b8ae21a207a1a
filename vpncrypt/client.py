"""vpncrypt client: its TUN device, one UDP transport, one server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, NoReturn

from . import control, key_store, netconfig, sdnotify
from .config import ClientConfig, parse_endpoint
from .core.client import ClientCore
from .core import siv
from .core.pmtu import ERROR, PROBE_TIMER, SEARCH_COMPLETE
from .core.wire import OVERHEAD
from .daemon import (
    Daemon, drop_privileges, hand_over_state, hold_state, run_until_signalled, tunnel_and_transport,
)
from .events import EventWatch, UnheardServer
from .netconfig import dns, resolv_conf
from .restart_state import RestartStore
from .transport import format_endpoint, socket_options
from .transport.udp import open_client_transport
from .tun import offload_in_use

log = logging.getLogger("vpncrypt.client")


class ResolveError(Exception):
    """The server's name does not resolve; the message names it."""


# A client started before the network (at boot) waits for its server's name
# rather than exiting, as wg-quick's resolution retries (WG_ENDPOINT_RESOLUTION_RETRIES)
# and OpenVPN's --resolv-retry infinite do: 1 s, doubling up to a minute.
RESOLVE_RETRY_FIRST = 1.0  # seconds
RESOLVE_RETRY_MAX = 60.0  # seconds
RESOLVE_LOG_INTERVAL = 60.0  # seconds at least between two lines about failing lookups
# How much longer systemd should wait for READY=1 each time a lookup fails
# (EXTEND_TIMEOUT_USEC, sd_notify(3)): the next wait plus a lookup's own
# worst case (resolv.conf(5): timeout 5 s x attempts 2 x 3 name servers).
RESOLVE_LOOKUP_ALLOWANCE = 30.0  # seconds


class ServerLookups:
    """Looks a server given by name up again every ``interval`` seconds, as a
    roaming server with a dynamic address needs (wg-quick leaves this to a
    script). The core decides whether to move; a failed lookup keeps the
    address the client has, with one warning until lookups work again.
    ``loop_route(address)`` names the tunnel route that would carry datagrams
    to an ``ipaddress`` address into the tunnel (netconfig.loop_route), or
    None: such answers are passed over, and if none is left the client stays
    where it is, with one warning until an answer is usable again (staying
    keeps a tunnel that works; the old address may well still answer)."""

    def __init__(self, core: ClientCore, host: str, port: int, family: int, interval: float,
                 loop_route: Callable[[Any], Any] = lambda _address: None) -> None:
        self.core = core
        self.host, self.port, self.family, self.interval = host, port, family, interval
        self.loop_route = loop_route
        self.failing = False
        self.looping = False
        self._lookup: asyncio.Task | None = None  # kept: the loop holds tasks only weakly

    def start(self) -> None:
        """Schedule the first lookup, ``interval`` seconds from now (on the running loop)."""
        asyncio.get_running_loop().call_later(self.interval, self._due)

    def _due(self) -> None:
        self._lookup = asyncio.get_running_loop().create_task(self.look_up())

    async def look_up(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, family=self.family, type=socket.SOCK_DGRAM)
        except OSError as error:  # socket.gaierror included
            if not self.failing:
                log.warning("cannot look up server %r again (%s); staying at %s", self.host,
                            getattr(error, "strerror", None) or error, format_endpoint(self.core.server.endpoint))
            self.failing = True
        else:
            self.failing = False
            self.resolved([info[4] for info in infos])
        loop.call_later(self.interval, self._due)

    def resolved(self, answers: list[Any]) -> None:
        """Move to one of the socket addresses ``answers`` if the core says so,
        passing over those that would loop."""
        usable = [answer for answer in answers if self.loop_route(ipaddress.ip_address(answer[0])) is None]
        if answers and not usable:
            if not self.looping:
                address = ipaddress.ip_address(answers[0][0])
                log.warning("server %r now resolves to %s; staying at %s: %s", self.host, address,
                            format_endpoint(self.core.server.endpoint),
                            netconfig.loop_line(self.loop_route(address), address))
            self.looping = True
            return
        self.looping = False
        before = self.core.server.endpoint
        moved = self.core.server_resolved(usable)
        if moved is not None:
            log.info("server %r is now at %s (was %s)", self.host, format_endpoint(moved), format_endpoint(before))


def is_name(host: str) -> bool:
    """True for a host name, False for an address literal (never looked up again)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def resolve(host: str, port: int) -> tuple[int, Any]:
    """(address family, socket address) of the server, from a name or a literal."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as error:
        raise ResolveError(f"cannot resolve server {host!r}: {error.strerror}") from None
    family, _, _, _, address = infos[0]
    return family, address


class StopFlag:
    """Set by SIGINT or SIGTERM while the client waits for its server's name
    (the handler only sets it: no lock, no exception from a handler). ``sleep``
    and ``wait`` poll it every STOP_POLL seconds, spending the time between
    in ``idle(seconds)``: ``time.sleep``, or answering the control socket."""

    def __init__(self, idle: Callable[[float], None] = time.sleep) -> None:
        self.stopped = False
        self.idle = idle

    def __call__(self, _number: int = 0, _frame: Any = None) -> None:
        self.stopped = True

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopped and (left := deadline - time.monotonic()) > 0:
            self.idle(min(STOP_POLL, left))

    def wait(self, done: threading.Event) -> bool:
        """Until ``done`` is set (True) or a stop (False)."""
        while not self.stopped:
            if done.is_set():
                return True
            self.idle(STOP_POLL)
        return False


STOP_POLL = 0.1  # seconds: how soon a SIGTERM during the wait is seen


def look_up_in_thread(host: str, port: int, stop: StopFlag) -> tuple[int, Any] | None:
    """``resolve`` in a thread of its own, which the process does not wait for
    at exit: a name server that does not answer holds getaddrinfo for up to
    half a minute, and a SIGTERM must not wait for it. None if stopped
    meanwhile. Raises ResolveError."""
    outcome: list[Any] = []
    done = threading.Event()

    def look_up() -> None:
        try:
            outcome.append(resolve(host, port))
        except ResolveError as error:
            outcome.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=look_up, name="lookup", daemon=True)
    thread.start()
    if not stop.wait(done):
        return None
    thread.join()  # it has ended: the privilege drop wants the process to have one thread
    if isinstance(outcome[0], ResolveError):
        raise outcome[0]
    return outcome[0]


def wait_for_server(
    host: str, port: int, *, look_up: Callable[[str, int], tuple[int, Any] | None],
    sleep: Callable[[float], None], stopped: Callable[[], bool] = lambda: False,
    notifier: sdnotify.Notifier | None = None, clock: Callable[[], float] = time.monotonic,
    failed: Callable[[str, float], None] = lambda _error, _delay: None,
) -> tuple[int, Any] | None:
    """(address family, socket address) of the server, looking its name up
    until it resolves: after a failure, ``sleep`` RESOLVE_RETRY_FIRST seconds,
    doubling up to RESOLVE_RETRY_MAX. Failures are logged, one line every
    RESOLVE_LOG_INTERVAL seconds (of ``clock``, monotonic) at most, told
    to systemd (STATUS=, and EXTEND_TIMEOUT_USEC so that its start timeout
    waits too) and to ``failed(error line, seconds to the next lookup)``
    (NameWait, for ``vpncrypt show``). None once ``stopped()`` (``look_up``
    returns None then too)."""
    delay = RESOLVE_RETRY_FIRST
    failures = 0
    logged_at: float | None = None
    notifier = notifier or sdnotify.Notifier()
    while not stopped():
        try:
            found = look_up(host, port)
        except ResolveError as error:
            failures += 1
            now = clock()
            if logged_at is None or now - logged_at >= RESOLVE_LOG_INTERVAL:
                log.warning("%s (%d failed lookup%s so far); trying again in %g s, until it resolves or the"
                            " client is stopped", error, failures, "" if failures == 1 else "s", delay)
                logged_at = now
            notifier.send(STATUS=f"waiting for the server's name: {error}; next lookup in {delay:g} s",
                          EXTEND_TIMEOUT_USEC=int((delay + RESOLVE_LOOKUP_ALLOWANCE) * 1e6))
            failed(str(error), delay)
            sleep(delay)
            delay = min(delay * 2, RESOLVE_RETRY_MAX)
            continue
        if found is not None and failures:
            log.info("server %r resolved after %d failed lookup%s", host, failures, "" if failures == 1 else "s")
        return found
    return None


class NameWait:
    """A client waiting for its server's name as ``vpncrypt show`` sees it,
    before there is a tunnel (and a LiveClient): the name, the failed lookups
    so far with the last one's error, and when the next is due. ``clock`` is
    the wall clock (Unix seconds) of the status, ``monotonic`` the one the
    wait runs on."""

    def __init__(self, config: ClientConfig, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config, self.clock, self.monotonic = config, clock, monotonic
        self.started = clock()
        self.failures = 0
        self.error: str | None = None
        self.next_at: float | None = None  # monotonic

    def failed(self, error: str, delay: float) -> None:
        """``wait_for_server``'s ``failed``: a lookup failed with ``error``; the next in ``delay`` seconds."""
        self.failures += 1
        self.error = error
        self.next_at = self.monotonic() + delay

    def handlers(self) -> dict[str, control.PlainHandler]:
        return {"show": lambda _request: {"status": self.status()},
                "reload": lambda _request: refuse_reload(self.config)}

    def status(self) -> dict[str, Any]:
        """``vpncrypt show --json`` for a client with no tunnel yet (README, "Operating"); no key material."""
        now = self.clock()
        next_lookup = None if self.next_at is None else now + max(self.next_at - self.monotonic(), 0.0)
        return {
            "format": STATUS_FORMAT,
            "role": "client",
            "name": self.config.path.stem,
            "config": str(self.config.path),
            "pid": os.getpid(),
            "started": self.started,
            "now": now,
            "waiting_for_server": {"server": self.config.server, "failed_lookups": self.failures,
                                   "error": self.error, "next_lookup": next_lookup},
        }


def refuse_reload(config: ClientConfig) -> NoReturn:
    """Raise a client's answer to ``vpncrypt reload`` (RequestError, status 2):
    its key, ID and addresses are all it is, so it says to restart it."""
    raise control.RequestError(f"{config.path}: a client cannot reload its config; restart it", 2)


def wait_for_server_or_signal(host: str, port: int, waiting: NameWait,
                              listener: socket.socket) -> tuple[int, Any] | None:
    """``wait_for_server`` until SIGINT or SIGTERM (then None: nothing was made
    yet), answering ``vpncrypt show`` on ``listener`` (the control socket) from
    ``waiting`` meanwhile."""
    handlers = waiting.handlers()
    stop = StopFlag(lambda seconds: control.answer_pending(listener, handlers, seconds))
    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    notifier = sdnotify.Notifier.from_environment()
    try:
        found = wait_for_server(host, port, look_up=lambda h, p: look_up_in_thread(h, p, stop), sleep=stop.sleep,
                                stopped=lambda: stop.stopped, notifier=notifier,
                                failed=waiting.failed)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    # Read after the handlers are back: a signal that came until then is not lost.
    if stop.stopped:
        log.info("stopped while waiting for the server's name %r", host)
        notifier.stopping()
        found = None
    notifier.close()
    return found


def tunnel_spec(config: ClientConfig, server_address: Any = None) -> netconfig.TunnelSpec:
    """What the client's tunnel needs; ``server_address`` is the server's
    socket address once resolved (a dry run may not resolve). With ``dns``,
    how this system sets resolvers is probed (netconfig.dns.probe)."""
    return netconfig.TunnelSpec(
        config.interface, config.addresses, config.mtu, config.routes,
        server_address=ipaddress.ip_address(server_address[0]) if server_address else None,
        fwmark=config.fwmark,
        dns=dns_spec(config, dns.probe()) if config.dns else None,
        kill_switch=config.kill_switch,
    )


def dns_spec(config: ClientConfig, manager: str) -> dns.DnsSpec:
    """The client's resolvers, set through ``manager``; the file manager keeps
    the original resolv.conf as STATE_DIRECTORY/NAME.resolv.conf.json."""
    name = config.path.stem
    return dns.DnsSpec(config.dns, config.dns_search, name, manager, resolv_conf_backup(config))


def resolv_conf_backup(config: ClientConfig) -> Path:
    return config.state_directory / f"{config.path.stem}.resolv.conf.json"


def client_status(core: ClientCore) -> dict[str, Any]:
    """The core's status with the server's endpoint as 'address:port'."""
    status = core.status()
    status["server"]["endpoint"] = format_endpoint(status["server"]["endpoint"])
    return status


STATUS_FORMAT = 1  # as the server's (vpncrypt.server.STATUS_FORMAT)


class LiveClient:
    """The running client as the operator sees it: ``vpncrypt show`` and events
    about its server. A client cannot reload: its key, ID and addresses are
    all it is, so it says to restart it."""

    def __init__(self, config: ClientConfig, core: ClientCore, daemon: Daemon, *, name: str, interface: str,
                 clock=time.time) -> None:
        self.config, self.core, self.daemon = config, core, daemon
        self.name, self.interface, self.clock = name, interface, clock
        self.started = clock()
        # The server does not answer keepalives: an idle tunnel hears nothing, so silence says nothing.
        self.watch = EventWatch(format_endpoint, self.started, time_window=config.time_window,
                                silent_after=float("inf"), who=lambda _peer: "the server",
                                told_offset=lambda: core.clock_offset)
        self.path_logged: tuple[str, int] | None = None  # the path MTU search's last outcome logged
        self.unheard = UnheardServer(format_endpoint, self.started)
        daemon.tick = self.tick

    def handlers(self) -> dict[str, control.Handler]:
        return {"show": self.show, "reload": self.reload_request}

    async def show(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {"status": self.status()}

    async def reload_request(self, _request: dict[str, Any]) -> dict[str, Any]:
        refuse_reload(self.config)

    def status(self) -> dict[str, Any]:
        """The stable JSON of ``vpncrypt show --json`` for a client (README, "Operating"); no key material."""
        now = self.clock()
        peer = self.core.server
        return {
            "format": STATUS_FORMAT,
            "role": "client",
            "name": self.name,
            "config": str(self.config.path),
            "pid": os.getpid(),
            "interface": self.interface,
            "data_path": {"cipher": siv.in_use(), "offload": offload_in_use(self.config.offload)},
            "client_id": peer.client_id,
            "server_id": peer.server_id,
            "addresses": [str(address) for address in self.config.addresses],
            "started": self.started,
            "now": now,
            "server": {
                "endpoint": format_endpoint(peer.endpoint),
                "last_datagram": self.watch.heard_at(peer, now),
                "rx_bytes": peer.rx_bytes,
                "rx_packets": peer.rx_packets,
                "tx_bytes": peer.tx_bytes,
                "tx_packets": peer.tx_packets,
                "auth_failures": peer.auth_failures,
                "time_drops": peer.time_drops,
                "path_mtu": self.core.path.confirmed - OVERHEAD,
                "path_mtu_state": self.core.path.state,
            },
            "clock_offset": self.core.clock_offset,
            "drops": dict(self.core.drops),
            "tun_write_refused": self.daemon.tun_refused,
            "udp_send_errors": self.daemon.transport.send_errors,
        }

    def tick(self, now: float) -> None:
        lines = self.watch.tick(now, [self.core.server], send_errors=self.daemon.transport.send_errors,
                                tun_refused=self.daemon.tun_refused)
        lines += self.unheard.tick(now, self.core.server, self.core.path.state == ERROR)
        for level, line in lines:
            log.log(level, "%s", line)
        path = self.core.path
        outcome = (path.state, path.confirmed)
        if path.state in (SEARCH_COMPLETE, ERROR) and outcome != self.path_logged:
            # Once per outcome of the search (core/pmtu.py), not per probe.
            self.path_logged = outcome
            if path.state == ERROR:
                log.warning("path MTU: no probe of even %d bytes was answered by the server; keeping to an MTU of "
                            "%d and probing it again every %g s until it is heard", path.confirmed,
                            path.confirmed - OVERHEAD, PROBE_TIMER)
            else:
                log.info("path MTU: datagrams of %d bytes get through both ways; the tunnel's MTU is %d",
                         path.confirmed, path.confirmed - OVERHEAD)


def run_client(config: ClientConfig) -> int:
    """Run until SIGINT or SIGTERM, also while the server's name does not
    resolve yet (``wait_for_server``). Once the device and socket are made it
    runs as the config's ``user`` with only CAP_NET_ADMIN (privileges.py), for
    the route changes of a server that moves and of the teardown. Raises
    ControlError (an OSError) if a daemon of the same name runs,
    PrivilegeError if the drop fails."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop takes it over
    host, port = parse_endpoint(config.server)
    name = config.path.stem
    # Bound first: a second client of this name stops at once, and ``vpncrypt
    # show`` reaches one that waits for its server's name.
    control_server = control.ControlServer.bind(control.socket_path(name))
    held = contextlib.ExitStack()  # the state's lock, once taken
    try:
        return _run_client(config, host, port, control_server, held)
    finally:
        held.close()
        control_server.discard()


def _run_client(config: ClientConfig, host: str, port: int, control_server: control.ControlServer,
                held: contextlib.ExitStack) -> int:
    # The state first, as the server takes it: held while the server's name is
    # looked up too, so a second daemon with it is refused at once, not when
    # one of the two gets an answer.
    hand_over_state(config.account, config.state_directory, config.path.stem)
    store = RestartStore(config.state_directory, config.path.stem)
    store.prepare()
    hold_state(held, config.state_directory, config.path.stem)
    if is_name(host):
        found = wait_for_server_or_signal(host, port, NameWait(config), control_server.sock)
    else:
        found = resolve(host, port)
    if found is None:
        return 0
    family, endpoint = found
    spec = tunnel_spec(config, endpoint)
    netconfig.check_loops(spec)  # before any device, address or route is made
    # No warning of bounds ahead of this host's clock, as the server gives:
    # the client's are in the server's clock, which its own need not match
    # (a time answer sets the offset), so they say nothing about this host's.
    saved = store.load()
    core = ClientCore(
        config.client_id, config.key, server_id=config.server_id, server_endpoint=endpoint,
        routes=config.allowed_sources, now=time.time(), time_window=config.time_window,
        keepalive_interval=config.keepalive, mtu=config.mtu, underlay_version=6 if family == socket.AF_INET6 else 4,
        key_epoch=config.key_epoch, epoch_seconds=config.epoch_seconds,
        restart_bounds=saved if saved is not None else {}, restart_state_lost=saved is None,
    )
    if spec.dns is not None:
        log.info("DNS: %s through %s", ", ".join(map(str, config.dns)), dns.describe_manager(spec.dns.manager))
    elif resolv_conf.restore(resolv_conf_backup(config)):
        # A run with dns that was killed; the config has none now, so no plan would put it back.
        log.warning("put back %s, which a client with dns that was killed had left changed", resolv_conf.TARGET)
    # With the default route in the tunnel, the tunnel's own datagrams are marked to keep the main table's.
    # Where the platform marks packets (SO_MARK), a full tunnel's own datagrams
    # carry the mark that keeps them on the main table's routes; elsewhere the
    # plan keeps a host route to the server outside the tunnel instead.
    marked = spec.full_tunnel and socket_options().mark is not None
    open_transport = functools.partial(open_client_transport, family, fwmark=config.fwmark if marked else 0,
                                       offload=config.offload)
    name = config.path.stem
    drop = functools.partial(drop_privileges, config.account, config.state_directory, name)
    with tunnel_and_transport(spec, config.offload, open_transport, drop) as (tun, transport):
        daemon = Daemon(tun, transport, core, status=lambda: client_status(core), control=control_server,
                        restart_store=store,
                        key_store_path=key_store.store_path(config.state_directory, config.path.stem))
        control_server.handlers = LiveClient(config, core, daemon, name=name, interface=tun.name).handlers()
        log.info("client %r (ID %d) to server %s, interface %s; cipher: %s, offload: %s",
                 config.name, config.client_id, format_endpoint(endpoint), tun.name, siv.in_use(),
                 offload_in_use(config.offload))
        on_start = None
        if is_name(host) and config.resolve_interval:
            loop_route = functools.partial(netconfig.loop_route, spec, default_kept_out=marked)
            on_start = ServerLookups(core, host, port, family, config.resolve_interval, loop_route).start
        run_until_signalled(daemon, on_start=on_start)
    return 0
