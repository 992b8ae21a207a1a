"""vpncrypt-keygen managing a live server.toml: add, remove, rotate, list; comments and
layout kept, IDs chosen at random and never reused, a lock against two runs at once,
odd names refused or written as valid TOML. No root needed (one owner check uses it)."""

from __future__ import annotations

import difflib
import fcntl
import gc
import ipaddress
import os
import random
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomlkit

from vpncrypt import control, key_store
from vpncrypt.cli import keygen, server_file
from vpncrypt.config import load_client_config, load_server_config, load_server_file
from vpncrypt.core.server import ClientEntry
from vpncrypt.core.epochs import epoch_key
from vpncrypt.core.keys import encode_key
from vpncrypt.server import client_routes

from tests.builders import install_client_keys

BIN = Path(sys.executable).parent
HAND_EDITED = """# vpncrypt server configuration, kept by hand as well.
[server]
server_id = 9   # do not change: every client names it
port = 51820
endpoint = "[2001:db8:ffff::1]:51820"
tunnel = [
    "203.0.113.1/24",  # IPv4
    "2001:db8::1/64",
]
client_to_client = false
"""


def keygen_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vpncrypt-keygen"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def add(directory: Path, name: str, *extra: str) -> int:
    assert keygen.main(["client", "--server-config", str(directory / "server.toml"), "--name", name,
                        "--out", str(directory / f"{name}.toml"), *extra]) == 0
    install_client_keys(directory)
    return load_client_config(directory / f"{name}.toml").client_id


@pytest.fixture
def server(tmp_path, state_directory) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(HAND_EDITED)
    path.chmod(0o600)
    key_store.write(key_store.store_path(state_directory, "server"), key_store.KeyTable(3600))  # as keygen server does
    return path


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"]


def test_adding_a_client_appends_and_leaves_every_line_as_it_was(server):
    add(server.parent, "laptop")
    text = server.read_text()
    assert text.startswith(HAND_EDITED)
    assert tomllib.loads(text)["client"][0]["name"] == "laptop"
    assert [c.name for c in load_server_config(server).clients] == ["laptop"]


def test_client_ids_are_random_among_the_free_ones(server, monkeypatch):
    ids = [add(server.parent, f"c{i}") for i in range(6)]
    assert len(set(ids)) == 6 and all(1 <= i <= 65535 for i in ids)
    assert sorted(ids) != list(range(1, 7)) and sorted(ids) != list(range(min(ids), min(ids) + 6))
    chosen_from = []
    monkeypatch.setattr(keygen.secrets, "choice", lambda free: chosen_from.append(free) or free[0])
    add(server.parent, "next")
    assert set(chosen_from[0]).isdisjoint(ids) and len(chosen_from[0]) == 65535 - 6


def test_removing_a_client_takes_its_lines_and_its_comment_and_retires_its_id(server):
    directory = server.parent
    a, b, c = (add(directory, name) for name in ("a", "b", "c"))
    text = server.read_text()
    text = text.replace('[[client]]\nname = "b"', "# Bob's phone, since May\n[[client]]\nname = \"b\"  # Bob")
    text = text.replace('[[client]]\nname = "c"', "# Carol\n[[client]]\nname = \"c\"")
    server.write_text(text + "# the end\n")
    before = server.read_text()
    assert keygen.main(["remove", "--server-config", str(server), "--name", "b"]) == 0
    after = server.read_text()
    removed = [line for line in changed_lines(before, after) if line.startswith("-")]
    assert removed[0] == "- # Bob's phone, since May" and '- name = "b"  # Bob' in removed
    assert len(removed) == 6 and removed[-1] == "- "  # comment, header, three keys, the blank line after them
    assert b not in key_store.load(key_store.store_path(directory / "state", "server")).keys  # nor its key
    assert "# Carol\n[[client]]\nname = \"c\"" in after and after.rstrip().endswith("]")
    assert "# the end" in after
    config = load_server_config(server)
    assert [c.name for c in config.clients] == ["a", "c"]
    assert config.retired_client_ids == {b}
    assert [str(n) for n in config.retired_addresses] == ["203.0.113.3/32", "2001:db8::3/128"]
    # Neither the ID nor the addresses go to the next client ...
    d = load_client_config(directory / "d.toml") if add(directory, "d") else None
    assert d.client_id not in (a, b, c) and str(d.addresses[0]) == "203.0.113.5/24"
    done = keygen_run("client", "--server-config", server, "--name", "e", "--out", "e.toml",
                      "--client-id", b, cwd=directory)
    assert done.returncode == 2 and "is retired" in done.stderr
    done = keygen_run("client", "--server-config", server, "--name", "e", "--out", "e.toml",
                      "--address", "203.0.113.3", cwd=directory)
    assert done.returncode == 2 and "is retired" in done.stderr
    # ... until the operator deletes them from [retired].
    server.write_text(server.read_text().replace(f"client_ids = [{b}]", "client_ids = []"))
    assert add(directory, "e", "--client-id", str(b)) == b


