"""The client's dns, dns_search and kill_switch keys: a bad one is one line
and exit 2; a good one shows in --dry-run as the commands that set and
restore it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpncrypt.cli import keygen
from vpncrypt.netconfig import dns

from tests.builders import install_client_keys

BIN = Path(sys.executable).parent


@pytest.fixture
def config(tmp_path) -> Path:
    assert keygen.main(["server", "--endpoint", "192.0.2.1:51820", "--tunnel", "203.0.113.1/24",
                        "--tunnel", "2001:db8::1/64", "--out", str(tmp_path / "server.toml"), "--server-id", "9"]) == 0
    assert keygen.main(["client", "--server-config", str(tmp_path / "server.toml"), "--name", "alice",
                        "--out", str(tmp_path / "alice.toml"), "--client-id", "1"]) == 0
    install_client_keys(tmp_path)
    return tmp_path / "alice.toml"


def dry_run(config: Path, lines: str, *extra: str) -> subprocess.CompletedProcess:
    text = config.read_text()
    assert "routes = []" in text
    config.write_text(text.replace("routes = []", lines))
    os.chmod(config, 0o600)
    return subprocess.run([str(BIN / "vpncrypt-client"), "--config", str(config), "--dry-run", *extra],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("lines, message", [
    ('dns = ["203.0.113.1:53"]', "dns: '203.0.113.1:53' is not an IP address"),
    ('dns = ["resolver.example"]', "dns: 'resolver.example' is not an IP address"),
    ('dns = "203.0.113.1"', "dns: must be a list"),
    ('dns = ["fe80::1%eth0"]', "a scoped address is not reached through the tunnel"),
    ('dns = ["192.0.2.53"]', "dns: 192.0.2.53 is not reached through the tunnel"),  # a split tunnel, a local resolver
    ('routes = ["0.0.0.0/0"]\ndns = ["2001:db8:99::53"]', "dns: 2001:db8:99::53 is not reached through the tunnel"),
    ('dns = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"]', "at most 3 servers"),
    ('dns = ["203.0.113.1"]\ndns_search = ["bad domain"]', "dns_search: 'bad domain' is not a domain name"),
    ('dns = ["203.0.113.1"]\ndns_search = ["-x.example"]', "dns_search: '-x.example' is not a domain name"),
    ('dns_search = ["example.internal"]', "dns_search: goes with dns"),
])
def test_a_bad_dns_setting_is_one_line_and_exit_2(config, lines, message):
    done = dry_run(config, f"routes = []\n{lines}" if not lines.startswith("routes") else lines)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr and str(config) in done.stderr


def test_dns_shows_in_the_dry_run_with_its_restore(config):
    done = dry_run(config, 'routes = ["0.0.0.0/0", "::/0"]\ndns = ["203.0.113.1", "2001:db8::1"]\n'
                           'dns_search = ["example.internal."]')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    setup, at_exit = lines[:lines.index("# at exit:")], lines[lines.index("# at exit:") + 1:]
    manager = dns.probe()  # this machine's: the dry run shows what a start here would run
    expected = {
        "resolvectl": ("resolvectl dns vpncrypt0 203.0.113.1 2001:db8::1", "resolvectl revert vpncrypt0"),
        "openresolv": ("resolvconf -m 0 -x -a tun.vpncrypt0", "resolvconf -f -d tun.vpncrypt0"),
        "resolvconf": ("resolvconf -a tun.vpncrypt0", "resolvconf -d tun.vpncrypt0"),
        "file": ("-m vpncrypt.netconfig.resolv_conf set", "-m vpncrypt.netconfig.resolv_conf restore"),
    }[manager]
    assert any(expected[0] in line for line in setup[-2:]), setup
    assert expected[1] in at_exit[0]
    state = os.environ["STATE_DIRECTORY"]
    if manager == "file":
        assert setup[-1].endswith(f"set {state}/alice.resolv.conf.json 'nameserver 203.0.113.1'"
                                  " 'nameserver 2001:db8::1' 'search example.internal.'")


def test_the_freebsd_dry_run_hands_the_servers_to_resolvconf(config):
    done = dry_run(config, 'routes = ["0.0.0.0/0", "::/0"]\ndns = ["203.0.113.1"]', "--platform", "freebsd")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[lines.index("# at exit:") - 1] == \
        """sh -c 'printf "%s\\n" "$@" | resolvconf -m 0 -x -a vpncrypt0' sh 'nameserver 203.0.113.1'"""
    assert lines[lines.index("# at exit:") + 1] == "resolvconf -f -d vpncrypt0"


def test_without_dns_nothing_about_dns_is_planned(config):
    done = dry_run(config, "routes = []")
    assert done.returncode == 0, done.stderr
    assert "resolv" not in done.stdout and "# at exit:" not in done.stdout


@pytest.mark.parametrize("lines, status, message", [
    ("kill_switch = true", 2, 'kill_switch: goes with a full tunnel: routes with "0.0.0.0/0" or "::/0"'),
    ('routes = ["::/0"]\nkill_switch = "yes"', 2, "kill_switch: must be"),
])
def test_a_bad_kill_switch_is_one_line(config, lines, status, message):
    done = dry_run(config, lines if lines.startswith("routes") else f"routes = []\n{lines}")
    assert done.returncode == status, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr


def test_the_kill_switch_shows_in_the_dry_run_and_is_refused_for_freebsd(config):
    done = dry_run(config, 'routes = ["0.0.0.0/0", "::/0"]\nkill_switch = true')
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if not line.startswith("# checked first: ")]
    assert commands[0].startswith("nft add table inet vpncrypt_ks_vpncrypt0 ")  # the first that changes anything
    assert done.stdout.splitlines()[-1] == "nft delete table inet vpncrypt_ks_vpncrypt0"
    done = subprocess.run([str(BIN / "vpncrypt-client"), "--config", str(config), "--dry-run", "--platform", "freebsd"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "kill_switch is for Linux only so far" in done.stderr
