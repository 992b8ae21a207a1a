"""The privilege drop (privileges.py) and what it asks of the files: the user
and group keys, a config the daemon's group may read, the state directory
handed over. The drop itself runs in a forked child (it cannot be undone) as
root; the end-to-end truth, with traffic, reloads and the teardown, is in
tests/netns/test_privileges.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from vpncrypt import privileges
from vpncrypt.cli.keygen import main as keygen
from vpncrypt.config import ConfigError, load_client_config, load_server_config
from vpncrypt.daemon import hand_over_state, state_files

NOBODY = privileges.account("nobody") if os.geteuid() == 0 else None
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="NEEDS ROOT: changing users and capabilities")
CAP_NET_ADMIN_MASK = 1 << privileges.CAP_NET_ADMIN


def proc_status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def in_child(work) -> dict:
    """Run ``work()`` in a forked child and return the JSON it gives back (the
    drop cannot be undone, so never in the test's own process)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        try:
            os.close(read_end)
            try:
                answer = {"result": work()}
            except Exception as error:  # noqa: BLE001 - everything goes back to the parent
                answer = {"error": f"{type(error).__name__}: {error}"}
            os.write(write_end, json.dumps(answer).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def status_after_drop(who) -> dict:
    privileges.drop(who)
    own = proc_status(Path("/proc/self/status").read_text())
    # What an ip command the daemon runs gets: the ambient set, through execve.
    child = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True, check=True).stdout
    return {"own": own, "command": proc_status(child)}


@needs_root
def test_the_drop_keeps_cap_net_admin_only_and_passes_it_to_commands():
    answer = in_child(lambda: status_after_drop(NOBODY))
    assert "error" not in answer, answer
    own, command = answer["result"]["own"], answer["result"]["command"]
    assert own["Uid"].split() == ["65534"] * 4 and own["Gid"].split() == [str(NOBODY.gid)] * 4
    assert own["Groups"].strip() == ""
    for key in ("CapPrm", "CapEff", "CapAmb", "CapBnd"):
        assert int(own[key], 16) == CAP_NET_ADMIN_MASK, (key, own[key])
    assert own["NoNewPrivs"].strip() == "1"
    # The command (cat, no file capabilities) keeps CAP_NET_ADMIN only through the ambient set.
    assert int(command["CapEff"], 16) == CAP_NET_ADMIN_MASK
    assert command["Uid"].split() == ["65534"] * 4


@needs_root
def test_without_a_user_root_keeps_root_and_says_how_to_change_it(caplog):
    answer = in_child(lambda: (privileges.drop(None), proc_status(Path("/proc/self/status").read_text()))[1])
    assert answer["result"]["Uid"].split() == ["0"] * 4
    assert int(answer["result"]["CapEff"], 16) == int(proc_status(Path("/proc/self/status").read_text())["CapEff"], 16)


def test_keeping_root_is_said_once_with_the_fix(caplog, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    privileges.drop(None)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "set user (and group) in the config" in caplog.text


@needs_root
def test_a_second_thread_is_refused_before_anything_changes():
    def work():
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        try:
            privileges.drop(NOBODY)
        finally:
            stop.set()

    answer = in_child(lambda: (work(), os.getresuid())[1])
    assert answer["error"].startswith("PrivilegeError: cannot drop privileges: another thread")


@needs_root
def test_a_failing_capability_call_is_one_line():
    """A process already unprivileged without CAP_NET_ADMIN cannot keep it: one clear line."""
    def work():
        os.setresgid(NOBODY.gid, NOBODY.gid, NOBODY.gid)
        os.setresuid(NOBODY.uid, NOBODY.uid, NOBODY.uid)  # without keepcaps: every capability gone
        privileges.drop(NOBODY)

    answer = in_child(work)
    assert answer["error"] == ("PrivilegeError: cannot set the capabilities to cap_net_admin=eip:"
                               " Operation not permitted")


@needs_root
def test_root_without_the_capabilities_to_change_user_is_told_before_anything_is_made():
    """A systemd unit started as root with CapabilityBoundingSet=CAP_NET_ADMIN, say."""
    def work():
        caps = privileges._Capabilities()
        caps.set_proc("cap_net_admin=ep")
        privileges.check_supported(NOBODY)

    answer = in_child(work)
    assert answer["error"] == ("PrivilegeError: cannot become user 'nobody': root here lacks CAP_CHOWN, CAP_SETGID,"
                               " CAP_SETUID, CAP_SETPCAP (a unit's CapabilityBoundingSet=?); start it as that user"
                               " instead (systemd: User=, Group=, AmbientCapabilities=CAP_NET_ADMIN), or leave out"
                               " user and group")
    assert in_child(lambda: privileges.check_supported(NOBODY)) == {"result": None}


@needs_root
def test_a_different_user_than_the_running_one_is_refused():
    def work():
        os.setresuid(NOBODY.uid, NOBODY.uid, NOBODY.uid)
        privileges.drop(privileges.Account("daemon", 1, "daemon", 1))

    answer = in_child(work)
    assert "but the config says user 'daemon'" in answer["error"]


def test_accounts_are_looked_up_with_the_fix():
    with pytest.raises(ValueError, match="no such user 'no-such-vpncrypt-user'.*useradd --system"):
        privileges.account("no-such-vpncrypt-user")
    with pytest.raises(ValueError, match="is root"):
        privileges.account("root")
    with pytest.raises(ValueError, match="no such group"):
        privileges.account("nobody", "no-such-vpncrypt-group")
    with pytest.raises(ValueError, match="root's group"):
        privileges.account("nobody", "root")
    nobody = privileges.account("nobody")
    assert (nobody.uid, nobody.group) == (65534, "nogroup")
    assert privileges.account("nobody", "daemon").gid == 1


# --- the files ---------------------------------------------------------------------------

@pytest.fixture
def shared(tmp_path):
    """A directory everyone may enter (pytest's tmp_path is not), with a server and a client config."""
    directory = Path(tempfile.mkdtemp(prefix="vpncrypt-privileges-", dir="/tmp"))
    os.chmod(directory, 0o755)
    state = directory / "state"
    try:
        assert keygen(["server", "--endpoint", "192.0.2.1:51820", "--tunnel", "203.0.113.1/24", "--out",
                       str(directory / "server.toml"), "--server-id", "3", "--state-directory", str(state)]) == 0
        assert keygen(["client", "--server-config", str(directory / "server.toml"), "--name", "alice",
                       "--out", str(directory / "alice.toml"), "--key-out", str(state / "alice.keys.json"),
                       "--client-state-directory", str(state)]) == 0
        yield directory
    finally:
        shutil.rmtree(directory)


def add_keys(path: Path, section: str, lines: str) -> None:
    path.write_text(path.read_text().replace(f"[{section}]\n", f"[{section}]\n{lines}\n", 1))


@needs_root
def test_a_config_the_daemons_group_may_read(shared):
    server = shared / "server.toml"
    add_keys(server, "server", 'user = "nobody"\ngroup = "nogroup"')
    with pytest.raises(ConfigError, match=r"could not read it once running.*chgrp nogroup .*server.toml && chmod 640"):
        load_server_config(server)  # 0600 root: nobody could not read it at a reload
    os.chmod(server, 0o640)
    with pytest.raises(ConfigError, match="readable by group or others.*chgrp nogroup"):
        load_server_config(server)  # the group is root's, not the daemon's
    os.chown(server, 0, NOBODY.gid)
    config = load_server_config(server)
    assert config.account == NOBODY
    os.chmod(server, 0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        load_server_config(server)


@needs_root
def test_keygen_changes_a_config_the_daemons_group_may_read(shared):
    """keygen checks its result as the server would load it: from a copy with
    the file's mode and owner, which its user must be able to read."""
    server = shared / "server.toml"
    add_keys(server, "server", 'user = "nobody"\ngroup = "nogroup"')
    os.chown(server, 0, NOBODY.gid)
    os.chmod(server, 0o640)
    assert keygen(["remove", "--server-config", str(server), "--name", "alice", "--reuse"]) == 0
    # No [[client]] left: not keygen's form, so the whole file is checked, from a copy.
    assert keygen(["client", "--server-config", str(server), "--name", "bob", "--out", str(shared / "bob.toml")]) == 0
    assert keygen(["client", "--server-config", str(server), "--name", "carol", "--out",
                   str(shared / "carol.toml")]) == 0
    info = server.stat()
    assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o640, 0, NOBODY.gid)
    assert [c.name for c in load_server_config(server, keyless="bob").clients] == ["bob", "carol"]


@needs_root
def test_the_user_and_group_keys_are_checked(shared):
    client = shared / "alice.toml"
    add_keys(client, "client", 'group = "nogroup"')
    with pytest.raises(ConfigError, match="group: goes with user"):
        load_client_config(client)
    client.write_text(client.read_text().replace('group = "nogroup"', 'user = "no-such-vpncrypt-user"'))
    with pytest.raises(ConfigError, match=r"\[client\] user: no such user 'no-such-vpncrypt-user'"):
        load_client_config(client)
    client.write_text(client.read_text().replace('user = "no-such-vpncrypt-user"', 'user = 3'))
    with pytest.raises(ConfigError, match="user: must be a string"):
        load_client_config(client)


@needs_root
def test_dns_and_a_user_are_refused_together(shared):
    """The resolver is put back at exit as root (resolvconf -d, /etc/resolv.conf)."""
    client = shared / "alice.toml"
    add_keys(client, "client", 'user = "nobody"\ndns = ["203.0.113.1"]')
    os.chown(client, 0, NOBODY.gid)
    os.chmod(client, 0o640)
    with pytest.raises(ConfigError, match=r"\[client\] user: cannot go with dns yet.*leave out user"):
        load_client_config(client)
    client.write_text(client.read_text().replace('dns = ["203.0.113.1"]\n', ""))
    assert load_client_config(client).account == NOBODY


@needs_root
def test_the_state_directory_is_handed_over_and_then_trusted(shared):
    server = shared / "server.toml"
    add_keys(server, "server", 'user = "nobody"')
    os.chown(server, 0, NOBODY.gid)
    os.chmod(server, 0o640)
    config = load_server_config(server)
    state = config.state_directory
    hand_over_state(config.account, state, "server")
    owned = {path.name: (path.stat().st_uid, path.stat().st_gid) for path in [state, *state.iterdir()]}
    assert owned["state"] == (65534, 65534)
    assert owned["server.keys.json"] == owned["server.keys.json.lock"] == (65534, 65534)  # the lock made here
    assert "alice.keys.json" in owned and owned["alice.keys.json"] == (0, 0)  # another daemon's file: left alone
    assert set(state_files(state, "server")) >= {"server.keys.json", "server.keys.json.lock", "server.bounds.json"}
    # Root (keygen, the next start) trusts the key store the daemon's user owns now, because the config names it...
    assert load_server_config(server).clients[0].name == "alice"
    # ... and keeps its owner when it rewrites it, and makes its lock the owner's.
    (state / "server.keys.json.lock").unlink()
    assert keygen(["rotate", "--server-config", str(server), "--name", "alice", "--out", str(shared / "alice2.toml"),
                   "--key-out", str(shared / "alice2.keys.json")]) == 0
    assert (state / "server.keys.json").stat().st_uid == 65534
    assert (state / "server.keys.json.lock").stat().st_uid == 65534
    # Without the user key the same store is somebody else's: refused.
    server.write_text(server.read_text().replace('user = "nobody"\n', ""))
    os.chmod(server, 0o600)
    with pytest.raises(ConfigError, match="owned by nobody"):
        load_server_config(server)


@needs_root
def test_a_state_directory_the_user_cannot_reach_is_refused(tmp_path):
    """pytest's tmp_path sits in a 0700 directory of root's."""
    with pytest.raises(privileges.PrivilegeError, match="inside a directory user 'nobody' cannot enter"):
        privileges.hand_over(tmp_path / "state-of-nobody", [], NOBODY)


@needs_root
def test_a_state_directory_not_writable_after_the_drop_is_one_line(shared):
    state = shared / "state"

    def work():
        os.setresgid(NOBODY.gid, NOBODY.gid, NOBODY.gid)
        os.setresuid(NOBODY.uid, NOBODY.uid, NOBODY.uid)
        privileges.check_writable(state, ["server.keys.json.lock"])

    answer = in_child(work)
    assert answer["error"].startswith(f"PrivilegeError: {state}/.probe.")
    assert f"not writable by user 'nobody' (Permission denied), and the key store is rewritten as epochs pass; fix" \
           f" it with: chown -R nobody {state}" in answer["error"]