def test_remove_with_reuse_retires_nothing(server):
    add(server.parent, "a")
    assert keygen.main(["remove", "--server-config", str(server), "--name", "a", "--reuse"]) == 0
    assert "retired" not in server.read_text() and load_server_config(server).clients == ()


def test_rotate_changes_the_key_only_and_keeps_every_file_line(server):
    directory = server.parent
    client_id = add(directory, "laptop")
    add(directory, "phone")
    client_file = directory / "laptop.toml"
    client_file.write_text(client_file.read_text().replace("routes = []", 'routes = ["192.0.2.0/24"]  # office'))
    old_key = load_client_config(client_file).key
    before, client_before = server.read_text(), client_file.read_text()
    assert keygen.main(["rotate", "--server-config", str(server), "--name", "laptop", "--out", str(client_file)]) == 0
    # The keys are in the key stores, so neither config changes at all.
    assert server.read_text() == before and client_file.read_text() == client_before
    assert stat.S_IMODE((directory / "laptop.keys.json").stat().st_mode) == 0o600
    install_client_keys(directory)
    rotated = load_client_config(client_file)
    assert rotated.key != old_key and rotated.client_id == client_id
    entry = next(c for c in load_server_config(server).clients if c.name == "laptop")
    assert entry.key == rotated.key and entry.key_epoch == rotated.key_epoch and entry.client_id == client_id
    # A new file for it, written afresh: same ID and addresses, with the tunnel prefix.
    assert keygen.main(["rotate", "--server-config", str(server), "--name", "laptop",
                        "--out", str(directory / "laptop-new.toml")]) == 0
    install_client_keys(directory)
    fresh = load_client_config(directory / "laptop-new.toml")
    assert fresh.client_id == client_id and fresh.key != rotated.key
    assert [str(a) for a in fresh.addresses] == [str(a) for a in rotated.addresses] == [
        "203.0.113.2/24", "2001:db8::2/64"]


def test_networks_behind_a_client_go_into_its_addresses_and_the_servers_routes(server, capsys):
    directory = server.parent
    client_id = add(directory, "site", "--allowed-ips", "192.0.2.0/26", "--allowed-ips", "2001:db8:100::/56",
                    "--allowed-ips", "203.0.113.2/31")  # a block of tunnel addresses: its own address skips it
    assert "addresses 203.0.113.4/24, 2001:db8::2/64, behind it 192.0.2.0/26, 2001:db8:100::/56, 203.0.113.2/31;" \
        in capsys.readouterr().out
    entry = next(c for c in load_server_config(server).clients if c.name == "site")
    assert [str(n) for n in entry.addresses] == ["203.0.113.4/32", "2001:db8::2/128", "192.0.2.0/26",
                                                 "2001:db8:100::/56", "203.0.113.2/31"]
    assert [str(n) for n in client_routes(load_server_config(server))] == ["192.0.2.0/26", "2001:db8:100::/56"]
    # On the client its own addresses only: routes are what it reaches through the tunnel.
    site = load_client_config(directory / "site.toml")
    assert site.client_id == client_id and site.routes == ()
    assert [str(a) for a in site.addresses] == ["203.0.113.4/24", "2001:db8::2/64"]
    comment = ("# The server routes 192.0.2.0/26, 2001:db8:100::/56, 203.0.113.2/31 to this client: let this machine"
               " forward them\n")
    assert comment in (directory / "site.toml").read_text()
    # A config rotate writes afresh says so too.
    assert keygen.main(["rotate", "--server-config", str(server), "--name", "site",
                        "--out", str(directory / "site-new.toml")]) == 0
    assert comment in (directory / "site-new.toml").read_text()


