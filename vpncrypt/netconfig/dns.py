"""The tunnel's DNS servers on the client: set at start, undone at exit.

A full tunnel that leaves the system's resolver in place sends every query
outside the tunnel, in clear (a resolver on the local network keeps its more
specific route). So the client hands its ``dns`` servers to whatever manages
the resolver, the way wg-quick does, as commands in the network plan (a dry
run prints them):

- **resolvectl** (systemd-resolved runs and /etc/resolv.conf points at its
  stub): ``resolvectl dns IF S...``, and for a full tunnel the routing domain
  ``~.`` so every query goes to this link's servers and no other
  (resolvectl(1), systemd.network(5) ``Domains=``); ``resolvectl revert IF``
  undoes it. resolved also forgets a link when it goes away, so a killed
  client leaves nothing.
- **openresolv** (``resolvconf --version`` says so, as wg-quick checks):
  ``resolvconf -m 0 [-x] -a tun.IF`` with resolv.conf(5) lines on stdin;
  ``-x`` (exclusive) for a full tunnel; ``resolvconf -f -d tun.IF`` undoes it
  (``-f``: no error when there is nothing to delete). The ``tun.`` prefix is
  wg-quick's: Debian's interface-order(5) puts ``tun*`` records first.
- **resolvconf** (Debian's): ``resolvconf -a tun.IF`` and ``-d tun.IF``. It
  has no exclusive mode: the tunnel's servers come first, but the others stay
  listed after them (README, "DNS").
- **file** (no resolver manager): /etc/resolv.conf is written by
  ``vpncrypt.netconfig.resolv_conf``, which keeps the original in the state
  directory and puts it back.

FreeBSD has openresolv in base (/sbin/resolvconf), keyed by the interface
name as wg-quick does there. macOS gets a dynamic-store key through scutil(8)
(``State:/Network/Service/vpncrypt-NAME/DNS``, as Tunnelblick and ZeroTier
do), removed at exit; the key is named after the config, not the utun
interface, whose number may change between runs.

The undo commands run at exit and again before each start
(``NetworkPlan.restore``, each once), which clears what a killed client
left. They are meant to exit 0 when there is nothing to undo (resolvectl
revert; openresolv with ``-f``; the file way); a failure is only logged, so
an undo that complains about nothing to undo (Debian's ``resolvconf -d`` was
not run here) costs a warning at start, nothing worse.
"""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import NetconfigError, run_command

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Command = list[str]

MANAGERS = ("resolvectl", "openresolv", "resolvconf", "file", "scutil")  # Linux's in the order probe() tries them
MAX_SERVERS = 3  # resolv.conf(5): MAXNS, the servers the C library reads
RESOLVED = Path("/run/systemd/resolve")  # systemd-resolved's runtime directory
RESOLV_CONF = Path("/etc/resolv.conf")
STUB = ("nameserver 127.0.0.53", "nameserver 127.0.0.54")  # resolved's stub listeners


@dataclass(frozen=True)
class DnsSpec:
    """The tunnel's resolvers: ``servers`` (addresses, at most MAX_SERVERS),
    ``search`` domains, ``name`` the config's name (it names the backup file
    and macOS's key), ``manager`` one of MANAGERS (from probe()),
    ``backup`` where the file manager keeps the original resolv.conf."""

    servers: tuple[Address, ...]
    search: tuple[str, ...]
    name: str
    manager: str
    backup: Path

    def resolv_conf_lines(self) -> list[str]:
        """The servers and search domains as resolv.conf(5) lines."""
        lines = [f"nameserver {server}" for server in self.servers]
        if self.search:
            lines.append("search " + " ".join(self.search))
        return lines


def probe(which: Callable[[str], str | None] = shutil.which, resolved: Path = RESOLVED,
          resolv_conf: Path = RESOLV_CONF, run: Callable[[Command], object] = run_command,
          platform: str = sys.platform) -> str:
    """Which of MANAGERS this system has. FreeBSD: openresolv (base); macOS:
    scutil. Linux: resolvectl if systemd-resolved runs (its runtime directory
    exists) and resolv.conf leads to it (a link into that directory, or its
    stub's address), else openresolv or Debian's resolvconf if installed,
    else the file itself."""
    if platform.startswith("freebsd"):
        return "openresolv"
    if platform.startswith("darwin"):
        return "scutil"
    if which("resolvectl") and resolved.is_dir() and _uses_resolved(resolv_conf, resolved):
        return "resolvectl"
    if which("resolvconf"):
        try:
            version = run(["resolvconf", "--version"]).stdout  # type: ignore[attr-defined]
        except NetconfigError:  # a resolvconf that cannot run says nothing about its kind
            version = ""
        return "openresolv" if version.startswith("openresolv") else "resolvconf"
    return "file"


