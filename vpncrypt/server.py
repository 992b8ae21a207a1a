"""vpncrypt server: one UDP transport, one TUN device, any number of clients.

``LiveServer`` is what an operator reaches while it runs: the status that
``vpncrypt show`` prints, the reload that ``vpncrypt reload`` and SIGHUP ask
for, and the events logged once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import shlex
import signal
import time
from typing import Any, Callable, Iterable

from . import control, key_store, netconfig
from .config import ConfigError, ServerConfig, load_server_config
from .core.epochs import same_chain
from .core.inner import Network
from .core import siv
from .core.filtered import FLOOD_REFUSALS
from .core.server import ServerCore
from .daemon import (
    Daemon, drop_privileges, hand_over_state, hold_state, run_until_signalled, tunnel_and_transport,
)
from .events import EventWatch, RateLimiter
from .restart_state import RestartStore
from .transport import format_endpoint
from .transport.udp import open_server_transport
from .tun import offload_in_use

log = logging.getLogger("vpncrypt.server")

STATUS_FORMAT = 1  # the version of the JSON ``vpncrypt show --json`` prints; README, "Operating"
# Settings a running server cannot take on: the socket, the device and its
# addresses are made once, and every client's datagrams name the server ID.
FIXED_SETTINGS = ("server_id", "port", "listen_address", "interface", "tunnel", "mtu", "offload")


def build_core(config: ServerConfig, now: float, restart_bounds: dict[int, int] | None = None) -> ServerCore:
    """The core for ``config`` at ``now`` (Unix seconds), with the restart
    bounds read back from disk (None: none were there)."""
    return ServerCore(
        config.server_id, config.clients, now, time_window=config.time_window,
        client_to_client=config.client_to_client, mtu=config.mtu, epoch_seconds=config.epoch_seconds,
        restart_bounds=restart_bounds if restart_bounds is not None else {},
        restart_state_lost=restart_bounds is None, tunnel=config.tunnel,
    )


def server_status(core: ServerCore) -> dict[str, Any]:
    """The core's status with endpoints as 'address:port'."""
    status = core.status()
    for client in status["clients"]:
        client["endpoint"] = format_endpoint(client["endpoint"])
    return status


def client_routes(config: ServerConfig) -> tuple[Network, ...]:
    """The networks of clients' ``addresses`` that the tunnel's own prefixes do
    not cover (a network behind a client, say): each needs a route to the
    tunnel device, or the server's kernel never hands their packets to us."""
    tunnel = [interface.network for interface in config.tunnel]
    routes = {
        network for client in config.clients for network in client.addresses
        if not any(network.version == t.version and network.subnet_of(t) for t in tunnel)
    }
    return tuple(sorted(routes, key=lambda n: (n.version, n)))


def tunnel_spec(config: ServerConfig) -> netconfig.TunnelSpec:
    """The server's tunnel: its addresses and MTU, and routes to the networks behind clients."""
    return netconfig.TunnelSpec(config.interface, config.tunnel, config.mtu, client_routes(config))


def fixed_setting_changed(old: ServerConfig, new: ServerConfig) -> str | None:
    """The error line for the first setting a reload cannot apply, or None."""
    for key in FIXED_SETTINGS:
        before, after = getattr(old, key), getattr(new, key)
        if before != after:
            shown = [", ".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in (before, after)]
            return (f"{new.path}: [server] {key} cannot change while the server runs (it runs with {shown[0]},"
                    f" the file says {shown[1]}); restart the server for that, or undo the change")
    return None


def describe_changes(old: ServerConfig, new: ServerConfig) -> str:
    """What a reload changes, in a few words: clients added, removed, re-keyed ..."""
    before = {c.client_id: c for c in old.clients}
    after = {c.client_id: c for c in new.clients}
    parts = []
    added = [after[i].name for i in after if i not in before]
    removed = [before[i].name for i in before if i not in after]
    rekeyed = [after[i].name for i in after if i in before and not same_chain(
        after[i].key, after[i].key_epoch, before[i].key, before[i].key_epoch)]
    moved = [after[i].name for i in after if i in before and after[i].addresses != before[i].addresses]
    renamed = [f"{before[i].name!r} to {after[i].name!r}" for i in after
               if i in before and after[i].name != before[i].name]
    for verb, names in (("added", added), ("removed", removed), ("re-keyed", rekeyed), ("re-addressed", moved)):
        if names:
            parts.append(f"{verb} {', '.join(map(repr, names))}")
    if renamed:
        parts.append(f"renamed {', '.join(renamed)}")
    for key in ("time_window", "client_to_client", "endpoint"):
        if getattr(old, key) != getattr(new, key):
            parts.append(f"{key} now {getattr(new, key)!r}")
    count = f"{len(new.clients)} client{'' if len(new.clients) == 1 else 's'}"
    return f"{count}; " + ("; ".join(parts) if parts else "nothing changed")