@pytest.mark.parametrize("extra, problem", [
    (["--allowed-ips", "192.0.2.128/25"],
     "--allowed-ips: 192.0.2.128/25 of client 'new' overlaps 192.0.2.0/24 of client 'site'"),
    (["--allowed-ips", "192.0.2.0/23"],
     "--allowed-ips: 192.0.2.0/23 of client 'new' overlaps 192.0.2.0/24 of client 'site'"),
    (["--allowed-ips", "203.0.113.0/31"],
     "--allowed-ips: 203.0.113.0/31 of client 'new' overlaps 203.0.113.1/32 of the server"),
    (["--allowed-ips", "203.0.113.2/32"],
     "--allowed-ips: 203.0.113.2/32 of client 'new' overlaps 203.0.113.2/32 of client 'site'"),
    (["--allowed-ips", "2001:db8::/127"],
     "--allowed-ips: 2001:db8::/127 of client 'new' overlaps 2001:db8::1/128 of the server"),
    (["--allowed-ips", "198.51.100.0/24", "--allowed-ips", "198.51.100.64/26"],
     "--allowed-ips: 198.51.100.64/26 of client 'new' overlaps 198.51.100.0/24 of client 'new'"),
    (["--allowed-ips", "203.0.113.3/32"], "--allowed-ips: 203.0.113.3/32 overlaps 203.0.113.3/32, which is retired"),
    (["--allowed-ips", "198.51.100.1/24"],
     "--allowed-ips: 198.51.100.1/24 has host bits set; the network is 198.51.100.0/24"),
    (["--allowed-ips", "0.0.0.0/0"], "--allowed-ips: 0.0.0.0/0: a default route is only for a client's routes"),
    (["--allowed-ips", "2001:db8:ff00::/40"],  # found by a fresh user: the server's own network
     "--allowed-ips: 2001:db8:ff00::/40 holds the server's own endpoint 2001:db8:ffff::1"),
    (["--allowed-ips", "office"], "--allowed-ips: 'office' is not a network (like 192.0.2.0/24)"),
    (["--allowed-ips", "203.0.113.64/26", "--address", "203.0.113.70"],
     "--address: 203.0.113.70 of client 'new' overlaps 203.0.113.64/26 of client 'new'"),
])
def test_a_network_behind_a_client_that_overlaps_is_refused_and_changes_nothing(server, state_directory, capsys,
                                                                               extra, problem):
    directory = server.parent
    add(directory, "site", "--allowed-ips", "192.0.2.0/24")
    add(directory, "gone")
    assert keygen.main(["remove", "--server-config", str(server), "--name", "gone"]) == 0  # retires .3
    store = key_store.store_path(state_directory, "server")
    before = (server.read_bytes(), store.read_bytes())
    capsys.readouterr()
    assert keygen.main(["client", "--server-config", str(server), "--name", "new", "--out", str(directory / "new.toml"),
                        *extra]) == 2
    assert capsys.readouterr().err.startswith(f"vpncrypt-keygen: error: {problem}")
    assert (server.read_bytes(), store.read_bytes()) == before and not (directory / "new.toml").exists()


