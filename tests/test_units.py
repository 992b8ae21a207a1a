"""The systemd units in linux/: systemd's own checks (systemd-analyze verify, and
security with an exposure of at most 3.0), and the settings the daemons rely on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LINUX = Path(__file__).resolve().parent.parent / "linux"
UNITS = ("vpncrypt-server@.service", "vpncrypt-client@.service")
BIN = Path(sys.executable).parent
MAX_EXPOSURE = 3.0

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    analyze is None, reason="systemd-analyze is missing (tools/setup installs the systemd package, as root)")


def settings(unit: str) -> dict[str, list[str]]:
    """KEY -> its values, in order, from a unit file (comments and sections dropped)."""
    found: dict[str, list[str]] = {}
    for line in (LINUX / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("unit", UNITS)
def test_the_unit_waits_for_ready_and_does_not_retry_a_config_error(unit):
    unit_settings = settings(unit)
    one = {key: values[-1] for key, values in unit_settings.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["RestartPreventExitStatus"] == "2" and one["Restart"] == "on-failure"
    assert one["StateDirectory"] == "vpncrypt" and one["RuntimeDirectory"] == "vpncrypt"
    assert one["RuntimeDirectoryPreserve"] == "yes"  # other instances keep their control sockets
    assert "time-sync.target" in one["After"] and "network-online.target" in one["After"]
    assert one["DeviceAllow"] == "/dev/net/tun rw" and one["LimitCORE"] == "0"
    assert one["SystemCallFilter"] == "@system-service" and one["NoNewPrivileges"] == "yes"
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert "CAP_NET_ADMIN" in one["CapabilityBoundingSet"].split()
    # A Documentation= must exist after a pip install: none is better than a dead one.
    assert all(not value.startswith("file:") for value in unit_settings.get("Documentation", []))


def test_the_server_runs_as_the_vpncrypt_user_with_ambient_capabilities():
    """User= (not DynamicUser=: the key store keeps one owner), the user that
    linux/vpncrypt.sysusers makes, and the bounding set ambient: the ip commands
    the daemon runs get CAP_NET_ADMIN only that way (privileges.py)."""
    one = {key: values[-1] for key, values in settings(UNITS[0]).items()}
    assert one["User"] == one["Group"] == "vpncrypt" and "DynamicUser" not in one
    assert one["AmbientCapabilities"].split() == one["CapabilityBoundingSet"].split()
    sysusers = (LINUX / "vpncrypt.sysusers").read_text().splitlines()
    assert [line.split()[:2] for line in sysusers if line.startswith("u ")] == [["u", "vpncrypt"]]


def test_the_client_keeps_root_with_cap_net_admin_alone_for_its_dns():
    """systemd-resolved takes root's word for a link's DNS servers; the unit says how to do without."""
    one = {key: values[-1] for key, values in settings(UNITS[1]).items()}
    assert "User" not in one and one["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert "add User=vpncrypt, Group=vpncrypt and AmbientCapabilities=CAP_NET_ADMIN" in (LINUX / UNITS[1]).read_text()


def test_the_server_reloads_on_sighup_and_may_bind_a_low_port():
    server = {key: values[-1] for key, values in settings(UNITS[0]).items()}
    assert server["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert set(server["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    assert server["ProtectKernelTunables"] == "yes"


def test_the_client_may_set_the_sysctl_of_a_full_tunnel():
    """net.ipv4.conf.all.src_valid_mark=1 is written through /proc/sys."""
    client = {key: values[-1] for key, values in settings(UNITS[1]).items()}
    assert client["ProtectKernelTunables"] == "no" and client["ProcSubset"] == "all"
    assert "ExecReload" not in client  # a client cannot reload


@pytest.fixture
def installed(tmp_path) -> Path:
    """The units as installed, with ExecStart pointing at this checkout's commands (verify checks they exist)."""
    for unit in UNITS:
        text = (LINUX / unit).read_text().replace("/opt/vpncrypt/bin/", f"{BIN}/")
        (tmp_path / unit).write_text(text)
    return tmp_path


@needs_analyze
def test_systemd_analyze_verify_finds_nothing(installed):
    instances = [str(installed / unit.replace("@.", "@test.")) for unit in UNITS]
    done = subprocess.run([analyze, "verify", *instances], capture_output=True, text=True, timeout=120)
    ours = [line for line in done.stderr.splitlines() if "vpncrypt" in line]
    assert done.returncode == 0 and not ours, done.stderr


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_the_exposure_score_is_at_most_3(installed, unit):
    done = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(installed / unit)],
                          capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, done.stdout
