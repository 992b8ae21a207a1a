"""A key left behind when a [[client]] is deleted by hand never goes to the next
client given that ID: the server's key store records whose key each is, keygen
writes the name, and a start, a reload or keygen refuses a client whose name
is not the recorded one. No root needed."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from vpncrypt import control, key_store, server as server_module
from vpncrypt.cli import keygen
from vpncrypt.cli.daemons import server_main
from vpncrypt.config import ConfigError, load_server_config
from vpncrypt.server import check_key_owners, run_server

from tests.builders import keygen_server


@pytest.fixture
def server(tmp_path) -> Path:
    return keygen_server(tmp_path / "server.toml", "192.0.2.1:51820", 9, {5: "alice", 6: "carol"})


def store(state_directory: Path) -> Path:
    return key_store.store_path(state_directory, "server")


def hand_edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


ALICE = '[[client]]\nname = "alice"\nclient_id = 5\naddresses = ["203.0.113.2/32"]\n'
BOB = '[[client]]\nname = "bob"\nclient_id = 5\naddresses = ["203.0.113.9/32"]\n'


def test_keygen_records_whose_key_it_is(server, state_directory):
    assert key_store.load(store(state_directory)).names == {5: "alice", 6: "carol"}
    assert keygen.main(["rotate", "--server-config", str(server), "--name", "carol",
                        "--out", str(server.parent / "carol.toml")]) == 0
    assert keygen.main(["remove", "--server-config", str(server), "--name", "alice"]) == 0
    table = key_store.load(store(state_directory))
    assert table.names == {6: "carol"} and set(table.keys) == {6}


def test_a_client_added_by_hand_with_a_removed_clients_id_never_gets_its_key(server, state_directory, capsys):
    alices_key = key_store.load(store(state_directory)).keys[5]
    hand_edit(server, ALICE, BOB)  # alice deleted by hand, bob added by hand with her ID
    with pytest.raises(ConfigError) as refused:
        load_server_config(server)
    assert str(refused.value) == (
        f"{server}: [[client]] 'bob' (ID 5): the key store of server.toml holds the key of client 'alice' for"
        " this ID (its [[client]] deleted by hand?), which is never given to another client; give 'bob' its own"
        f" key with: vpncrypt-keygen rotate --server-config {server} --name bob --out bob.toml, or take it out"
        f" with: vpncrypt-keygen remove --server-config {server} --name bob (if it is 'alice' renamed, give it"
        " back that name)")
    # A start stops with that line, exit status 2, and never a key.
    capsys.readouterr()
    assert server_main(["--config", str(server), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"vpncrypt-server: error: {refused.value}\n"
    assert key_store.encode_key(alices_key[1]) not in err
    # keygen refuses the file too, but for the fixes it names.
    assert keygen.main(["list", "--server-config", str(server)]) == 2
    assert keygen.main(["rotate", "--server-config", str(server), "--name", "bob",
                        "--out", str(server.parent / "bob.toml")]) == 0
    assert ("it had none (the key of 'alice' that the store held for its ID is erased): the server takes it when"
            " it reloads") in capsys.readouterr().out
    table = key_store.load(store(state_directory))
    assert table.names[5] == "bob" and table.keys[5] != alices_key
    [bob] = [c for c in load_server_config(server).clients if c.client_id == 5]
    assert bob.name == "bob" and (bob.key_epoch, bob.key) == table.keys[5]


def test_removing_the_client_added_by_hand_erases_the_key_left_behind(server, state_directory):
    hand_edit(server, ALICE, BOB)
    assert keygen.main(["remove", "--server-config", str(server), "--name", "bob"]) == 0
    table = key_store.load(store(state_directory))
    assert set(table.keys) == set(table.names) == {6}
    assert [c.name for c in load_server_config(server).clients] == ["carol"]


def test_a_client_renamed_by_hand_is_refused_until_its_name_is_back(server):
    hand_edit(server, 'name = "alice"', 'name = "alicia"')
    with pytest.raises(ConfigError, match="holds the key of client 'alice' for this ID"):
        load_server_config(server)
    hand_edit(server, 'name = "alicia"', 'name = "alice"')
    assert [c.name for c in load_server_config(server).clients] == ["alice", "carol"]


def without_names(path: Path) -> None:
    """Make the store one written before names were kept."""
    data = json.loads(path.read_text())
    for entry in data["keys"].values():
        del entry["name"]
    path.write_text(json.dumps(data))


def test_a_store_from_before_names_loads_and_the_next_keygen_run_names_every_key(server, state_directory):
    without_names(store(state_directory))
    assert [c.name for c in load_server_config(server).clients] == ["alice", "carol"]
    assert keygen.main(["client", "--server-config", str(server), "--name", "dave",
                        "--out", str(server.parent / "dave.toml"), "--client-id", "7"]) == 0
    assert key_store.load(store(state_directory)).names == {5: "alice", 6: "carol", 7: "dave"}


def test_the_start_names_the_keys_of_an_old_store_and_reports_keys_no_client_has(server, state_directory, caplog):
    path = store(state_directory)
    without_names(path)
    table = key_store.load(path)
    table.keys[8] = table.keys[6]  # a key from before names, whose client was deleted by hand
    key_store.write(path, table)
    with caplog.at_level(logging.WARNING):
        check_key_owners(load_server_config(server))
    assert key_store.load(path).names == {5: "alice", 6: "carol"}
    # Found by a fresh user: whether a [[client]] took another's ID by hand
    # before names were kept, nothing can tell; the start says so, once.
    upgraded, line = [r.getMessage() for r in caplog.records]
    assert upgraded == (f"{path}: recorded whose key each of 2 client IDs holds (the store is older than names): as"
                        f" {server} names them now. If a [[client]] was put in place of another by hand with its ID,"
                        " it holds the other's key: give it its own with vpncrypt-keygen rotate")
    assert line == (f"{path}: holds a key for client ID 8, which no [[client]] in {server} has (deleted by hand?),"
                    " with no name recorded (the store is older than names): a [[client]] given ID 8 by hand would"
                    " take this key; add clients with vpncrypt-keygen client, or give one added by hand a new key"
                    " with vpncrypt-keygen rotate")
    caplog.clear()
    hand_edit(server, ALICE, "")  # now with her name recorded
    with caplog.at_level(logging.WARNING):
        check_key_owners(load_server_config(server))
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: holds a key for client ID 5 ('alice'), which no [[client]] in {server} has (deleted by hand?):"
        " it is used for no one, and a [[client]] with that ID is refused unless it is named 'alice'; erase it"
        f" with: vpncrypt-keygen remove --server-config {server} --name alice",
        line,
    ]
    assert not any(key in caplog.text for key in re.findall(r'"key": "([^"]+)"', path.read_text()))


def test_remove_erases_a_key_left_behind_by_name_and_retires_its_id(server, state_directory, capsys):
    hand_edit(server, ALICE, "")
    capsys.readouterr()
    assert keygen.main(["remove", "--server-config", str(server), "--name", "alice"]) == 0
    assert capsys.readouterr().out.startswith(f"erased the key of client 'alice' (ID 5) from {store(state_directory)}")
    table = key_store.load(store(state_directory))
    assert set(table.keys) == {6} and table.names == {6: "carol"}
    assert load_server_config(server).retired_client_ids == {5}
    assert keygen.main(["remove", "--server-config", str(server), "--name", "alice"]) == 2
    assert "no client named 'alice'" in capsys.readouterr().err


def test_a_server_start_checks_whose_keys_it_holds(server, state_directory, tmp_path, monkeypatch, caplog):
    """run_server itself, stopped right after that check (before any device)."""
    hand_edit(server, ALICE, "")
    monkeypatch.setenv(control.RUN_DIR_VARIABLE, str(tmp_path / "run"))

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(server_module, "build_core", stop)
    with caplog.at_level(logging.WARNING), pytest.raises(Stop):
        run_server(load_server_config(server))
    assert "holds a key for client ID 5 ('alice'), which no [[client]]" in caplog.text