def test_rotate_says_the_state_directory_of_the_config_the_client_has(server):
    directory = server.parent
    assert keygen.main(["client", "--server-config", str(server), "--name", "laptop", "--out",
                        str(directory / "laptop.toml"), "--client-state-directory", "/srv/vpn/laptop-state"]) == 0
    done = keygen_run("rotate", "--server-config", server, "--name", "laptop", "--out", "laptop.toml",
                      cwd=directory)
    assert done.returncode == 0, done.stderr
    assert "in its state directory (/srv/vpn/laptop-state)" in done.stdout + done.stderr


def test_rotate_refuses_another_clients_file(server):
    add(server.parent, "laptop")
    add(server.parent, "phone")
    before = server.read_text()
    done = keygen_run("rotate", "--server-config", server, "--name", "laptop", "--out", "phone.toml",
                      cwd=server.parent)
    assert done.returncode == 2 and "is not the config of client 'laptop'" in done.stderr
    assert server.read_text() == before


def test_list_names_clients_and_never_a_key(server):
    add(server.parent, "laptop")
    add(server.parent, "phone")
    keygen.main(["remove", "--server-config", str(server), "--name", "phone"])
    done = keygen_run("list", "--server-config", server, cwd=server.parent)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "ADDRESSES"] and lines[1].startswith("laptop ")
    assert "retired" in lines[2] and "203.0.113.3/32" in lines[2]
    key = encode_key(load_client_config(server.parent / "laptop.toml").key)
    assert key not in done.stdout and key[:20] not in done.stdout


@pytest.mark.parametrize("name", ['quote " and \\ backslash', "José's laptop", "日本", "a#b = [c]"])
def test_odd_names_make_valid_toml_the_server_takes(server, name):
    add_args = ["client", "--server-config", str(server), "--name", name, "--out", str(server.parent / "x.toml")]
    assert keygen.main(add_args) == 0
    install_client_keys(server.parent)
    assert load_server_config(server).clients[0].name == name
    assert load_client_config(server.parent / "x.toml").name == name


@pytest.mark.parametrize("name, message", [
    (b"caf\xe9", "not valid UTF-8"),
    (b"two\nlines", "control"),
    (b"tab\there", "control"),
    (b"zero\xe2\x80\x8bwidth", "invisible"),
    (b" padded", "no spaces at the start or end"),
    (b"x" * 65, "1 to 64 characters"),
])
def test_names_the_server_would_refuse_or_a_log_would_garble_are_refused(server, name, message):
    before = server.read_text()
    done = subprocess.run([os.fsencode(BIN / "vpncrypt-keygen"), b"client", b"--server-config", bytes(server),
                           b"--name", name, b"--out", b"x.toml"], capture_output=True, cwd=server.parent, timeout=60)
    assert done.returncode == 2 and message in done.stderr.decode() and b"Traceback" not in done.stderr
    assert server.read_text() == before and not (server.parent / "x.toml").exists()


