"""FreeBSD and macOS from Linux: the dry run for another OS (--platform), and
the service files, checked as far as Linux can: the rc.d scripts parse in sh
and run under a stand-in rc.subr, the launchd plist parses."""

from __future__ import annotations

import os
import plistlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import install_client_keys

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RC_SCRIPTS = [ROOT / "freebsd" / "vpncrypt_server", ROOT / "freebsd" / "vpncrypt_client"]


def run(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.fixture
def configs(tmp_path) -> Path:
    assert run("vpncrypt-keygen", "server", "--endpoint", "192.0.2.1:51820", "--tunnel", "203.0.113.1/24",
               "--tunnel", "2001:db8::1/64", "--out", "server.toml", "--server-id", "9", cwd=tmp_path).returncode == 0
    done = run("vpncrypt-keygen", "client", "--server-config", "server.toml", "--name", "alice",
               "--out", "alice.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    install_client_keys(tmp_path)
    text = (tmp_path / "alice.toml").read_text()
    assert "routes = []" in text
    (tmp_path / "full.toml").write_text(text.replace("routes = []", 'routes = ["0.0.0.0/0", "::/0"]'))
    state = Path(os.environ["STATE_DIRECTORY"])
    (state / "full.keys.json").write_bytes((state / "alice.keys.json").read_bytes())
    os.chmod(state / "full.keys.json", 0o600)
    os.chmod(tmp_path / "full.toml", 0o600)
    return tmp_path


def test_the_server_dry_run_for_freebsd(configs):
    done = run("vpncrypt-server", "--config", "server.toml", "--dry-run", "--platform", "freebsd", cwd=configs)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ifconfig vpncrypt0 mtu 1420",
        "ifconfig vpncrypt0 inet6 -auto_linklocal no_dad",
        "ifconfig vpncrypt0 inet 203.0.113.1/24 203.0.113.0 alias",
        "ifconfig vpncrypt0 inet6 2001:db8::1/128 alias",
        "ifconfig vpncrypt0 inet6 -ifdisabled",
        "ifconfig vpncrypt0 up",
        "route -q -n add -inet 203.0.113.0/24 -interface vpncrypt0",
        "route -q -n add -inet6 2001:db8::/64 -interface vpncrypt0",
    ]


def test_the_client_dry_run_for_macos_with_everything_through_the_tunnel(configs):
    done = run("vpncrypt-client", "--config", "full.toml", "--dry-run", "--platform", "darwin", cwd=configs)
    assert done.returncode == 0, done.stderr
    setup, teardown = done.stdout.split("# at exit:\n")
    checked = "sh -c '! route \"$@\" 2>&1 >/dev/null | grep . >&2' route -q -n"
    assert "ifconfig 'utun?' inet 203.0.113.2/24 203.0.113.2 alias\n" in setup  # macOS names the device
    assert f"{checked} add -inet 0.0.0.0/1 -interface 'utun?'\n" in setup
    assert f"{checked} add -inet6 8000::/1 -interface 'utun?'\n" in setup
    assert "route -n get -inet default" in setup and "-host 192.0.2.1 -proto1 -gateway" in setup
    # Only the host route vpncrypt made (-proto1) is deleted.
    assert teardown == ("sh -c 'route -n get -inet -host 192.0.2.1 2>/dev/null | grep -q \"^ *flags: <.*PROTO1\" ||"
                        " exit 1; ! route -q -n delete -inet -host 192.0.2.1 2>&1 >/dev/null | grep . >&2'\n")
    assert "ip " not in done.stdout and "fwmark" not in done.stdout


def test_the_client_dry_run_for_freebsd_routes_the_server_outside(configs):
    done = run("vpncrypt-client", "--config", "full.toml", "--dry-run", "--platform", "freebsd", cwd=configs)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    server_route = next(i for i, line in enumerate(lines) if "-host 192.0.2.1" in line)
    assert server_route < lines.index("route -q -n add -inet 0.0.0.0/1 -interface vpncrypt0")
    assert lines[-2:] == ["# at exit:", "sh -c 'route -n get -inet -host 192.0.2.1 2>/dev/null | grep -q"
                                        " \"^ *flags: <.*PROTO1\" || exit 1; exec route -q -n delete -inet -host"
                                        " 192.0.2.1'"]


def test_the_linux_dry_run_is_what_it_was(configs):
    done = run("vpncrypt-client", "--config", "alice.toml", "--dry-run", "--platform", "linux", cwd=configs)
    assert done.returncode == 0 and "ip address add 203.0.113.2/24 dev vpncrypt0" in done.stdout


@pytest.mark.parametrize("command", ["vpncrypt-server", "vpncrypt-client"])
def test_platform_without_dry_run_is_a_usage_error_in_one_line(tmp_path, command):
    # No config to start from, should the check ever be missing: it comes before the config is read.
    done = run(command, "--config", "missing.toml", "--platform", "freebsd", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"{command}: error: --platform only goes with --dry-run "
                                        "(a tunnel runs on the OS it is on)"]


def test_an_unknown_platform_is_refused(configs):
    done = run("vpncrypt-server", "--config", "server.toml", "--dry-run", "--platform", "plan9", cwd=configs)
    assert done.returncode == 2 and "invalid choice: 'plan9'" in done.stderr


# rc.d: rc.subr(8) conventions, as far as Linux can check them.

@pytest.mark.parametrize("script", RC_SCRIPTS, ids=lambda p: p.name)
def test_the_rc_script_parses_and_sets_what_rc_subr_reads(script):
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    assert os.access(script, os.X_OK)
    text = script.read_text()
    name = script.name
    assert re.search(rf"^# PROVIDE: {name}$", text, re.M) and re.search(r"^# KEYWORD: shutdown$", text, re.M)
    for line in (f"name={name}", f"rcvar={name}_enable", "load_rc_config $name", 'run_rc_command "$1"',
                 '. /etc/rc.subr', 'command="/usr/sbin/daemon"', 'pidfile="/var/run/${name}.pid"'):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    for variable in ("enable", "config", "interface", "bin"):
        assert re.search(rf"^: \${{{name}_{variable}:=", text, re.M), variable
    assert text.index("load_rc_config") < text.index(f": ${{{name}_enable"), "defaults after rc.conf"
    assert text.rstrip().endswith('run_rc_command "$1"')
    assert not re.search(r"^\s*procname=", text, re.M)  # it stays command, daemon(8), whose pid the pidfile has


STUB_RC_SUBR = """
load_rc_config() { [ -f "$FAKE_RC_CONF" ] && . "$FAKE_RC_CONF"; }
run_rc_command() {
    case "$1" in
    start) eval "$start_precmd" || { echo "precmd failed"; return 1; }
           echo "command=$command"; echo "command_args=$command_args"; echo "pidfile=$pidfile"
           echo "required_files=$required_files"; echo "rcvar=$rcvar"; echo "procname=$procname" ;;
    stop) eval "$stop_postcmd" ;;
    configtest) eval "$configtest_cmd" ;;
    esac
}
"""


@pytest.fixture
def rc(tmp_path):
    """Runs an rc.d script with a stand-in rc.subr, rc.conf, vpncrypt command and ifconfig."""
    (tmp_path / "rc.subr").write_text(STUB_RC_SUBR)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ifconfig = bin_dir / "ifconfig"
    ifconfig.write_text('#!/bin/sh\n[ "$1" = "-g" ] && { printf "%s\\n" $TUN_GROUP; exit 0; }\n'
                        'echo "ifconfig $*" >> "$LOG"\n')
    vpncrypt = bin_dir / "vpncrypt"
    vpncrypt.write_text('#!/bin/sh\necho "vpncrypt $*" >> "$LOG"\nexit "$STATUS"\n')
    for tool in (ifconfig, vpncrypt):
        tool.chmod(0o755)

    def call(script: Path, action: str, rc_conf: str = "", tun_group: str = "", status: int = 0):
        copy = tmp_path / script.name
        copy.write_text(script.read_text().replace(". /etc/rc.subr", f". {tmp_path}/rc.subr"))
        (tmp_path / "rc.conf").write_text(rc_conf)
        log = tmp_path / "log"
        log.write_text("")
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_RC_CONF": str(tmp_path / "rc.conf"),
               "TUN_GROUP": tun_group, "LOG": str(log), "STATUS": str(status)}
        done = subprocess.run(["sh", str(copy), action], capture_output=True, text=True, env=env, timeout=30)
        return done, log.read_text().splitlines()
    call.vpncrypt = vpncrypt
    return call