def route_over_an_endpoint(config: ServerConfig, networks: Iterable[Network], peers: Iterable[Any]) -> str | None:
    """The line refusing new routes ``networks`` (to networks behind clients)
    if one covers the endpoint of a connected peer: the server's datagrams to
    that client would go into the tunnel (issue 13). None if none does. A
    client that moves there later is not caught here."""
    addresses = []
    for peer in peers:
        if peer.endpoint is not None:
            # (address, port, ...), or that and the local address it was sent to (transport.format_endpoint).
            remote = peer.endpoint[0] if isinstance(peer.endpoint[0], tuple) else peer.endpoint
            address = ipaddress.ip_address(remote[0])
            addresses.append((getattr(address, "ipv4_mapped", None) or address, peer))
    for network in sorted(networks, key=lambda n: (n.version, n)):
        for address, peer in addresses:
            if address.version == network.version and address in network:
                return (f"{config.path}: route {network} (behind a client) covers the endpoint"
                        f" {format_endpoint(peer.endpoint)} of client {peer.name!r}: the server's datagrams to it"
                        f" would loop into the tunnel; leave that address out of the client's network")
    return None


class LiveServer:
    """The running server as the operator sees it: status, reload, events.

    ``name`` is the config's stem (the control socket's name); ``interface``
    the device's name as opened; ``routes`` the routes to networks behind
    clients that this process made (a reload adds and removes only those);
    ``run`` runs one command (``netconfig.run_command``; a fake in tests)."""

    def __init__(
        self, config: ServerConfig, core: ServerCore, daemon: Daemon, *, name: str, interface: str,
        run: Callable[[list[str]], Any] = netconfig.run_command, clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.core = core
        self.daemon = daemon
        self.name = name
        self.interface = interface
        self.run = run
        self.clock = clock
        self.started = clock()
        self.reloaded: float | None = None
        self.routes: set[Network] = set(client_routes(config))
        self.watch = EventWatch(format_endpoint, self.started, time_window=config.time_window)
        self._lock = asyncio.Lock()
        self._filter_seen: dict[int, float] = {}  # client ID -> the end of the hold last reported
        self._filter_lines = RateLimiter()
        daemon.reload = self.reload
        daemon.tick = self.tick

    # --- what the control socket serves -------------------------------------------------

    def handlers(self) -> dict[str, control.Handler]:
        return {"show": self.show, "reload": self.reload_request}

    async def show(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {"status": self.status()}

    async def reload_request(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {"message": await self.reload()}

    def status(self) -> dict[str, Any]:
        """The stable JSON of ``vpncrypt show --json`` (documented in the README); no key material."""
        now = self.clock()
        addresses = {entry.client_id: entry.addresses for entry in self.config.clients}
        clients = []
        totals = dict.fromkeys(("rx_bytes", "rx_packets", "tx_bytes", "tx_packets"), 0)
        for peer in self.core.peers.values():
            entry = {
                "name": peer.name,
                "client_id": peer.client_id,
                "addresses": [str(network) for network in addresses.get(peer.client_id, ())],
                "endpoint": format_endpoint(peer.endpoint),
                "last_datagram": self.watch.heard_at(peer, now),
                **peer.counters(),
                "path_mtu": self.core.path_mtu.get(peer, self.core.mtu),
            }
            for key in totals:
                totals[key] += entry[key]
            clients.append(entry)
        return {
            "format": STATUS_FORMAT,
            "role": "server",
            "name": self.name,
            "config": str(self.config.path),
            "pid": os.getpid(),
            "interface": self.interface,
            "data_path": {"cipher": siv.in_use(), "offload": offload_in_use(self.config.offload)},
            "server_id": self.core.server_id,
            "listen_address": self.config.listen_address,
            "port": self.config.port,
            "started": self.started,
            "reloaded": self.reloaded,
            "now": now,
            "clients": sorted(clients, key=lambda c: c["client_id"]),
            "totals": totals,
            "drops": dict(self.core.drops),
            "icmp_sent": self.core.unreachable.sent,
            "tun_write_refused": self.daemon.tun_refused,
            "udp_send_errors": self.daemon.transport.send_errors,
            "kernel_filter": self.filter_status(),
        }

    def filter_status(self) -> dict[str, Any]:
        """The client IDs flooded with forgeries whose datagrams are refused
        unread (core/filtered.py); ``in_kernel`` false where the platform has
        no socket filter, so the limiter refuses them in user space."""
        return {**self.core.filter_status(), "in_kernel": self.daemon.kernel_filter}

    # --- reload -------------------------------------------------------------------------

    async def reload(self) -> str:
        """Read the config again and apply it, or change nothing.

        Returns what changed; raises control.RequestError with the one line a
        start would print for a broken config (status 2), or the failing
        command's (status 1). Either way the outcome is logged."""
        async with self._lock:
            path = self.config.path
            try:
                message = await self._reload()
            except control.RequestError as error:
                log.error("reload refused, still running on the config as it was: %s", error)
                raise
            log.info("reloaded %s: %s", path, message)
            return message

    async def _reload(self) -> str:
        loop = asyncio.get_running_loop()
        old = self.config
        try:
            # In a thread: a large file takes milliseconds to check, the data path none.
            new = await loop.run_in_executor(None, load_server_config, old.path)
        except ConfigError as error:
            raise control.RequestError(str(error), 2) from None
        refused = fixed_setting_changed(old, new)
        if refused:
            raise control.RequestError(refused, 2)
        wanted = set(client_routes(new))
        looping = route_over_an_endpoint(new, wanted - self.routes, self.core.peers.values())
        if looping:
            raise control.RequestError(looping, 2)
        added: list[Network] = []
        try:
            for network in sorted(wanted - self.routes, key=lambda n: (n.version, n)):
                await self._run(netconfig.route_command("add", network, self.interface))
                added.append(network)
        except control.RequestError:
            for network in added:
                await self._run(netconfig.route_command("delete", network, self.interface), check=False)
            raise
        try:
            self.core.update_clients(new.clients, self.clock())
        except ValueError as error:  # the config check finds these first
            raise control.RequestError(f"{new.path}: {error}", 2) from None
        self.core.time_window = new.time_window
        self.core.client_to_client = new.client_to_client
        self.watch.time_window = new.time_window
        self.routes.update(added)
        for network in sorted(self.routes - wanted, key=lambda n: (n.version, n)):
            # A route that will not go only sends packets to a client that is
            # gone, which counts them as no_route: warn, and forget it.
            await self._run(netconfig.route_command("delete", network, self.interface), check=False)
            self.routes.discard(network)
        self.config = new
        self.reloaded = self.clock()
        return describe_changes(old, new)

    async def _run(self, command: list[str], check: bool = True) -> None:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, self.run, command)
        except netconfig.NetconfigError as error:
            failure = str(error)
        else:
            if result.returncode == 0:
                return
            failure = f"{shlex.join(command)}: {result.stderr.strip() or 'failed'}"
        if check:
            raise control.RequestError(failure, 1)
        log.warning("%s", failure)

    # --- events -------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        lines = self.watch.tick(now, self.core.peers.values(), send_errors=self.daemon.transport.send_errors,
                                tun_refused=self.daemon.tun_refused)
        lines += self.filter_lines(now)
        for level, line in lines:
            log.log(level, "%s", line)

    def filter_lines(self, now: float) -> list[tuple[int, str]]:
        """A line for each client ID that entered the flood filter since the
        last tick, at most one per ID a RATE_INTERVAL (the IDs come from the
        config, so an attacker cannot make more lines than there are clients)."""
        lines = []
        holds = self.core.filtered.holds
        for client_id in self.core.filtered.client_ids():
            hold, until = holds[client_id]
            if self._filter_seen.get(client_id) == until:
                continue
            self._filter_seen[client_id] = until
            if not self._filter_lines.allow(client_id, now):
                continue
            peer = self.core.peers.get(client_id)
            name = f"client {peer.name!r} (ID {client_id})" if peer is not None else f"client ID {client_id}"
            failures = peer.auth_failures if peer is not None else 0
            where = "in the kernel" if self.daemon.kernel_filter else "unopened (no socket filter here)"
            more = self._filter_lines.take_held(client_id)
            again = f" (and {more} more time{'' if more == 1 else 's'} since the last such line)" if more else ""
            lines.append((logging.WARNING,
                          f"{name}: a flood of forgeries names it (over {FLOOD_REFUSALS} a second refused unopened;"
                          f" {failures} failed authentication since it was configured): all its datagrams are"
                          f" refused {where} for {hold:g} s{again}"))
        for client_id in [i for i in self._filter_seen if i not in holds]:
            del self._filter_seen[client_id]
        return lines


def unclaimed_key_lines(config: ServerConfig, table: key_store.KeyTable) -> list[str]:
    """A line for each key in the server's key store ``table`` whose client ID
    no ``[[client]]`` of ``config`` has (its table deleted by hand, not with
    keygen remove): the ID and the name recorded for it, never the key."""
    configured = {client.client_id for client in config.clients}
    store = key_store.store_path(config.state_directory, config.path.stem)
    lines = []
    for client_id in sorted(set(table.keys) - configured):
        name = table.names.get(client_id)
        if name is not None:
            lines.append(f"{store}: holds a key for client ID {client_id} ({name!r}), which no [[client]] in"
                         f" {config.path} has (deleted by hand?): it is used for no one, and a [[client]] with that"
                         f" ID is refused unless it is named {name!r}; erase it with: vpncrypt-keygen remove"
                         f" --server-config {config.path} --name {name}")
        else:
            lines.append(f"{store}: holds a key for client ID {client_id}, which no [[client]] in {config.path}"
                         f" has (deleted by hand?), with no name recorded (the store is older than names): a"
                         f" [[client]] given ID {client_id} by hand would take this key; add clients with"
                         f" vpncrypt-keygen client, or give one added by hand a new key with vpncrypt-keygen rotate")
    return lines


def check_key_owners(config: ServerConfig) -> None:
    """At start: record in the key store whose key each is, where a store
    from before names were kept has none (key_store.record_names), saying so
    once (nothing can tell whether a hand edit gave one client another's ID
    before), and log a warning for each key no configured client has
    (unclaimed_key_lines).
    A store that cannot be written is logged, not fatal: the keys are the
    ones just loaded, and the next keygen run records the names."""
    store = key_store.store_path(config.state_directory, config.path.stem)
    owners = () if config.account is None else (config.account.uid,)
    try:
        table, named = key_store.record_names(store, {client.client_id: client.name for client in config.clients},
                                              owners)
    except key_store.KeyStoreError as error:
        log.warning("could not record the clients' names in the key store: %s", error)
        return
    except OSError as error:
        log.warning("could not record the clients' names in the key store: %s: %s", store, error.strerror)
        return
    if named:
        log.warning("%s: recorded whose key each of %d client IDs holds (the store is older than names): as %s names"
                    " them now. If a [[client]] was put in place of another by hand with its ID, it holds the other's"
                    " key: give it its own with vpncrypt-keygen rotate", store, len(named), config.path)
    for line in unclaimed_key_lines(config, table):
        log.warning("%s", line)


def control_name(config: ServerConfig) -> str:
    """The daemon's name for the control socket and ``vpncrypt show NAME``: the config's stem."""
    return config.path.stem


def run_server(config: ServerConfig) -> int:
    """Serve until SIGINT or SIGTERM; the TUN device goes away with the process's hold on it.
    Once the device and socket are made it runs as the config's ``user`` with
    only CAP_NET_ADMIN (privileges.py), which the route changes of a reload and
    of the teardown need. Raises ControlError (an OSError) if another daemon of
    the same name runs, PrivilegeError if the drop fails."""
    # A SIGHUP before the loop takes it over must not end the server.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    name = control_name(config)
    # Before the device: a second server from the same config stops here.
    control_server = control.ControlServer.bind(control.socket_path(name))
    held = contextlib.ExitStack()
    try:
        hand_over_state(config.account, config.state_directory, config.path.stem)
        store = RestartStore(config.state_directory, config.path.stem)
        store.prepare()
        hold_state(held, config.state_directory, config.path.stem)
        check_key_owners(config)
        saved = store.load()
        store.warn_of_bounds_ahead(saved, time.time(), config.time_window,
                                   {client.client_id: f"client {client.name!r}" for client in config.clients})
        core = build_core(config, time.time(), saved)
        listen = functools.partial(open_server_transport, config.listen_address, config.port,
                                   offload=config.offload)
        drop = functools.partial(drop_privileges, config.account, config.state_directory, config.path.stem)
        with tunnel_and_transport(tunnel_spec(config), config.offload, listen, drop) as (tun, transport):
            daemon = Daemon(tun, transport, core, status=lambda: server_status(core), control=control_server,
                            restart_store=store,
                            key_store_path=key_store.store_path(config.state_directory, config.path.stem))
            live = LiveServer(config, core, daemon, name=name, interface=tun.name)
            control_server.handlers = live.handlers()
            log.info(
                "server %d listening on UDP port %d, interface %s, %d clients; control socket %s; cipher: %s,"
                " offload: %s", config.server_id, config.port, tun.name, len(config.clients), control_server.path,
                siv.in_use(), offload_in_use(config.offload),
            )
            run_until_signalled(daemon)
    finally:
        held.close()
        control_server.discard()
    return 0
