"""Addresses, MTU and routes of the tunnel interface, apart from the device itself.

The OS-neutral half lives here: what the tunnel needs (``TunnelSpec``), the
plan of commands that gives it that (``NetworkPlan``, data, so ``--dry-run``
prints exactly what would run), and applying and undoing a plan through a
command runner that tests can replace. Each OS module only says which
commands: ``plan(spec) -> NetworkPlan``.
"""

from __future__ import annotations

import ipaddress
import logging
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


@dataclass(frozen=True)
class TunnelSpec:
    """What the tunnel needs from the OS, whatever the OS.

    ``addresses`` are this end's tunnel addresses with their prefix;
    ``routes`` more networks to send into the tunnel (a prefix length of 0 is
    a full tunnel); ``server_address`` the peer's underlay address, which a
    full tunnel must keep outside it (None on the server); ``fwmark`` the
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
    exits 0 when there is nothing to put back, so a failure is logged."""

    setup: list[list[str]]
    teardown: list[list[str]] = field(default_factory=list)
    restore: list[list[str]] = field(default_factory=list)


CommandRunner = Callable[[list[str]], subprocess.CompletedProcess]


def plan(spec: TunnelSpec, platform: str = sys.platform) -> NetworkPlan:
    """The commands that configure ``spec`` on ``platform``, its DNS last
    (once the interface is up and routed); raises NetconfigError."""
    if platform.startswith("linux"):
        from . import linux as system
    elif platform.startswith("freebsd"):
        from . import freebsd as system
    elif platform.startswith("darwin"):
        from . import darwin as system
    else:
        raise NetconfigError(f"no network configuration for {platform} yet (Linux, FreeBSD and macOS are supported)")
    network_plan = system.plan(spec)
    if spec.kill_switch:
        from . import killswitch

        setup, teardown = killswitch.commands(spec, platform)
        network_plan = NetworkPlan(setup + network_plan.setup, network_plan.teardown + teardown)
    if spec.dns is None:
        return network_plan
    from . import dns

    setup, restore = dns.commands(spec.dns, spec.interface, spec.full_tunnel, platform)
    return NetworkPlan(network_plan.setup + setup, network_plan.teardown, network_plan.restore + restore)


def describe(network_plan: NetworkPlan) -> str:
    """The plan as shell lines an operator could type, restore and teardown after '# at exit:'."""
    lines = [shlex.join(command) for command in network_plan.setup]
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
    """Clear what an earlier run that was killed left behind, then set up.
    Raises NetconfigError naming the first command that failed."""
    tear_down(network_plan, every_copy=True, run=run)
    for command in network_plan.setup:
        result = run(command)
        if result.returncode != 0:
            raise NetconfigError(f"{shlex.join(command)}: {result.stderr.strip() or 'failed'}")


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
