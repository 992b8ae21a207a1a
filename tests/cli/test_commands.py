"""The commands as an operator meets them: keygen output, and one clear line with exit 2
for every configuration mistake (no root needed: configs are checked before any device)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from vpncrypt.config import load_client_config, load_server_config
from vpncrypt.core.keys import encode_key

from tests.builders import install_client_keys
from tests.runtime import ReadableRuntime

BIN = Path(sys.executable).parent


def run(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.fixture
def configs(tmp_path) -> Path:
    assert run("vpncrypt-keygen", "server", "--endpoint", "192.0.2.1:51820", "--tunnel", "203.0.113.1/24",
               "--tunnel", "2001:db8::1/64", "--out", "server.toml", "--server-id", "9", cwd=tmp_path).returncode == 0
    for client_id, name in ((1, "alice"), (2, "bob")):  # IDs named: keygen's own choice is random
        done = run("vpncrypt-keygen", "client", "--server-config", "server.toml", "--name", name,
                   "--out", f"{name}.toml", "--client-id", str(client_id), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    install_client_keys(tmp_path)
    return tmp_path


def test_keygen_writes_private_configs_that_load(configs):
    for name in ("server.toml", "alice.toml", "bob.toml"):
        assert stat.S_IMODE((configs / name).stat().st_mode) == 0o600
    server = load_server_config(configs / "server.toml")
    alice = load_client_config(configs / "alice.toml")
    bob = load_client_config(configs / "bob.toml")
    assert server.server_id == alice.server_id == 9 and server.port == 51820
    assert [c.name for c in server.clients] == ["alice", "bob"]
    assert (alice.client_id, bob.client_id) == (1, 2)
    assert [str(a) for a in alice.addresses] == ["203.0.113.2/24", "2001:db8::2/64"]
    assert [str(a) for a in bob.addresses] == ["203.0.113.3/24", "2001:db8::3/64"]
    assert server.clients[0].key == alice.key and alice.key != bob.key
    assert alice.server == "192.0.2.1:51820"


def test_keygen_keeps_the_server_file_mode_and_takes_a_given_address(configs):
    os.chmod(configs / "server.toml", 0o400)
    done = run("vpncrypt-keygen", "client", "--server-config", "server.toml", "--name", "carol",
               "--out", "carol.toml", "--address", "203.0.113.77", cwd=configs)
    install_client_keys(configs)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((configs / "server.toml").stat().st_mode) == 0o400
    assert str(load_client_config(configs / "carol.toml").addresses[0]) == "203.0.113.77/24"


@pytest.mark.parametrize("args, message", [
    (["--address", "203.0.113.2"], "--address: 203.0.113.2 of client 'carol' overlaps 203.0.113.2/32 of client 'alice'"),
    (["--address", "2001:db8::1"], "--address: 2001:db8::1 of client 'carol' overlaps 2001:db8::1/128 of the server"),
    (["--address", "198.51.100.1"], "not inside the tunnel network"),
    (["--address", "nonsense"], "not an IP address"),
])
def test_keygen_refuses_bad_addresses_and_leaves_the_server_file_alone(configs, args, message):
    before = (configs / "server.toml").read_text()
    done = run("vpncrypt-keygen", "client", "--server-config", "server.toml", "--name", "carol",
               "--out", "carol.toml", *args, cwd=configs)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert (configs / "server.toml").read_text() == before
    assert not (configs / "carol.toml").exists()


def test_keygen_names_the_network_behind_a_client_that_an_address_falls_in(configs):
    edit(configs / "server.toml", 'addresses = ["203.0.113.3/32"', 'addresses = ["203.0.113.64/26"')
    done = run("vpncrypt-keygen", "client", "--server-config", "server.toml", "--name", "carol",
               "--out", "carol.toml", "--address", "203.0.113.70", cwd=configs)
    assert done.returncode == 2
    assert done.stderr == ("vpncrypt-keygen: error: --address: 203.0.113.70 of client 'carol' overlaps"
                           " 203.0.113.64/26 of client 'bob'\n")


HAND_COPIED = """
[[client]]
name = "carol"
client_id = 3
addresses = ["203.0.113.2/32"]
"""


@pytest.mark.parametrize("command", [
    ("vpncrypt-keygen", "client", "--server-config", "server.toml", "--name", "dave", "--out", "dave.toml"),
    ("vpncrypt-keygen", "list", "--server-config", "server.toml"),
    ("vpncrypt-server", "--config", "server.toml", "--dry-run"),
])
def test_an_overlap_is_the_first_and_only_error_even_when_the_entry_has_no_key(configs, command):
    """A client entry copied by hand has no key in the store yet: the overlap it
    brings is the mistake to name, not the missing key."""
    with (configs / "server.toml").open("a") as file:
        file.write(HAND_COPIED)
    done = run(*command, cwd=configs)
    assert done.returncode == 2
    assert done.stderr.endswith("error: server.toml: address 203.0.113.2/32 of client 'carol' overlaps"
                                " 203.0.113.2/32 of client 'alice'\n")
    assert len(done.stderr.splitlines()) == 1 and not (configs / "dave.toml").exists()
    # Once the overlap is mended, the missing key is what is left to say.
    edit(configs / "server.toml", '"203.0.113.2/32"]\n', '"203.0.113.9/32"]\n')
    done = run(*command, cwd=configs)
    assert done.returncode == 2 and "[[client]] 'carol' (ID 3) has no key in the key store" in done.stderr


@pytest.mark.parametrize("fix", ["rotate", "remove"])
def test_a_client_added_by_hand_without_a_key_is_given_one_or_removed_as_the_error_says(configs, fix):
    with (configs / "server.toml").open("a") as file:
        file.write(HAND_COPIED.replace("203.0.113.2/32", "203.0.113.9/32"))
    refused = run("vpncrypt-server", "--config", "server.toml", "--dry-run", cwd=configs)
    assert refused.returncode == 2
    advice = refused.stderr.split("give it one with: ")[1].split()
    assert advice[:2] == ["vpncrypt-keygen", "rotate"]
    command = advice if fix == "rotate" else ["vpncrypt-keygen", "remove", "--server-config", "server.toml",
                                              "--name", "carol"]
    done = run(*command, cwd=configs)
    assert done.returncode == 0, done.stderr
    if fix == "rotate":
        assert "it had none: the server takes it when it reloads" in done.stdout + done.stderr
    install_client_keys(configs)
    server = load_server_config(configs / "server.toml")
    assert [c.name for c in server.clients] == (["alice", "bob", "carol"] if fix == "rotate" else ["alice", "bob"])
    if fix == "rotate":
        assert load_client_config(configs / "carol.toml").key == server.clients[2].key != b""


def test_a_name_given_twice_names_the_other_clients_id(configs):
    with (configs / "server.toml").open("a") as file:
        file.write(HAND_COPIED.replace('"carol"', '"bob"').replace("203.0.113.2/32", "203.0.113.9/32"))
    done = run("vpncrypt-server", "--config", "server.toml", "--dry-run", cwd=configs)
    [bob] = [c["client_id"] for c in tomllib.loads((configs / "server.toml").read_text())["client"]
             if c["name"] == "bob" and c["addresses"] != ["203.0.113.9/32"]]
    assert done.returncode == 2
    assert done.stderr.rstrip().endswith(f"[[client]] 'bob' name: is also the name of the client with ID {bob}")


def test_dry_run_prints_the_network_commands(configs):
    done = run("vpncrypt-client", "--config", "alice.toml", "--dry-run", cwd=configs)
    assert done.returncode == 0
    assert "ip address add 203.0.113.2/24 dev vpncrypt0" in done.stdout
    assert "ip link set dev vpncrypt0 up" in done.stdout
    assert "rule" not in done.stdout and "at exit" not in done.stdout


def test_dry_run_of_a_default_route_shows_the_rules_and_their_removal(configs):
    edit(configs / "alice.toml", "routes = []", 'routes = ["0.0.0.0/0", "::/0", "198.51.100.0/24"]\nfwmark = 4242')
    done = run("vpncrypt-client", "--config", "alice.toml", "--dry-run", cwd=configs)
    assert done.returncode == 0, done.stderr
    setup, teardown = done.stdout.split("# at exit:\n")
    for family, default in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
        # What vpncrypt makes carries its protocol number, and its removal names it.
        assert f"# checked first: ip -j -N {family} rule show" in setup
        assert f"ip {family} route add {default} dev vpncrypt0 table 4242 proto 118" in setup
        assert f"ip {family} rule add not fwmark 4242 table 4242 priority 32765 protocol 118" in setup
        assert f"ip {family} rule add table main suppress_prefixlength 0 priority 32764 protocol 118" in setup
        assert f"ip {family} rule delete not fwmark 4242 table 4242 priority 32765 protocol 118" in teardown
        assert f"ip {family} rule delete table main suppress_prefixlength 0 priority 32764 protocol 118" in teardown
    assert "ip -4 route add 198.51.100.0/24 dev vpncrypt0 proto 118\n" in setup  # other routes: the main table
    assert "src_valid_mark=1" in setup and "replace" not in done.stdout


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


BROKEN_SERVER = [
    ("time_window = 128", "time_window = 128\nbogus = 1", "unknown key 'bogus'"),
    ('tunnel = ["203.0.113.1/24", "2001:db8::1/64"]', 'tunnel = ["203.0.113.999/24"]', "not an address with a prefix"),
    ("client_id = 2", "client_id = 1", "already used by client 'alice'"),
    ('addresses = ["203.0.113.3/32"', 'addresses = ["203.0.113.2/32"', "overlaps"),
    ('addresses = ["203.0.113.3/32"', 'addresses = ["0.0.0.0/0"', "a default route is only for a client's routes"),
    ("server_id = 9", 'server_id = "nine"', "must be an integer"),
    ("server_id = 9", "server_id = 99999999999", "must be from 0 to 4294967295"),
    ("[server]", "[server", "not valid TOML"),
    ("time_window = 128", "time_window = 600", "must be from 1 to 511"),
]


# Config errors are checked with --dry-run: they are found before it acts, and a
# config that is wrongly accepted then cannot set up a tunnel on the test host.


@pytest.mark.parametrize("old, new, message", BROKEN_SERVER)
def test_broken_server_config(configs, old, new, message):
    edit(configs / "server.toml", old, new)
    done = run("vpncrypt-server", "--config", "server.toml", "--dry-run", cwd=configs)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_a_broken_key_store_is_named_and_never_shows_the_key(configs):
    store = Path(os.environ["STATE_DIRECTORY"]) / "alice.keys.json"
    text = store.read_text()
    key = json.loads(text)["keys"]["1"]["key"]
    short = encode_key(b"k" * 32)
    for broken in (short, "not base64!"):
        store.write_text(text.replace(key, broken))
        done = run("vpncrypt-client", "--config", "alice.toml", "--dry-run", cwd=configs)
        assert done.returncode == 2 and f"{store}: not a valid key store" in done.stderr
        assert broken not in done.stderr and key not in done.stderr and "Traceback" not in done.stderr
    store.chmod(0o644)
    done = run("vpncrypt-client", "--config", "alice.toml", "--dry-run", cwd=configs)
    assert done.returncode == 2 and "chmod 600" in done.stderr


def test_a_version_1_config_with_a_key_line_says_where_keys_are_now(configs):
    text = (configs / "alice.toml").read_text()
    (configs / "alice.toml").write_text(text.replace("[client]\n", '[client]\nkey = "old"\n'))
    done = run("vpncrypt-client", "--config", "alice.toml", "--dry-run", cwd=configs)
    assert done.returncode == 2 and "keys are no longer in config files" in done.stderr


@pytest.mark.parametrize("old, new, message", [
    ('server = "192.0.2.1:51820"', 'server = "192.0.2.1"', "is not HOST:PORT"),
    ("keepalive = 25", "keepalive = -1", "from 0 (off)"),
    ("keepalive = 25", "keepalive = 25\nfwmark = 0", "from 1 to 4294967295"),
    # A fwmark numbers the client's routing table: never one the system uses (issue 12).
    ("keepalive = 25", "keepalive = 25\nfwmark = 254", "fwmark: 254 numbers the system's routing table 'main'"),
    ("keepalive = 25", "keepalive = 25\nfwmark = 253", "routing table 'default' (253, 254 and 255 are reserved"),
    ("keepalive = 25", "keepalive = 25\nfwmark = 255", "routing table 'local'"),
    # A route over the server's own address would loop the tunnel's datagrams (issue 13).
    ("routes = []", 'routes = ["192.0.2.0/24"]', "route 192.0.2.0/24 covers the server's address 192.0.2.1: the"
     " tunnel's own datagrams would loop; route only the networks beside the server, or everything (0.0.0.0/0,"),
    ("routes = []", 'routes = ["0.0.0.0/0", "192.0.2.0/31"]', "route 192.0.2.0/31 covers the server's address"),
    ("keepalive = 25", "keepalive = 25\nresolve_interval = 0.5", "0 (never) or from 1 to 86400"),
    ('interface = "vpncrypt0"', 'interface = "much-too-long-name0"', "not a valid interface name"),
])
def test_broken_client_config(configs, old, new, message):
    edit(configs / "alice.toml", old, new)
    done = run("vpncrypt-client", "--config", "alice.toml", "--dry-run", cwd=configs)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("platform", ["freebsd", "darwin"])
def test_a_route_over_the_servers_address_is_refused_for_every_platform(configs, platform):
    edit(configs / "alice.toml", "routes = []", 'routes = ["::/0", "192.0.2.0/25"]')
    done = run("vpncrypt-client", "--config", "alice.toml", "--dry-run", "--platform", platform, cwd=configs)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "vpncrypt-client: error: route 192.0.2.0/25 covers the server's address 192.0.2.1: the tunnel's own datagrams"
        " would loop; route only the networks beside the server, or everything (0.0.0.0/0, which keeps the server"
        " out)"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_config_readable_by_others_is_refused(configs, mode):
    os.chmod(configs / "server.toml", mode)
    done = run("vpncrypt-server", "--config", "server.toml", "--dry-run", cwd=configs)
    assert done.returncode == 2
    assert "chmod 600 server.toml" in done.stderr and "Traceback" not in done.stderr


def test_missing_config(tmp_path):
    done = run("vpncrypt-server", "--config", "nowhere.toml", cwd=tmp_path)
    assert done.returncode == 2 and "nowhere.toml: no such file" in done.stderr


def test_missing_privileges_are_explained(configs):
    """Without root (or CAP_NET_ADMIN) the TUN device cannot be made: one clear line, exit 1.
    As root, the command runs as nobody from a world-readable copy (tests/runtime.py):
    the checkout and its Python may sit where nobody cannot enter."""
    if os.geteuid() != 0:
        done = run("vpncrypt-server", "--config", "server.toml", cwd=configs)
    else:
        # As root: run as nobody, with a config nobody owns (and so may read).
        runtime = ReadableRuntime()
        home = runtime.root / "home"
        try:
            home.mkdir(mode=0o755)
            text = (configs / "server.toml").read_text().replace(os.environ["STATE_DIRECTORY"], str(home / "state"))
            (home / "server.toml").write_text(text)
            os.chmod(home / "server.toml", 0o600)
            shutil.copytree(os.environ["STATE_DIRECTORY"], home / "state")  # its key store
            for path in (home, home / "server.toml", home / "state", *(home / "state").iterdir()):
                os.chown(path, 65534, 65534)
            environment = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
            environment["STATE_DIRECTORY"] = str(home / "state")
            done = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                 str(runtime.bin / "vpncrypt-server"), "--config", "server.toml"],
                capture_output=True, text=True, cwd=home, timeout=60,
                # nobody cannot write coverage data: measure nothing in this child.
                env=environment,
            )
        finally:
            runtime.close()
    assert done.returncode == 1, done.stderr
    assert "run as root" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("entry", ["server_main", "client_main"])
def test_a_ctrl_c_while_the_daemon_is_imported_is_one_line(entry):
    """A KeyboardInterrupt while cli/start.py imports the rest of vpncrypt (its
    heavy part: cryptography, uvloop) ends with one line and status 0, no traceback."""
    program = textwrap.dedent(f"""
        import builtins, sys
        real_import = builtins.__import__
        def interrupted(name, *args, **kwargs):
            if name == "daemons" or name.endswith("cli.daemons"):
                raise KeyboardInterrupt
            return real_import(name, *args, **kwargs)
        builtins.__import__ = interrupted
        from vpncrypt.cli import start
        sys.exit(start.{entry}(["--config", "unused.toml"]))
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"vpncrypt-{entry.split('_')[0]}: stopped while starting (nothing was made)\n"


def test_a_ctrl_c_while_the_config_loads_is_quiet(monkeypatch):
    from vpncrypt.cli import daemons

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(daemons, "setup_logging", lambda verbose: None)
    assert daemons._main("vpncrypt-server", ["--config", "x.toml"], interrupted, None, None) == 0
