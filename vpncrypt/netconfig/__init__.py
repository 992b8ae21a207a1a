"""Addresses, MTU and routes of the tunnel interface, apart from the device itself.

The OS-neutral half lives here: what the tunnel needs (``TunnelSpec``), the
plan of commands that gives it that (``NetworkPlan``, data, so ``--dry-run``
prints exactly what would run), and applying and undoing a plan through a
command runner that tests can replace. Each OS module only says which
commands: ``plan(spec) -> NetworkPlan``.

Two rules hold on every OS. A route that carries the daemon's own datagrams
into the tunnel (one covering the server's underlay address) is refused
before any plan is made (``check_loops``), since they would go round the
tunnel device until their size ran out. And a plan adds, never replaces: a
route or address that is already there belongs to someone else, so setup
stops with ``RoutingConflict`` naming it, and teardown removes only what
vpncrypt made.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .dns import DnsSpec

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_LEFTOVERS = 16  # copies of a rule that a series of killed runs may have left, removed at start
COMMAND_TIMEOUT = 30  # seconds one configuration command may take

log = logging.getLogger("vpncrypt.netconfig")


class NetconfigError(Exception):
    """A plan cannot be made, or a command failed; the message carries the command and its error."""


class RoutingConflict(NetconfigError):
    """The tunnel would loop its own datagrams, or take over a route, address
    or routing table that vpncrypt did not make: a problem for the operator to
    fix, as a config error is (exit status 2), found before setup changes anything."""


@dataclass(frozen=True)
class TunnelSpec:
    """What the tunnel needs from the OS, whatever the OS.

    ``addresses`` are this end's tunnel addresses with their prefix;
    ``routes`` more networks to send into the tunnel (a prefix length of 0 is
    a full tunnel); ``server_address`` the peer's underlay address, which
    no route but a default one may cover and a full tunnel must keep outside
    it (None on the server, whose peers' addresses come and go); ``fwmark`` the
    mark a platform with policy routing puts on the tunnel's own datagrams
    (0 for none); ``dns`` the resolvers to set while the tunnel is up
    (``netconfig.dns``; None leaves DNS alone); ``kill_switch`` lets nothing
    but the tunnel's own datagrams leave outside it (``netconfig.killswitch``).
    """

    interface: str
    addresses: tuple[Interface, ...]
    mtu: int
    routes: tuple[Network, ...] = ()
    server_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    fwmark: int = 0
    dns: DnsSpec | None = None
    kill_switch: bool = False

    @property
    def full_tunnel(self) -> bool:
        """True if a default route (0.0.0.0/0 or ::/0) goes into the tunnel."""
        return any(route.prefixlen == 0 for route in self.routes)


@dataclass(frozen=True)
class NetworkPlan:
    """``setup`` runs in order, each command must succeed. ``teardown`` runs at
    exit, and also before ``setup`` to clear what a killed run left behind; its
    commands may fail (nothing to undo). ``restore`` runs first, at the same
    times, each command once: it puts back what setup replaced (DNS) and
    exits 0 when there is nothing to put back, so a failure is logged.
    ``checks`` run before all of them (``Check``). ``leftovers`` run only
    before ``setup``, like the teardown: what a killed run under another
    config (a full tunnel, a kill switch since taken out) may have left;
    not printed by ``describe``, since they undo nothing of this plan's."""

    setup: list[list[str]]
    teardown: list[list[str]] = field(default_factory=list)
    restore: list[list[str]] = field(default_factory=list)
    checks: list["Check"] = field(default_factory=list)
    leftovers: list[list[str]] = field(default_factory=list)


@dataclass(frozen=True)
class Check:
    """A look at the system before anything changes: ``command`` runs, and
    ``refuse`` turns its standard output into the line that stops the start,
    or None. Not run by ``--dry-run``, which only prints the command."""

    command: list[str]
    refuse: Callable[[str], str | None]


CommandRunner = Callable[[list[str]], subprocess.CompletedProcess]


def loop_route(spec: TunnelSpec, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
               default_kept_out: bool = True) -> Network | None:
    """The first network the plan of ``spec`` routes into the tunnel that
    covers the underlay ``address`` (so that datagrams to it would loop), or
    None. A default route is kept out for ``spec.server_address`` on every OS
    (fwmark or host route), and for any address with ``default_kept_out``
    (Linux's marked socket); the BSDs' host route covers only the start's."""
    networks = [a.network for a in spec.addresses if a.network.prefixlen < a.max_prefixlen] + list(spec.routes)
    for network in networks:
        if network.version != address.version or address not in network:
            continue
        if network.prefixlen or not (default_kept_out or address == spec.server_address):
            return network
    return None


def loop_line(network: Network, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
              full_tunnel: bool = False) -> str:
    """What the operator reads about a route ``network`` that covers the
    server's ``address``; ``full_tunnel``: the default route of its family is
    in the tunnel already."""
    default = "0.0.0.0/0" if address.version == 4 else "::/0"
    if full_tunnel:
        advice = f"leave it out: {default} already takes it into the tunnel, and keeps the server out"
    else:
        advice = f"route only the networks beside the server, or everything ({default}, which keeps the server out)"
    return f"route {network} covers the server's address {address}: the tunnel's own datagrams would loop; {advice}"


def check_loops(spec: TunnelSpec) -> None:
    """Raise RoutingConflict if a route of ``spec`` would carry the datagrams
    to ``spec.server_address`` into the tunnel."""
    if spec.server_address is not None:
        address = spec.server_address
        network = loop_route(spec, address)
        if network is not None:
            default = any(route.prefixlen == 0 and route.version == address.version for route in spec.routes)
            raise RoutingConflict(loop_line(network, address, default))


def _system(platform: str):
    """The module that says which commands configure ``platform``."""
    if platform.startswith("linux"):
        from . import linux as system
    elif platform.startswith("freebsd"):
        from . import freebsd as system
    elif platform.startswith("darwin"):
        from . import darwin as system
    else:
        raise NetconfigError(f"no network configuration for {platform} yet (Linux, FreeBSD and macOS are supported)")
    return system


def route_command(action: str, network: Network, interface: str, platform: str = sys.platform) -> list[str]:
    """The command that adds (``action`` "add") or deletes ("delete") a route
    to ``network`` through ``interface`` while the tunnel runs, as the plan's
    own routes are made: a server's reload of the networks behind clients."""
    return _system(platform).route_command(action, network, interface)


def plan(spec: TunnelSpec, platform: str = sys.platform) -> NetworkPlan:
    """The commands that configure ``spec`` on ``platform``, its DNS last
    (once the interface is up and routed); raises RoutingConflict for a
    route that would loop (``check_loops``), NetconfigError for what the
    platform cannot do."""
    check_loops(spec)
    network_plan = _system(platform).plan(spec)
    from . import killswitch

    if spec.kill_switch:
        setup, teardown = killswitch.commands(spec, platform)
        network_plan = dataclasses.replace(network_plan, setup=setup + network_plan.setup,
                                           teardown=network_plan.teardown + teardown)
    else:  # what a killed client with a kill switch left would keep the host cut off
        network_plan = dataclasses.replace(
            network_plan, leftovers=network_plan.leftovers + killswitch.leftovers(spec, platform))
    if spec.dns is None:
        return network_plan
    from . import dns

    setup, restore = dns.commands(spec.dns, spec.interface, spec.full_tunnel, platform)
    return dataclasses.replace(network_plan, setup=network_plan.setup + setup, restore=network_plan.restore + restore)


def describe(network_plan: NetworkPlan) -> str:
    """The plan as shell lines an operator could type, restore and teardown after '# at exit:'
    and the checks' commands first, as comments ('# checked first: ...')."""
    lines = [f"# checked first: {shlex.join(check.command)}" for check in network_plan.checks]
    lines += [shlex.join(command) for command in network_plan.setup]
    if network_plan.restore or network_plan.teardown:
        lines.append("# at exit:")
        lines += [shlex.join(command) for command in network_plan.restore + network_plan.teardown]
    return "\n".join(lines)


def run_command(command: list[str]) -> subprocess.CompletedProcess:
    """Run one command, capturing its output; raises NetconfigError if it cannot start or hangs."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except FileNotFoundError:
        raise NetconfigError(f"the '{command[0]}' command is not installed") from None
    except subprocess.TimeoutExpired:
        raise NetconfigError(f"{shlex.join(command)}: timed out") from None


def apply(network_plan: NetworkPlan, run: CommandRunner = run_command) -> None:
    """Run the checks, clear what an earlier run that was killed left behind,
    then set up. Raises RoutingConflict for a check that refuses or a setup
    command that found its route or address there already (EEXIST: someone
    else's, never replaced), NetconfigError naming any other command that failed."""
    for check in network_plan.checks:
        result = run(check.command)
        if result.returncode != 0:
            raise NetconfigError(f"{shlex.join(check.command)}: {result.stderr.strip() or 'failed'}")
        refused = check.refuse(result.stdout)
        if refused:
            raise RoutingConflict(refused)
    tear_down(network_plan, every_copy=True, run=run)
    for command in network_plan.leftovers:
        for _ in range(MAX_LEFTOVERS):
            try:
                if run(command).returncode != 0:
                    break
            except NetconfigError:  # its tool is not installed (no nft): it made nothing to clear
                break
    for command in network_plan.setup:
        result = run(command)
        if result.returncode != 0:
            error = f"{shlex.join(command)}: {result.stderr.strip() or 'failed'}"
            if os.strerror(errno.EEXIST) in result.stderr:
                raise RoutingConflict(f"{error} (vpncrypt replaces nothing it did not make:"
                                      " remove that route or address, or leave it out of the config)")
            raise NetconfigError(error)


def tear_down(network_plan: NetworkPlan, every_copy: bool = False, run: CommandRunner = run_command) -> None:
    """Run the plan's restore (each command once; a failure is logged as a
    warning, since what it should have put back is still changed), then its
    teardown, where a command that fails had nothing to undo; ``every_copy``
    repeats each teardown command until it fails, up to MAX_LEFTOVERS times."""
    for command in network_plan.restore:
        try:
            result = run(command)
        except NetconfigError as error:
            log.warning("%s", error)
            continue
        if result.returncode != 0:
            log.warning("%s: %s", shlex.join(command), result.stderr.strip() or "failed")
    for command in network_plan.teardown:
        for _ in range(MAX_LEFTOVERS if every_copy else 1):
            if run(command).returncode != 0:
                break