def test_the_server_file_keeps_its_mode_and_owner(server):
    server.chmod(0o400)
    if os.geteuid() == 0:  # another group (another owner would be refused: tests/cli/test_trust.py)
        os.chown(server, 0, 65534)
    add(server.parent, "laptop")
    keygen.main(["rotate", "--server-config", str(server), "--name", "laptop", "--out", str(server.parent / "l.toml")])
    keygen.main(["remove", "--server-config", str(server), "--name", "laptop"])
    info = server.stat()
    assert stat.S_IMODE(info.st_mode) == 0o400
    if os.geteuid() == 0:
        assert (info.st_uid, info.st_gid) == (0, 65534)
    assert [p.name for p in server.parent.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_two_runs_at_once_lose_no_client(server):
    directory = server.parent
    runs = [subprocess.Popen([str(BIN / "vpncrypt-keygen"), "client", "--server-config", str(server),
                              "--name", f"c{i}", "--out", str(directory / f"c{i}.toml")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    for run in runs:
        _, error = run.communicate(timeout=60)
        assert run.returncode == 0, error
    config = load_server_config(server)
    assert sorted(c.name for c in config.clients) == sorted(f"c{i}" for i in range(8))
    assert len({c.client_id for c in config.clients}) == 8
    install_client_keys(directory)
    for i in range(8):
        own = load_client_config(directory / f"c{i}.toml")
        assert next(c for c in config.clients if c.name == f"c{i}").key == own.key


def test_a_held_lock_makes_a_second_run_wait_then_give_up(server, monkeypatch):
    monkeypatch.setattr(server_file, "LOCK_WAIT", 0.3)
    with open(str(server) + ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(keygen.ConfigError, match="another vpncrypt-keygen is changing it"):
            keygen.make_client(keygen_args(server, "laptop"))
    assert "laptop" not in server.read_text()


def keygen_args(server: Path, name: str):
    return type("Args", (), {"server_config": str(server), "name": name, "out": str(server.parent / f"{name}.toml"),
                             "address": None, "client_id": None, "reload": False, "key_out": None,
                             "client_state_directory": None})()


def test_reload_without_a_running_server_says_so_and_keeps_the_change(server, tmp_path, monkeypatch):
    monkeypatch.setenv(control.RUN_DIR_VARIABLE, str(tmp_path / "run"))
    done = keygen_run("client", "--server-config", server, "--name", "laptop", "--out", "laptop.toml", "--reload",
                      cwd=server.parent)
    assert done.returncode == 1 and "no daemon named 'server' is running" in done.stderr
    assert "the change takes effect when it starts" in done.stderr
    assert [c.name for c in load_server_config(server).clients] == ["laptop"]


def test_a_removed_client_in_a_file_with_multiline_values_and_lookalike_text(server):
    add(server.parent, "a")
    add(server.parent, "b")
    text = server.read_text().replace('[[client]]\nname = "a"', '[[client]]\nname = "a"\n# [[client]] in a comment')
    text = text.replace('addresses = ["203.0.113.3/32", "2001:db8::3/128"]',
                        'addresses = [\n    "203.0.113.3/32",\n    "2001:db8::3/128",\n]')
    server.write_text(text)
    assert keygen.main(["remove", "--server-config", str(server), "--name", "a"]) == 0
    after = server.read_text()
    assert "# [[client]] in a comment" not in after
    assert 'addresses = [\n    "203.0.113.3/32",\n    "2001:db8::3/128",\n]' in after
    assert [c.name for c in load_server_config(server).clients] == ["b"]


def test_keygen_never_overwrites_or_deletes_a_file_it_was_not_asked_to_make(server, state_directory):
    """Found by a new user: a --key-out or --out naming the server's own files, or
    an existing file, was deleted or overwritten while keygen said it refused."""
    directory = server.parent
    add(directory, "a")
    store = key_store.store_path(state_directory, "server")
    precious = directory / "precious.keys.json"
    precious.write_text("precious")
    before = {path: path.read_bytes() for path in (server, store, precious)}
    for args in (
        ["client", "--name", "b", "--out", str(directory / "b.toml"), "--key-out", str(store)],
        ["client", "--name", "b", "--out", str(directory / "b.toml"), "--key-out", str(server)],
        ["client", "--name", "b", "--out", str(directory / "b.toml"), "--key-out", str(precious)],
        ["client", "--name", "b", "--out", str(state_directory / "server.toml")],
        ["rotate", "--name", "a", "--out", str(directory / "a.toml"), "--key-out", str(store)],
        ["rotate", "--name", "a", "--out", str(directory / "a.toml"), "--key-out", str(server)],
        ["rotate", "--name", "a", "--out", str(directory / "a.toml"), "--key-out", str(precious)],
    ):
        assert keygen.main([args[0], "--server-config", str(server), *args[1:]]) == 2, args
        assert {path: path.read_bytes() for path in (server, store, precious)} == before, args
        assert not (directory / "b.toml").exists()
    # Its own old key file, though, is replaced by rotate.
    own = state_directory / "a.keys.json"
    old = own.read_bytes()
    assert keygen.main(["rotate", "--server-config", str(server), "--name", "a", "--out", str(directory / "a.toml"),
                        "--key-out", str(own)]) == 0
    assert own.read_bytes() != old and key_store.load(own).keys.keys() == {load_client_config(directory / "a.toml")
                                                                           .client_id}


def test_list_into_head_is_no_error(server):
    """A reader that stops early (| head): here one that never reads, its end of
    the pipe closed before keygen (which takes a while to start) writes."""
    add(server.parent, "a")
    read_end, write_end = os.pipe()
    os.close(read_end)
    done = subprocess.run([str(BIN / "vpncrypt-keygen"), "list", "--server-config", str(server)],
                          stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(write_end)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def random_server_text(rng) -> str:
    """A server.toml of keygen's form, with what operators add: comments, blank
    lines, [retired] anywhere, multi-line values whose lines look like headers."""
    server = ['[server]', 'server_id = 1', 'endpoint = "192.0.2.1:51820"', 'tunnel = ["203.0.113.1/24"]']
    if rng.random() < 0.3:
        server += ['extra = [', '[1]', ']'] if rng.random() < 0.5 else ['# [[client]] not a table']
    parts = [server]
    for i in range(rng.randint(0, 8)):
        table = [*(["# about c%d" % i] if rng.random() < 0.4 else []), "[[client]]", f'name = "c{i}"',
                 f"client_id = {i + 1}", f'addresses = ["203.0.113.{i + 2}/32"]']
        if rng.random() < 0.3:
            table.insert(rng.randint(2, len(table)), "# inside")
        parts.append(table)
    if rng.random() < 0.6:
        retired = ["[retired]", "client_ids = [77]", 'addresses = ["203.0.113.99/32"]']
        if rng.random() < 0.3:
            retired += ["note = [", "[2]", "]"]
        parts.insert(rng.randint(1, len(parts)), retired)
    lines = []
    for part in parts:
        lines += part + [""] * rng.randint(0, 2) + (["# trailing words"] if rng.random() < 0.2 else [])
    return "\n".join(lines) + ("\n" if rng.random() < 0.8 else "")


def retired(text: str, gone: ClientEntry) -> str:
    return server_file.ServerText(text, server_file.plain_table_headers(text), None).retire([gone]).text


def test_the_fast_reading_of_a_keygen_file_finds_the_tables_tomlkit_finds():
    """client_spans and ServerText.retire read keygen's form line by line (15 s of
    tomlkit at 65,536 clients); on anything else they use tomlkit. Both ways
    must cut the same text and give files that load the same."""
    rng = random.Random(5)
    fast_files = 0
    for _ in range(400):
        text = random_server_text(rng)
        fast = server_file.plain_table_headers(text) is not None
        fast_files += fast
        assert server_file.client_spans(text) == server_file._client_spans_by_tomlkit(text)
        clients = tomllib.loads(text).get("client", [])
        if not clients:
            continue
        gone = ClientEntry(clients[0]["client_id"], bytes(64), 0,
                           (ipaddress.ip_network(clients[0]["addresses"][0]),), clients[0]["name"])
        document = tomlkit.parse(text)
        server_file._retire(document, gone)
        assert tomllib.loads(retired(text, gone)) == tomllib.loads(tomlkit.dumps(document))
        if fast and "[retired]" in text:  # only the [retired] table's lines change
            before, after = text.split("[retired]")[0], retired(text, gone).split("[retired]")[0]
            assert before == after
    assert 150 < fast_files < 400  # both ways were exercised


def test_network_text_is_what_ipaddress_writes():
    rng = random.Random(7)
    special = ["::/0", "::1/128", "2001:db8::/32", "2001:db8:0:1::/64", "2001:0:0:1::1/128", "::ffff:192.0.2.1/128",
               "2001:db8:1:0:0:1:0:0/128", "203.0.113.5/32", "1:0:0:0:0:0:0:0/128", "0:0:0:0:0:0:0:1/128"]
    networks = [ipaddress.ip_network(n) for n in special]
    for _ in range(3000):
        hextets = [rng.choice([0, 0, 0, 1, 0xdb8, rng.randrange(65536)]) for _ in range(8)]
        address = ipaddress.IPv6Address(":".join(f"{h:x}" for h in hextets))
        networks.append(ipaddress.ip_network(f"{address}/128"))
    assert [server_file.network_text(n) for n in networks] == [str(n) for n in networks]


def test_a_keygen_run_gives_the_cyclic_collector_back_even_when_it_fails(server, tmp_path):
    """keygen pauses the collector while it holds a loaded config (config.collector_paused)."""
    assert gc.isenabled()
    add(tmp_path, "a")
    assert gc.isenabled()
    assert keygen.main(["remove", "--server-config", str(server), "--name", "nobody-of-that-name"]) != 0
    assert gc.isenabled()


def the_server_moves_a_key_on_after_keygen_read(monkeypatch, name: str, key=None) -> list[tuple[int, int]]:
    """Between keygen's first read of the key store (with server.toml, unlocked)
    and its second (under the store's lock), the running server moves client
    ``name``'s key to the next epoch (key_store.advance, as the daemon does),
    or, with ``key``, something else puts ``key`` in its place. Returns the
    (old, new) epochs once keygen has read."""
    moved = []

    def load_then_move(path, **options):
        loaded = load_server_file(path, **options)
        server = loaded[0]
        store = key_store.store_path(server.state_directory, Path(path).stem)
        entry = next(client for client in server.clients if client.name == name)
        epoch = entry.key_epoch + 1
        if key is None:
            key_store.advance(store, {entry.client_id: (epoch, epoch_key(entry.key, entry.key_epoch, epoch))})
        else:
            table = key_store.load(store)
            table.keys[entry.client_id] = (epoch, key)
            key_store.write(store, table)
        moved.append((entry.key_epoch, epoch))
        return loaded

    monkeypatch.setattr(keygen, "load_server_file", load_then_move)
    return moved


@pytest.mark.parametrize("command", ["client", "remove"])
def test_a_key_the_server_moves_on_while_keygen_runs_does_not_make_it_refuse(server, tmp_path, monkeypatch, command):
    """keygen compares the clients it read first with what the locked read of
    the key store gives; a key that moved forward on its chain meanwhile is
    the same client's key, not a change to another line."""
    add(tmp_path, "laptop")
    add(tmp_path, "phone")
    store = key_store.store_path(load_server_config(server).state_directory, "server")
    laptop = next(client for client in load_server_config(server).clients if client.name == "laptop")
    moved = the_server_moves_a_key_on_after_keygen_read(monkeypatch, "laptop")
    if command == "client":
        argv = ["client", "--server-config", str(server), "--name", "tablet", "--out", str(tmp_path / "tablet.toml")]
    else:
        argv = ["remove", "--server-config", str(server), "--name", "phone"]
    assert keygen.main(argv) == 0
    assert moved == [(laptop.key_epoch, laptop.key_epoch + 1)]
    # The key the server moved on stays moved on: keygen wrote what it read under the lock.
    assert key_store.load(store).keys[laptop.client_id] == (
        laptop.key_epoch + 1, epoch_key(laptop.key, laptop.key_epoch, laptop.key_epoch + 1))
    names = [client.name for client in load_server_config(server).clients]
    assert names == (["laptop", "phone", "tablet"] if command == "client" else ["laptop"])


def test_a_key_replaced_by_another_chain_while_keygen_runs_still_stops_it(server, tmp_path, monkeypatch, capsys):
    """Only a key moved forward on its own chain is taken as the same: any other
    change under keygen's feet leaves the file as it was."""
    add(tmp_path, "laptop")
    before = server.read_text()
    the_server_moves_a_key_on_after_keygen_read(monkeypatch, "laptop", key=os.urandom(64))
    assert keygen.main(["client", "--server-config", str(server), "--name", "tablet",
                        "--out", str(tmp_path / "tablet.toml")]) != 0
    assert "without touching other lines" in capsys.readouterr().err
    assert server.read_text() == before