@pytest.mark.parametrize("script, command, config", [
    (RC_SCRIPTS[0], "/usr/local/vpncrypt/bin/vpncrypt-server", "/usr/local/etc/vpncrypt/server.toml"),
    (RC_SCRIPTS[1], "/usr/local/vpncrypt/bin/vpncrypt-client", "/usr/local/etc/vpncrypt/client.toml"),
], ids=lambda p: getattr(p, "name", None))
def test_start_runs_vpncrypt_under_daemon_with_the_pidfile_it_writes(rc, script, command, config):
    name = script.name
    done, _ = rc(script, "start", rc_conf=f'{name}_bin="{rc.vpncrypt}"\n')
    assert done.returncode == 0, done.stderr
    values = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert values["command"] == "/usr/sbin/daemon" and values["rcvar"] == f"{name}_enable"
    assert values["pidfile"] == f"/var/run/{name}.pid" and values["procname"] == ""
    args = values["command_args"].split()
    # daemon(8): -P writes the supervisor's pid, which stop signals; -r restarts a child that died.
    assert args[args.index("-P") + 1] == values["pidfile"] and "-r" in args and "-p" not in args
    assert args[args.index("-P") + 2:] == [str(rc.vpncrypt), "--config", config]
    assert values["required_files"] == config
    done, _ = rc(script, "start")
    assert done.stdout.split("command_args=")[1].split("\n")[0].split()[-3:] == [command, "--config", config]


