"""keygen checks a change of a file in its form on the tables it changed
(server_file.ServerText, config.changed_server_config): held here to what
loading the whole changed file as the server does gives, config and errors."""

from __future__ import annotations

import ipaddress
import os
import random
from pathlib import Path

from vpncrypt import key_store
from vpncrypt.cli import keygen, server_file
from vpncrypt.cli.server_file import ServerText, TableChanges
from vpncrypt.config import ConfigError, changed_server_config, load_server_config, load_server_file

from tests.cli.test_keygen_clients import add, random_server_text, server  # noqa: F401 (a fixture)


def block(name: str, client_id: int, *addresses: str) -> str:
    return (f'[[client]]\nname = "{name}"\nclient_id = {client_id}\n'
            f'addresses = [{", ".join(f"{a!r}".replace(chr(39), chr(34)) for a in addresses)}]\n')


def loaded(directory: Path, text: str, keys: key_store.KeyTable):
    """server.toml with ``text`` and its key store: the config, its text and headers."""
    path = directory / "server.toml"
    path.write_text(text.replace('[server]\n', f'[server]\nstate_directory = "{directory}"\n', 1))
    path.chmod(0o600)
    key_store.write(key_store.store_path(directory, "server"), keys)
    return load_server_file(path)


def whole_load(directory: Path, edited: ServerText, keys: key_store.KeyTable):
    """What the server would load from the edited text: the config, or the error's text."""
    (directory / "whole").mkdir(mode=0o700, exist_ok=True)
    path = directory / "whole" / "server.toml"  # the same name: errors name it
    path.write_text(edited.text if edited.text.endswith("\n") else edited.text + "\n")
    path.chmod(0o600)
    try:
        return load_server_config(path, keys)
    except ConfigError as error:
        return str(error).replace(str(path), "PATH")


def quick_check(before, edited: ServerText, keys: key_store.KeyTable):
    try:
        return changed_server_config(before, keys, **vars(edited.changes))
    except ConfigError as error:
        return str(error).replace(str(before.path), "PATH")


def same(quick, whole) -> bool:
    if isinstance(quick, str) or isinstance(whole, str):
        return quick == whole
    return quick == type(quick)(**{**vars(whole), "path": quick.path})


def keys_for(text: str) -> key_store.KeyTable:
    import tomllib
    clients = tomllib.loads(text).get("client", [])
    return key_store.KeyTable(3600, {c["client_id"]: (7, os.urandom(64)) for c in clients},
                              {c["client_id"]: c["name"] for c in clients})


def test_a_change_checked_on_its_tables_gives_what_loading_the_whole_file_gives(tmp_path):
    rng = random.Random(11)
    quick_paths = refused = 0
    for round in range(250):
        text = random_server_text(rng)
        directory = tmp_path / str(round)
        directory.mkdir(mode=0o700)
        keys = keys_for(text)
        try:
            before, read_text, headers = loaded(directory, text, keys)
        except ConfigError:
            continue
        read = ServerText.read(read_text, headers)
        names = [c.name for c in before.clients]
        ids = [c.client_id for c in before.clients]
        edits = []
        # An added client: a fresh one, or one that repeats a name, an ID, an
        # address (the server's own too), or has no key in the store.
        new_id = rng.choice([500, 501, 502, *ids[:1]])
        new_name = rng.choice(["new", "newer", "newest", *names[:1]])
        address = rng.choice(["203.0.113.200/32", "2001:db8::9/128"] * 3 + ["203.0.113.1/32", "203.0.113.0/24",
                                                                            "203.0.113.2/32"])
        add_keys = key_store.KeyTable(3600, dict(keys.keys), dict(keys.names))
        if rng.random() < 0.7:
            add_keys.keys[new_id] = (7, os.urandom(64))
            add_keys.names.setdefault(new_id, new_name)
        edits.append((read.add_client(block(new_name, new_id, address)), add_keys))
        if before.clients:
            index = rng.randrange(len(before.clients))
            remove_keys = key_store.KeyTable(3600, {i: k for i, k in keys.keys.items() if i != ids[index]},
                                             dict(keys.names))
            removed = read.remove_client(index)
            edits.append((removed, remove_keys))
            edits.append((removed.retire([before.clients[index]]), remove_keys))
        edits.append((read.retire([before.clients[0] if before.clients else
                                   server_file.ClientEntry(900, b"", 0, (ipaddress.ip_network("2001:db8::99/128"),),
                                                           "gone")]), keys))
        for edited, edit_keys in edits:
            whole = whole_load(directory, edited, edit_keys)
            if edited.changes is None:
                # Only a file not of keygen's form is checked whole, or one left
                # without clients (which plain_table_headers does not take).
                assert headers is None or "[[client]]" not in edited.text
                continue
            quick_paths += 1
            quick = quick_check(before, edited, edit_keys)
            refused += isinstance(whole, str)
            assert same(quick, whole), (text, edited.text, quick, whole)
    assert quick_paths > 300 and 30 < refused < quick_paths / 2  # both ways, and refusals, were exercised


def test_an_added_text_of_two_tables_is_checked_whole(tmp_path):
    before, text, headers = loaded(tmp_path, '[server]\nserver_id = 1\ntunnel = ["203.0.113.1/24"]\n\n'
                                             + block("a", 1, "203.0.113.2/32"), keys_for(block("a", 1, "x")))
    read = ServerText.read(text, headers)
    assert read.add_client(block("b", 2, "203.0.113.3/32")).changes == TableChanges(
        added={"name": "b", "client_id": 2, "addresses": ["203.0.113.3/32"]})
    two = block("b", 2, "203.0.113.3/32") + block("c", 3, "203.0.113.4/32")
    assert read.add_client(two).changes is None
    assert read.add_client('[[client]]\nname = "b"\n[retired]\nclient_ids = [1]\n').changes is None
    assert read.add_client(block("b", 2, "203.0.113.3/32")).add_client(block("c", 3, "203.0.113.4/32")).changes is None


def test_keygen_checks_a_file_of_its_form_on_the_changed_tables_and_any_other_whole(server, monkeypatch):
    wholes = []
    load_text = server_file._load_text
    monkeypatch.setattr(server_file, "_load_text", lambda *args: wholes.append(args[0]) or load_text(*args))
    add(server.parent, "a")  # the file has no [[client]] yet: not of keygen's form
    assert len(wholes) == 1
    add(server.parent, "b")
    assert keygen.main(["remove", "--server-config", str(server), "--name", "a"]) == 0
    assert len(wholes) == 1
    server.write_text(server.read_text().replace('name = "b"', 'name = "\\u0062"'))  # an escape: tomllib's reading
    assert [c.name for c in load_server_config(server).clients] == ["b"]
    assert keygen.main(["remove", "--server-config", str(server), "--name", "b"]) == 0
    assert len(wholes) == 2 and load_server_config(server).clients == ()
