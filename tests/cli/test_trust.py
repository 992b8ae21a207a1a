"""Config trust: a config or key store that someone other than root (or the user
running vpncrypt) could have written or swapped is refused with one line that
says how to fix it. The owner cases need root (to give a file away); the rest
run as anyone."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

from vpncrypt import key_store
from vpncrypt.cli import keygen
from vpncrypt.config import ConfigError, load_client_config, load_server_config

from tests.builders import install_client_keys

BIN = Path(sys.executable).parent
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user (os.chown) needs root")


@pytest.fixture
def etc(tmp_path, state_directory) -> Path:
    """A server config and a client config with their key stores, all as keygen writes them."""
    directory = tmp_path / "etc"
    directory.mkdir(mode=0o700)
    assert keygen.main(["server", "--endpoint", "192.0.2.1:51820", "--tunnel", "203.0.113.1/24",
                        "--out", str(directory / "server.toml"), "--server-id", "9"]) == 0
    assert keygen.main(["client", "--server-config", str(directory / "server.toml"), "--name", "alice",
                        "--out", str(directory / "alice.toml"), "--client-id", "1"]) == 0
    install_client_keys(directory)
    load_server_config(directory / "server.toml")  # both load as written
    load_client_config(directory / "alice.toml")
    return directory


def refused(load, path, *fragments: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    return message


@needs_root
def test_a_config_owned_by_another_user_is_refused(etc):
    os.chown(etc / "server.toml", NOBODY, NOBODY)
    refused(load_server_config, etc / "server.toml", "server.toml: owned by nobody", "fix it with: chown root")
    os.chown(etc / "server.toml", 0, NOBODY)  # another group does not matter: the mode keeps it out
    load_server_config(etc / "server.toml")


@needs_root
def test_a_key_store_owned_by_another_user_is_refused(etc, state_directory):
    store = state_directory / "alice.keys.json"
    os.chown(store, NOBODY, NOBODY)
    refused(load_client_config, etc / "alice.toml", f"{store}: owned by nobody", f"chown root {store}")


@needs_root
def test_a_directory_owned_by_another_user_is_refused(etc, state_directory):
    os.chown(etc, NOBODY, NOBODY)
    refused(load_server_config, etc / "server.toml", f"its directory {etc} is owned by nobody", f"chown root {etc}")
    os.chown(etc, 0, 0)
    os.chown(state_directory, NOBODY, NOBODY)
    refused(load_client_config, etc / "alice.toml", f"its directory {state_directory} is owned by nobody")


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_a_directory_others_can_write_is_refused(etc, state_directory, mode):
    os.chmod(etc, mode)
    refused(load_server_config, etc / "server.toml", f"its directory {etc} is writable by group or others",
            f"fix it with: chmod go-w {etc}")
    os.chmod(etc, 0o755)  # readable by all is fine: the files themselves are 0600
    load_server_config(etc / "server.toml")
    os.chmod(state_directory, mode)
    refused(load_client_config, etc / "alice.toml", f"its directory {state_directory} is writable")


def test_a_symbolic_link_is_not_followed(etc, state_directory, tmp_path):
    """Even to a file that would pass every check: the link itself could be changed."""
    link = tmp_path / "linked.toml"
    link.symlink_to(etc / "server.toml")
    refused(load_server_config, link, "linked.toml: is a symbolic link", str(etc / "server.toml"))
    store = state_directory / "alice.keys.json"
    store.rename(etc / "alice.keys.json")
    store.symlink_to(etc / "alice.keys.json")
    refused(load_client_config, etc / "alice.toml", f"{store}: is a symbolic link")


def test_a_fifo_in_place_of_the_config_is_refused_without_waiting(etc):
    (etc / "server.toml").unlink()
    os.mkfifo(etc / "server.toml", 0o600)
    refused(load_server_config, etc / "server.toml", "not a regular file")


def test_the_check_is_made_on_the_open_file(etc, monkeypatch):
    """Nothing looks the path up by name to check it: only fstat of what was opened."""
    monkeypatch.setattr(os, "stat", None)
    monkeypatch.setattr(os, "lstat", None)
    monkeypatch.setattr(Path, "stat", None)
    load_server_config(etc / "server.toml")
    load_client_config(etc / "alice.toml")


@pytest.fixture
def home():
    """A directory of nobody's own, outside the test's (which nobody may not enter)."""
    directory = Path(tempfile.mkdtemp())
    os.chmod(directory, 0o755)
    os.chown(directory, NOBODY, NOBODY)
    yield directory
    shutil.rmtree(directory)


@needs_root
def test_files_of_the_running_user_are_trusted_and_the_refusal_is_one_line(etc, state_directory, home):
    """As nobody: nobody's own files load, in nobody's directory or root's; another user's are not."""
    text = (etc / "alice.toml").read_text()
    (home / "alice.toml").write_text(text.replace("[client]\n", f'[client]\nstate_directory = "{home}"\n'))
    os.chmod(home / "alice.toml", 0o600)
    (state_directory / "alice.keys.json").rename(home / "alice.keys.json")
    for path in (home / "alice.toml", home / "alice.keys.json"):
        os.chown(path, NOBODY, NOBODY)

    def dry_run() -> subprocess.CompletedProcess:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
        return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                               sys.executable, "-c", "import sys; from vpncrypt.cli.daemons import client_main;"
                               " sys.exit(client_main(sys.argv[1:]))", "--config", str(home / "alice.toml"),
                               "--dry-run"], capture_output=True, text=True, env=environment, cwd=home, timeout=60)

    done = dry_run()
    if done.returncode in (126, 127):  # setpriv could not run python as nobody (a checkout nobody can reach)
        pytest.skip(f"nobody cannot run this checkout's python: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    os.chown(home, 0, 0)  # root's directory: trusted by everyone
    assert dry_run().returncode == 0
    os.chown(home / "alice.keys.json", 1, 1)  # planted by another user (uid 1), readable to nobody: refused
    os.chmod(home / "alice.keys.json", 0o644)
    done = dry_run()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "chown nobody" in done.stderr, done.stderr


def test_the_command_refuses_in_one_line_with_exit_2(etc):
    os.chmod(etc, 0o777)
    done = subprocess.run([str(BIN / "vpncrypt-server"), "--config", str(etc / "server.toml"), "--dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "chmod go-w" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
