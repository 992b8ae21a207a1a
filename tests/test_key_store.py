"""The key store: keys out of the config files, moved forward and erased on disk,
never lost between keygen and a running daemon (docs/PROTOCOL.md 1.1)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import random
import re
import socket
import time
from pathlib import Path

import pytest

from vpncrypt import key_store
from vpncrypt.cli import keygen
from vpncrypt.config import load_client_config, load_server_config
from vpncrypt.core.epochs import epoch_key, oldest_needed_epoch
from vpncrypt.daemon import Daemon
from vpncrypt.restart_state import RestartStore
from vpncrypt.server import build_core
from vpncrypt.core.client import ClientCore
from vpncrypt.transport.udp import open_client_transport, open_server_transport
from vpncrypt.tun.memory import MemoryTun

from tests.builders import install_client_keys, spec_key_store, spec_vectors

HOUR = 3600


def test_the_spec_key_store_is_read_as_it_says_and_written_alike(tmp_path):
    """docs/PROTOCOL.md 9.4: vpncrypt reads the example key store to the root keys
    of its clients' vectors, and writes that table back to the same text."""
    text = spec_key_store()
    path = tmp_path / "server.keys.json"
    path.write_text(text)
    path.chmod(0o600)
    table = key_store.load(path)
    vectors = {int(v["client_id"]): v for v in spec_vectors() if v["root_key_seed"] in
               ("vpncrypt vector 1", "vpncrypt vector 7") and v["direction"] == "0x01"}
    assert table == key_store.KeyTable(3600, {client_id: (int(v["root_epoch"]), bytes.fromhex(v["root_key"]))
                                              for client_id, v in vectors.items()}, {1: "laptop", 3: "office"})
    key_store.write(path, table)
    assert path.read_text() == text


def test_a_store_round_trips_and_refuses_loose_permissions(tmp_path):
    path = tmp_path / "s.keys.json"
    table = key_store.KeyTable(60, {7: (100, os.urandom(64)), 65535: (5, os.urandom(64))})
    key_store.write(path, table)
    assert key_store.load(path) == table and oct(path.stat().st_mode & 0o777) == "0o600"
    path.chmod(0o640)
    with pytest.raises(key_store.KeyStoreError, match="readable by group or others.*chmod 600"):
        key_store.load(path)


def reference_text(table: key_store.KeyTable) -> str:
    """What the store's text was before it was put together by hand: json's own."""
    def entry(client_id):
        epoch, key = table.keys[client_id]
        names = {"name": table.names[client_id]} if client_id in table.names else {}
        return {"epoch": epoch, "key": base64.b64encode(key).decode(), **names}
    return json.dumps({"version": 1, "epoch_seconds": table.epoch_seconds,
                       "keys": {str(i): entry(i) for i in sorted(table.keys)}}, indent=1) + "\n"


def test_the_store_is_written_as_jsons_indenting_encoder_writes_it():
    rng = random.Random(5)
    names = ["laptop", "", 'a "quoted" \\ name', "caf\u00e9 \U0001f600", "tab\there", "\u2028", "x" * 64]
    tables = [key_store.KeyTable(60), key_store.KeyTable(3600, {0: (True, bytes(64))}, {0: "bool epoch"})]
    for _ in range(200):
        ids = rng.sample([0, 1, 7, 9, 10, 65535, 2**32 - 1, *range(100, 140)], rng.randint(1, 8))
        keys = {i: (rng.choice([0, 5, 500_000, 2**40]), rng.randbytes(64)) for i in ids}
        tables.append(key_store.KeyTable(rng.choice([60, 3600, 86400]), keys,
                                         {i: rng.choice(names) for i in ids if rng.random() < 0.7}))
    for table in tables:
        assert key_store._text(table) == reference_text(table)


@pytest.mark.parametrize("text, problem", [
    ("{", "not a valid key store"),
    ('{"version": 2, "epoch_seconds": 60, "keys": {}}', "key store version 2"),
    ('{"version": 1, "epoch_seconds": 5, "keys": {}}', "epoch_seconds must be from 60"),
    ('{"version": 1, "epoch_seconds": 60, "keys": {"1": {"epoch": 1, "key": "c2hvcnQ="}}}', "not a valid key store"),
])
def test_a_broken_store_is_named_in_one_line(tmp_path, text, problem):
    path = tmp_path / "s.keys.json"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(key_store.KeyStoreError, match=re.escape(str(path)) + ".*" + re.escape(problem)):
        key_store.load(path)


def test_the_daemon_moves_its_own_chains_forward_and_leaves_keygens_changes_alone(tmp_path):
    path = tmp_path / "s.keys.json"
    mine, rekeyed, removed = os.urandom(64), os.urandom(64), os.urandom(64)
    key_store.write(path, key_store.KeyTable(HOUR, {1: (10, mine), 2: (10, rekeyed)}))
    # The daemon moved clients 1, 2 and 3 to epoch 12; meanwhile keygen re-keyed 2 and removed 3.
    key_store.advance(path, {1: (12, epoch_key(mine, 10, 12)), 2: (12, epoch_key(os.urandom(64), 10, 12)),
                             3: (12, epoch_key(removed, 10, 12))})
    table = key_store.load(path)
    assert table.keys == {1: (12, epoch_key(mine, 10, 12)), 2: (10, rekeyed)}


