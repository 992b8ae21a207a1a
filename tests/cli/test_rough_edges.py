"""Rough edges of issue 12, each a clear line or the expected behaviour: --out into a
missing directory, the network address as the server's, --version, --dry-run into
head, a server config given to the client, an interface name with %d."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vpncrypt.cli import keygen

from tests.builders import install_client_keys

BIN = Path(sys.executable).parent


def run(command: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=60)


def one_line(done: subprocess.CompletedProcess, status: int, *fragments: str) -> None:
    assert done.returncode == status, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(fragment in done.stderr for fragment in fragments), done.stderr


@pytest.fixture
def configs(tmp_path) -> Path:
    assert keygen.main(["server", "--endpoint", "192.0.2.1:51820", "--tunnel", "203.0.113.1/24",
                        "--out", str(tmp_path / "server.toml"), "--server-id", "9"]) == 0
    assert keygen.main(["client", "--server-config", str(tmp_path / "server.toml"), "--name", "alice",
                        "--out", str(tmp_path / "alice.toml"), "--client-id", "1"]) == 0
    install_client_keys(tmp_path)
    return tmp_path


def test_out_into_a_missing_directory_is_one_line(tmp_path):
    done = run("vpncrypt-keygen", "server", "--endpoint", "192.0.2.1:51820", "--tunnel", "203.0.113.1/24",
               "--out", "missing/server.toml", cwd=tmp_path)
    one_line(done, 2, "missing/server.toml: cannot write there: No such file or directory")


def test_out_of_a_client_into_a_missing_directory_is_one_line_and_changes_nothing(configs):
    before = (configs / "server.toml").read_text()
    done = run("vpncrypt-keygen", "client", "--server-config", "server.toml", "--name", "bob",
               "--out", "missing/bob.toml", cwd=configs)
    one_line(done, 2, "missing/bob.toml: cannot write there")
    assert (configs / "server.toml").read_text() == before


@pytest.mark.parametrize("tunnel, message", [
    ("203.0.113.0/24", "'203.0.113.0/24' is the network address of 203.0.113.0/24"),
    ("203.0.113.255/24", "is the broadcast address"),
    ("2001:db8::/64", "is the network address of 2001:db8::/64"),
])
def test_the_network_address_is_not_the_servers(tmp_path, tunnel, message):
    done = run("vpncrypt-keygen", "server", "--endpoint", "192.0.2.1:51820", "--tunnel", tunnel,
               "--out", "server.toml", cwd=tmp_path)
    one_line(done, 2, message, "like ")
    assert not (tmp_path / "server.toml").exists()


def test_a_host_address_and_a_point_to_point_pair_are_taken(tmp_path):
    for number, tunnel in enumerate(("203.0.113.1/24", "198.51.100.0/31", "2001:db8::1/64")):
        done = run("vpncrypt-keygen", "server", "--endpoint", "192.0.2.1:51820", "--tunnel", tunnel,
                   "--out", f"s{number}.toml", "--state-directory", tmp_path / f"state{number}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", ["vpncrypt-server", "vpncrypt-client", "vpncrypt-keygen"])
def test_version(tmp_path, command):
    done = run(command, "--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith(f"{command} 0.") and "protocol version 2" in done.stdout


def test_a_dry_run_into_head_prints_no_broken_pipe(configs):
    """More than a pipe holds (64 KiB), so the writer meets the closed pipe."""
    routes = ", ".join(f'"10.{i // 256}.{i % 256}.0/24"' for i in range(4000))
    text = (configs / "alice.toml").read_text().replace("routes = []", f"routes = [{routes}]")
    (configs / "alice.toml").write_text(text)
    done = subprocess.run(f"'{BIN}/vpncrypt-client' --config alice.toml --dry-run | head -n 1", shell=True,
                          capture_output=True, text=True, cwd=configs, timeout=60)
    assert done.stdout.startswith("ip ") and len(done.stdout.splitlines()) == 1
    assert done.stderr == ""


def test_a_server_config_given_to_the_client_says_so(configs):
    done = run("vpncrypt-client", "--config", "server.toml", "--dry-run", cwd=configs)
    one_line(done, 2, "server.toml: is a server config ([server]); run it with vpncrypt-server")
    done = run("vpncrypt-server", "--config", "alice.toml", "--dry-run", cwd=configs)
    one_line(done, 2, "alice.toml: is a client config ([client]); run it with vpncrypt-client")


@pytest.mark.parametrize("name", ["vpn%d", "vpn:1", ".."])
def test_an_interface_name_the_kernel_would_change_is_refused(configs, name):
    text = (configs / "server.toml").read_text().replace('interface = "vpncrypt0"', f'interface = "{name}"')
    (configs / "server.toml").write_text(text)
    done = run("vpncrypt-server", "--config", "server.toml", "--dry-run", cwd=configs)
    one_line(done, 2, f"interface: '{name}' is not a valid interface name")


def test_a_tunnel_address_without_its_prefix_is_refused(configs):
    """Found by a fresh user: "203.0.113.2" was taken as a /32, so the server's
    tunnel address was routed outside the tunnel and answered in clear."""
    client = configs / "alice.toml"
    text = client.read_text()
    line = next(l for l in text.splitlines() if l.startswith("addresses = "))
    client.write_text(text.replace(line, 'addresses = ["203.0.113.2"]'))
    done = subprocess.run([str(BIN / "vpncrypt-client"), "--config", str(client), "--dry-run"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done
    assert done.stderr.strip().endswith("'203.0.113.2' needs the tunnel's prefix (like 203.0.113.2/24, as keygen"
                                        " writes it)"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_what_a_fresh_user_found_unclear_is_said_plainly(configs, tmp_path):
    """A server.toml without [server]; a config renamed away from its key store;
    a state directory that does not exist."""
    (configs / "empty.toml").write_text("")
    (configs / "empty.toml").chmod(0o600)
    done = run("vpncrypt-server", "--config", configs / "empty.toml", "--dry-run", cwd=configs)
    assert done.returncode == 2 and done.stderr.strip().endswith("empty.toml: the [server] table is missing")
    renamed = configs / "laptop.toml"
    (configs / "alice.toml").rename(renamed)
    done = run("vpncrypt-client", "--config", renamed, "--dry-run", cwd=configs)
    assert done.returncode == 2 and "the key stores there: alice.keys.json, server.keys.json (NAME.keys.json goes with NAME.toml)" \
        in done.stderr, done.stderr
    text = renamed.read_text().replace("[client]\n", f'[client]\nstate_directory = "{tmp_path}/nowhere"\n', 1)
    renamed.write_text(text)
    done = run("vpncrypt-client", "--config", renamed, "--dry-run", cwd=configs)
    assert done.returncode == 2 and f"the state directory {tmp_path}/nowhere does not exist" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
