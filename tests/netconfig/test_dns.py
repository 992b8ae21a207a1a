"""DNS in the network plan: golden command lists per way and OS, each command
held to its man page's synopsis, the stdin lines run through a real sh into
fake resolvconf and scutil, the probe on made-up systems, and the restore
run once, before the teardown, at exit and before setup."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from vpncrypt.netconfig import NetworkPlan, TunnelSpec, apply, describe, plan, tear_down
from vpncrypt.netconfig.dns import MANAGERS, DnsSpec, probe

ADDRESSES = (ipaddress.ip_interface("203.0.113.2/24"), ipaddress.ip_interface("2001:db8:7::2/64"))
SERVERS = (ipaddress.ip_address("203.0.113.1"), ipaddress.ip_address("2001:db8:7::1"))
BACKUP = Path("/var/lib/vpncrypt/laptop.resolv.conf.json")
DNS = DnsSpec(SERVERS, ("example.internal",), "laptop", "file", BACKUP)
FULL = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
SPLIT = (ipaddress.ip_network("192.0.2.0/24"),)
LINES = ["nameserver 203.0.113.1", "nameserver 2001:db8:7::1", "search example.internal"]
MODULE = [sys.executable, "-m", "vpncrypt.netconfig.resolv_conf"]


def stdin_to(command: str, lines: list[str]) -> list[str]:
    return ["sh", "-c", f'printf "%s\\n" "$@" | {command}', "sh", *lines]


def dns_part(manager: str, routes=FULL, platform: str = "linux", dns: DnsSpec = DNS) -> NetworkPlan:
    """Only what DNS adds to the plan: the plan with DNS minus the plan without."""
    spec = TunnelSpec("vc0", ADDRESSES, 1420, routes, server_address=ipaddress.ip_address("198.51.100.1"),
                      fwmark=7)
    without = plan(spec, platform)
    with_dns = plan(replace(spec, dns=replace(dns, manager=manager)), platform)
    assert with_dns.setup[:len(without.setup)] == without.setup  # DNS comes last, once the tunnel is routed
    assert with_dns.teardown == without.teardown
    return NetworkPlan(with_dns.setup[len(without.setup):], [], with_dns.restore)


GOLDEN = {
    ("resolvectl", "full"): NetworkPlan([
        ["resolvectl", "dns", "vc0", "203.0.113.1", "2001:db8:7::1"],
        ["resolvectl", "domain", "vc0", "example.internal", "~."],
    ], [], [["resolvectl", "revert", "vc0"]]),
    ("resolvectl", "split"): NetworkPlan([
        ["resolvectl", "dns", "vc0", "203.0.113.1", "2001:db8:7::1"],
        ["resolvectl", "domain", "vc0", "example.internal"],
    ], [], [["resolvectl", "revert", "vc0"]]),
    ("openresolv", "full"): NetworkPlan([stdin_to("resolvconf -m 0 -x -a tun.vc0", LINES)], [],
                                        [["resolvconf", "-f", "-d", "tun.vc0"]]),
    ("openresolv", "split"): NetworkPlan([stdin_to("resolvconf -m 0 -a tun.vc0", LINES)], [],
                                         [["resolvconf", "-f", "-d", "tun.vc0"]]),
    ("resolvconf", "full"): NetworkPlan([stdin_to("resolvconf -a tun.vc0", LINES)], [],
                                        [["resolvconf", "-d", "tun.vc0"]]),
    ("file", "full"): NetworkPlan([[*MODULE, "set", str(BACKUP), *LINES]], [],
                                  [[*MODULE, "restore", str(BACKUP)]]),
}


@pytest.mark.parametrize("manager, kind", sorted(GOLDEN))
def test_linux_golden_commands(manager, kind):
    assert dns_part(manager, FULL if kind == "full" else SPLIT) == GOLDEN[manager, kind]


def test_resolvectl_without_search_domains_on_a_split_tunnel_sets_no_domain():
    dns = replace(DNS, search=())
    assert dns_part("resolvectl", SPLIT, dns=dns).setup == [["resolvectl", "dns", "vc0", "203.0.113.1", "2001:db8:7::1"]]


@pytest.mark.parametrize("manager", MANAGERS)
def test_freebsd_uses_openresolv_in_base_whatever_this_system_has(manager):
    assert dns_part(manager, FULL, "freebsd14") == NetworkPlan(
        [stdin_to("resolvconf -m 0 -x -a vc0", LINES)], [], [["resolvconf", "-f", "-d", "vc0"]])


def test_macos_sets_a_dynamic_store_key_named_after_the_config():
    key = "State:/Network/Service/vpncrypt-laptop/DNS"
    assert dns_part("scutil", FULL, "darwin") == NetworkPlan([stdin_to("scutil", [
        "d.init", "d.add ServerAddresses * 203.0.113.1 2001:db8:7::1", "d.add SearchDomains * example.internal",
        'd.add SupplementalMatchDomains * ""', f"set {key}"])], [], [stdin_to("scutil", [f"remove {key}"])])
    split = dns_part("scutil", SPLIT, "darwin").setup[0]
    assert "d.add SupplementalMatchDomains * example.internal" in split  # only those names go to the tunnel


def test_without_dns_the_plan_has_nothing_to_restore():
    spec = TunnelSpec("vc0", ADDRESSES, 1420, FULL, fwmark=7)
    assert plan(spec, "linux").restore == []


def test_describe_prints_the_restore_first_at_exit():
    spec = TunnelSpec("vc0", ADDRESSES, 1420, FULL, fwmark=7, dns=replace(DNS, manager="resolvectl"))
    text = describe(plan(spec, "linux")).splitlines()
    at_exit = text.index("# at exit:")
    assert text[at_exit - 1] == "resolvectl domain vc0 example.internal '~.'"
    assert text[at_exit + 1] == "resolvectl revert vc0"
    assert text[at_exit + 2].startswith("ip -4 rule delete")


# --- each command against its man page ------------------------------------------------

DOMAIN_OR_ROUTE = r"~?(\.|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?)"


def check_resolvectl(argv: list[str]) -> None:
    """resolvectl(1): dns [LINK [SERVER...]], domain [LINK [DOMAIN...]], revert LINK."""
    command, link, values = argv[1], argv[2], argv[3:]
    assert re.fullmatch(r"[a-z]+[0-9]*", link), argv
    if command == "dns":
        assert values and all(ipaddress.ip_address(v) for v in values), argv
    elif command == "domain":
        assert values and all(re.fullmatch(DOMAIN_OR_ROUTE, v) for v in values), argv
    else:
        assert command == "revert" and not values, argv


def check_resolvconf(argv: list[str], openresolv: bool) -> None:
    """openresolv's resolvconf(8) (FreeBSD's too): [-m metric] [-p] [-x] -a
    interface[.protocol] <file, or [-f] -d interface[.protocol]. Debian's:
    -a IFACE.PROG, -d IFACE.PROG and nothing else."""
    rest = argv[1:]
    if openresolv:
        if "-a" in rest:
            options, record = rest[:rest.index("-a")], rest[rest.index("-a") + 1:]
            assert options[:2] == ["-m", "0"] and options[2:] in ([], ["-x"]), argv
        else:
            assert rest[:2] == ["-f", "-d"], argv
            record = rest[2:]
    else:
        assert rest[0] in ("-a", "-d"), argv
        record = rest[1:]
    assert len(record) == 1 and "/" not in record[0], argv


def check_stdin_lines(tool: str, lines: list[str]) -> None:
    """resolv.conf(5) lines for resolvconf; scutil(8)'s d.init, d.add KEY * VALUES, set KEY, remove KEY."""
    for line in lines:
        word, *values = line.split()
        if tool == "resolvconf":
            assert word in ("nameserver", "search") and values, line
            if word == "nameserver":
                assert len(values) == 1 and ipaddress.ip_address(values[0]), line
        else:
            assert word in ("d.init", "d.add", "set", "remove"), line
            if word == "d.add":
                assert values[0] in ("ServerAddresses", "SearchDomains", "SupplementalMatchDomains") \
                    and values[1] == "*" and values[2:], line
            if word in ("set", "remove"):
                assert len(values) == 1 and values[0].startswith("State:/Network/Service/"), line