def test_rc_conf_chooses_the_config_and_a_bad_one_stops_the_start(rc):
    script = RC_SCRIPTS[0]
    conf = f'vpncrypt_server_bin="{rc.vpncrypt}"\nvpncrypt_server_config="/etc/x.toml"\n'
    done, log = rc(script, "start", rc_conf=conf)
    assert "--config /etc/x.toml" in done.stdout and log == ["vpncrypt --config /etc/x.toml --dry-run"]
    done, log = rc(script, "start", rc_conf=conf, status=2)  # a mistake in the config
    assert "precmd failed" in done.stdout and "command=" not in done.stdout
    done, log = rc(script, "start", rc_conf=conf, status=1)  # the server's name does not resolve yet
    assert "command=/usr/sbin/daemon" in done.stdout


@pytest.mark.parametrize("script", RC_SCRIPTS, ids=lambda p: p.name)
def test_stop_and_start_destroy_a_leftover_interface_only_if_it_is_our_tun(rc, script):
    name = script.name
    conf = f'{name}_bin="{rc.vpncrypt}"\n'
    _, log = rc(script, "stop", rc_conf=conf, tun_group="tun0 vpncrypt0")
    assert log == ["ifconfig vpncrypt0 destroy"]
    _, log = rc(script, "stop", rc_conf=conf, tun_group="tun0 vpncrypt01")  # a name that only starts alike
    assert log == []
    _, log = rc(script, "stop", rc_conf=conf + f'{name}_interface="vc1"\n', tun_group="vpncrypt0 vc1")
    assert log == ["ifconfig vc1 destroy"]
    _, log = rc(script, "start", rc_conf=conf, tun_group="vpncrypt0")
    assert log[-1] == "ifconfig vpncrypt0 destroy"


def test_the_pf_example_has_the_forwarding_lines_and_translates_before_filtering():
    text = (ROOT / "freebsd" / "pf.conf.example").read_text()
    assert re.search(r'^#\s+gateway_enable="YES"', text, re.M)
    assert re.search(r'^#\s+ipv6_gateway_enable="YES"', text, re.M)
    rules = [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]
    nat = [i for i, rule in enumerate(rules) if rule.startswith("nat on $ext_if")]
    filters = [i for i, rule in enumerate(rules) if rule.startswith(("pass", "block"))]
    assert len(nat) == 2 and max(nat) < min(filters)  # pf.conf(5): translation before filtering
    assert "pass in on $ext_if proto udp to port $vpn_port" in rules


def test_the_launchd_plist_runs_the_client_on_its_config():
    with open(ROOT / "macos" / "com.vpncrypt.client.plist", "rb") as file:
        plist = plistlib.load(file)
    assert plist["Label"] == "com.vpncrypt.client"
    program, option, config = plist["ProgramArguments"]
    assert program.endswith("/bin/vpncrypt-client") and option == "--config" and config.endswith(".toml")
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert "/sbin" in plist["EnvironmentVariables"]["PATH"].split(":")  # ifconfig, route
    assert plist["StandardErrorPath"].startswith("/var/log/")