def _uses_resolved(resolv_conf: Path, resolved: Path) -> bool:
    try:
        if resolv_conf.resolve().is_relative_to(resolved.resolve()):
            return True
        return any(line.strip() in STUB for line in resolv_conf.read_text().splitlines())
    except (OSError, UnicodeDecodeError):
        return False


def describe_manager(manager: str) -> str:
    """How the log names a manager: what it changes."""
    return {"resolvectl": "systemd-resolved (resolvectl)", "openresolv": "openresolv (resolvconf)",
            "resolvconf": "resolvconf", "file": str(RESOLV_CONF), "scutil": "scutil (dynamic store)"}[manager]


def commands(dns: DnsSpec, interface: str, full_tunnel: bool, platform: str) -> tuple[list[Command], list[Command]]:
    """(setup, restore) for ``dns`` on ``platform``: setup after the interface
    is up, restore at exit and before setup. The BSDs have one way each
    (``--dry-run --platform`` prints it whatever this system has); Linux
    uses ``dns.manager``."""
    if platform.startswith("freebsd"):
        return _openresolv(dns, interface, full_tunnel)
    if platform.startswith("darwin"):
        return _scutil(dns, full_tunnel)
    if dns.manager == "resolvectl":
        return _resolvectl(dns, interface, full_tunnel)
    if dns.manager == "openresolv":
        return _openresolv(dns, f"tun.{interface}", full_tunnel)
    if dns.manager == "resolvconf":
        return ([_stdin_to(dns.resolv_conf_lines(), ["resolvconf", "-a", f"tun.{interface}"])],
                [["resolvconf", "-d", f"tun.{interface}"]])
    module = [sys.executable, "-m", "vpncrypt.netconfig.resolv_conf"]
    return ([[*module, "set", str(dns.backup), *dns.resolv_conf_lines()]],
            [[*module, "restore", str(dns.backup)]])


def _resolvectl(dns: DnsSpec, interface: str, full_tunnel: bool) -> tuple[list[Command], list[Command]]:
    setup = [["resolvectl", "dns", interface, *map(str, dns.servers)]]
    domains = [*dns.search, *(["~."] if full_tunnel else [])]
    if domains:
        setup.append(["resolvectl", "domain", interface, *domains])
    return setup, [["resolvectl", "revert", interface]]


def _openresolv(dns: DnsSpec, record: str, full_tunnel: bool) -> tuple[list[Command], list[Command]]:
    options = ["-m", "0", *(["-x"] if full_tunnel else [])]  # metric 0: before any other record
    return ([_stdin_to(dns.resolv_conf_lines(), ["resolvconf", *options, "-a", record])],
            [["resolvconf", "-f", "-d", record]])


def _scutil(dns: DnsSpec, full_tunnel: bool) -> tuple[list[Command], list[Command]]:
    """scutil(8) reads its commands on stdin. SupplementalMatchDomains: the
    names these servers answer for; "" (every name) for a full tunnel."""
    key = f"State:/Network/Service/vpncrypt-{dns.name}/DNS"
    lines = ["d.init", "d.add ServerAddresses * " + " ".join(map(str, dns.servers))]
    if dns.search:
        lines.append("d.add SearchDomains * " + " ".join(dns.search))
    match = ['""'] if full_tunnel else list(dns.search)
    if match:
        lines.append("d.add SupplementalMatchDomains * " + " ".join(match))
    lines.append(f"set {key}")
    return [_stdin_to(lines, ["scutil"])], [_stdin_to([f"remove {key}"], ["scutil"])]


def _stdin_to(lines: list[str], command: Command) -> Command:
    """``command`` with ``lines`` on its stdin, as one argv (``sh -c``) a dry run prints."""
    return ["sh", "-c", f'printf "%s\\n" "$@" | {shlex.join(command)}', "sh", *lines]