def test_names_round_trip_and_a_store_without_them_still_loads(tmp_path):
    path = tmp_path / "s.keys.json"
    table = key_store.KeyTable(HOUR, {1: (10, os.urandom(64)), 2: (10, os.urandom(64))}, {1: "alice"})
    key_store.write(path, table)
    assert key_store.load(path) == table
    # A store written before names were kept: the same JSON without them.
    data = json.loads(path.read_text())
    assert data["keys"]["1"]["name"] == "alice" and "name" not in data["keys"]["2"]
    del data["keys"]["1"]["name"]
    path.write_text(json.dumps(data))
    assert key_store.load(path) == key_store.KeyTable(HOUR, table.keys, {})
    data["keys"]["1"]["name"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(key_store.KeyStoreError, match="a field is missing or of the wrong type"):
        key_store.load(path)


def test_recording_names_fills_in_only_the_missing_ones_and_writes_only_then(tmp_path):
    path = tmp_path / "s.keys.json"
    keys = {1: (10, os.urandom(64)), 2: (10, os.urandom(64)), 3: (10, os.urandom(64))}
    key_store.write(path, key_store.KeyTable(HOUR, keys, {1: "alice"}))
    # 1 is recorded as alice's: a config calling it "bob" does not change that;
    # 4 has no key: nothing to name.
    table, named = key_store.record_names(path, {1: "bob", 2: "carol", 4: "dave"})
    assert table.names == {1: "alice", 2: "carol"} and key_store.load(path).names == table.names and named == [2]
    written = path.stat().st_mtime_ns
    path.chmod(0o400)  # a write now would replace the file, and its mode with it
    assert key_store.record_names(path, {1: "alice", 2: "carol"})[0].names == {1: "alice", 2: "carol"}
    assert path.stat().st_mtime_ns == written and oct(path.stat().st_mode & 0o777) == "0o400"


def test_the_daemons_writes_keep_the_names(tmp_path):
    path = tmp_path / "s.keys.json"
    mine = os.urandom(64)
    key_store.write(path, key_store.KeyTable(HOUR, {1: (10, mine)}, {1: "alice"}))
    key_store.advance(path, {1: (12, epoch_key(mine, 10, 12))})
    assert key_store.load(path).names == {1: "alice"} and key_store.load(path).keys[1][0] == 12


def server_and_client(tmp_path: Path) -> tuple[Path, Path]:
    server = tmp_path / "server.toml"
    assert keygen.main(["server", "--endpoint", "127.0.0.1:51820", "--tunnel", "203.0.113.1/24",
                        "--out", str(server), "--server-id", "7"]) == 0
    assert keygen.main(["client", "--server-config", str(server), "--name", "a", "--out", str(tmp_path / "a.toml"),
                        "--client-id", "1"]) == 0
    install_client_keys(tmp_path)
    return server, tmp_path / "a.toml"


def stored_keys(root: Path) -> list[tuple[Path, int | None, bytes]]:
    """Every 64-byte key written anywhere under ``root``, with its epoch where the file says it."""
    found = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for match in re.finditer(r'"epoch": (\d+),\s*"key": "([A-Za-z0-9+/=]{88})"', text):
            found.append((path, int(match.group(1)), base64.b64decode(match.group(2))))
        for candidate in re.findall(r"[A-Za-z0-9+/]{86}==", text):
            try:
                key = base64.b64decode(candidate, validate=True)
            except binascii.Error:
                continue
            if not any(key == k for _, _, k in found):
                found.append((path, None, key))
    return found


def test_after_the_epochs_pass_no_file_holds_anything_that_derives_an_erased_key(tmp_path, state_directory):
    # Keys are erased once the other end vouches for the clock (epochs.KeyTimer):
    # its first path MTU probe or acknowledgement.
    server_path, client_path = server_and_client(tmp_path)
    server_config, client_config = load_server_config(server_path), load_client_config(client_path)
    first = client_config.key_epoch
    erased = {epoch: epoch_key(client_config.key, first, epoch) for epoch in (first, first + 1)}
    # Both daemons run two epochs and the keep time later than the keys were made.
    later = time.time() + 2 * HOUR + 600
    assert oldest_needed_epoch(later, HOUR) >= first + 2

    started = time.monotonic()

    def clock() -> float:
        return later + time.monotonic() - started

    async def run() -> None:
        server_transport = open_server_transport("127.0.0.1", 0)
        client_transport = open_client_transport(socket.AF_INET)
        server_core = build_core(server_config, later, restart_bounds={})
        client_core = ClientCore(1, client_config.key, key_epoch=first, server_id=7,
                                 server_endpoint=server_transport.sock.getsockname(), routes=[], now=later)
        daemons = [
            Daemon(MemoryTun("s"), server_transport, server_core, clock=clock,
                   key_store_path=key_store.store_path(state_directory, "server"),
                   restart_store=RestartStore(state_directory, "server")),
            Daemon(MemoryTun("c"), client_transport, client_core, clock=clock,
                   key_store_path=key_store.store_path(state_directory, "a")),
        ]
        tasks = [asyncio.create_task(d.run()) for d in daemons]
        await asyncio.sleep(0.5)
        for daemon in daemons:
            daemon.stop()
        await asyncio.gather(*tasks)
        for daemon in daemons:
            daemon.transport.close()
            daemon.tun.close()

    asyncio.run(run())
    found = stored_keys(tmp_path)
    assert found and all(epoch is not None for _, epoch, _ in found), "a key outside the key stores"
    for path, epoch, key in found:
        assert epoch >= first + 2, path
        for erased_epoch, erased_key in erased.items():
            assert key != erased_key
            with pytest.raises(ValueError):
                epoch_key(key, epoch, erased_epoch)  # nothing derives backwards
    # And both ends still agree on the keys to come.
    server_table = key_store.load(key_store.store_path(state_directory, "server"))
    client_table = key_store.load(key_store.store_path(state_directory, "a"))
    assert server_table.keys[1] == client_table.keys[1]