def check(argv: list[str], manager: str, platform: str) -> None:
    openresolv = platform != "linux" or manager == "openresolv"
    if argv[0] == "sh":
        assert argv[1] == "-c" and argv[3] == "sh", argv
        prefix = 'printf "%s\\n" "$@" | '
        assert argv[2].startswith(prefix), argv
        inner = shlex.split(argv[2][len(prefix):])
        check_stdin_lines(inner[0], argv[4:])
        argv = inner
        if argv == ["scutil"]:
            return
    if argv[0] == "resolvectl":
        check_resolvectl(argv)
    elif argv[0] == "resolvconf":
        check_resolvconf(argv, openresolv)
    else:
        assert argv[:3] == MODULE and argv[3] in ("set", "restore") and Path(argv[4]).is_absolute(), argv
        check_stdin_lines("resolvconf", argv[5:])


@pytest.mark.parametrize("platform", ["linux", "freebsd", "darwin"])
@pytest.mark.parametrize("manager", MANAGERS)
@pytest.mark.parametrize("routes", [FULL, SPLIT], ids=["full", "split"])
def test_every_command_fits_its_synopsis(platform, manager, routes):
    part = dns_part(manager, routes, platform)
    assert part.setup and part.restore
    for argv in part.setup + part.restore:
        check(argv, manager, platform)


def test_the_synopsis_check_catches_a_typo():
    with pytest.raises(AssertionError):
        check(["resolvconf", "-m", "0", "-X", "-a", "tun.vc0"], "openresolv", "linux")
    with pytest.raises(AssertionError):
        check(stdin_to("resolvconf -a tun.vc0", ["nameserver 203.0.113.1", "search"]), "resolvconf", "linux")
    with pytest.raises(AssertionError):
        check(["resolvectl", "domain", "vc0", "~ ."], "resolvectl", "linux")


@pytest.mark.parametrize("platform, manager, tool", [
    ("linux", "openresolv", "resolvconf"), ("linux", "resolvconf", "resolvconf"),
    ("freebsd", "file", "resolvconf"), ("darwin", "scutil", "scutil"),
])
def test_the_lines_reach_the_tools_stdin_through_a_real_sh(tmp_path, platform, manager, tool):
    fake = tmp_path / tool
    log = tmp_path / "log"
    fake.write_text(f'#!/bin/sh\necho "$0 $*" >> {log}\ncat >> {log}\n')
    fake.chmod(0o755)
    part = dns_part(manager, FULL, platform)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    subprocess.run(part.setup[0], check=True, env=env, timeout=10)
    arguments = shlex.split(part.setup[0][2].split("| ", 1)[1])[1:]
    written = log.read_text().splitlines()
    assert written[0] == f"{fake} {' '.join(arguments)}"
    assert written[1:] == part.setup[0][4:]
    assert written[1] in ("nameserver 203.0.113.1", "d.init")


# --- the probe -----------------------------------------------------------------------


class Done:
    def __init__(self, stdout: str) -> None:
        self.stdout = stdout


def probe_on(tmp_path, tools=(), resolved=False, resolv_conf="link", version=""):
    tmp_path.mkdir()
    resolved_dir = tmp_path / "run" / "systemd" / "resolve"
    if resolved:
        resolved_dir.mkdir(parents=True)
        (resolved_dir / "stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
    etc = tmp_path / "resolv.conf"
    if resolv_conf == "link":
        etc.symlink_to(resolved_dir / "stub-resolv.conf")
    else:
        etc.write_text(resolv_conf)
    return probe(which=lambda name: f"/usr/bin/{name}" if name in tools else None, resolved=resolved_dir,
                 resolv_conf=etc, run=lambda command: Done(version), platform="linux")


def test_probe_takes_resolvectl_only_when_resolved_runs_and_resolv_conf_leads_to_it(tmp_path):
    assert probe_on(tmp_path / "1", ("resolvectl", "resolvconf"), resolved=True) == "resolvectl"
    assert probe_on(tmp_path / "2", ("resolvectl",), resolved=True,
                    resolv_conf="# managed\nnameserver 127.0.0.53\noptions edns0\n") == "resolvectl"
    # resolved runs but the C library reads another server: resolved's settings would not be used.
    assert probe_on(tmp_path / "3", ("resolvectl",), resolved=True, resolv_conf="nameserver 192.0.2.53\n") == "file"
    # resolvectl installed, resolved not running.
    assert probe_on(tmp_path / "4", ("resolvectl",), resolv_conf="nameserver 192.0.2.53\n") == "file"


def test_probe_tells_openresolv_from_debians_resolvconf(tmp_path):
    static = "nameserver 192.0.2.53\n"
    assert probe_on(tmp_path / "1", ("resolvconf",), resolv_conf=static, version="openresolv 3.12.0\n") == "openresolv"
    assert probe_on(tmp_path / "2", ("resolvconf",), resolv_conf=static, version="") == "resolvconf"
    assert probe_on(tmp_path / "3", (), resolv_conf=static) == "file"


def test_probe_on_the_bsds_needs_nothing_found():
    assert probe(which=lambda name: None, platform="freebsd14") == "openresolv"
    assert probe(which=lambda name: None, platform="darwin") == "scutil"


# --- restore: once, first, at exit and before setup ----------------------------------


class Runner:
    def __init__(self, failing=()) -> None:
        self.ran: list[list[str]] = []
        self.failing = [list(c) for c in failing]

    def __call__(self, command):
        self.ran.append(command)
        code = 1 if command in self.failing or command[:3] == ["ip", "rule", "delete"] else 0
        return subprocess.CompletedProcess(command, code, "", "no permission" if code else "")


RESTORE = [["resolvectl", "revert", "vc0"]]
SETUP = [["ip", "link", "set", "up"], ["resolvectl", "dns", "vc0", "203.0.113.1"]]
TEARDOWN = [["ip", "rule", "delete", "1"]]


def test_apply_restores_once_before_the_teardown_and_the_setup():
    runner = Runner()
    apply(NetworkPlan(SETUP, TEARDOWN, RESTORE), run=runner)
    # revert succeeds every time (nothing to undo is not an error): it still runs once, not MAX_LEFTOVERS times.
    assert runner.ran == RESTORE + TEARDOWN + SETUP


def test_a_restore_that_fails_is_logged_and_the_rest_still_runs(caplog):
    runner = Runner(failing=RESTORE)
    with caplog.at_level(logging.WARNING, logger="vpncrypt.netconfig"):
        tear_down(NetworkPlan(SETUP, TEARDOWN, RESTORE), run=runner)
    assert runner.ran == RESTORE + TEARDOWN
    assert [r.getMessage() for r in caplog.records] == ["resolvectl revert vc0: no permission"]
