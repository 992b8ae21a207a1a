"""docs/PROTOCOL.md's test vectors (section 9), each checked against the spec's words
written out here, and against vpncrypt.

The datagrams are recomputed with pycryptodome's AES-SIV and an HKDF written here
from RFC 5869 with hmac, both independent of the data path (``cryptography``'s
HKDF, and the AES-SIV in use: vpncrypt's compiled one or ``cryptography``'s, each
in turn): if vpncrypt and the spec disagreed, the vectors would not match here.
The timestamp rebuild and time check, the replay sequence and the key store are
recomputed from sections 5, 6 and 7.2 as written, and by vpncrypt's reference
code (test_differential.py offers them to the cores' receivers too). Every block
is also what tools/protocol-vectors prints today.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import struct
import subprocess
import sys

import pytest
from Crypto.Cipher import AES

from vpncrypt.core import siv as cipher_choice
from vpncrypt.core.replay import JUMPED, NEWEST, REORDERED, REPLAYED, SUPERSEDED, TOO_OLD, ReplayWindow
from vpncrypt.core.wire import KIND_KEEPALIVE, TO_SERVER, Rejected, open_datagram, rebuild_timestamp, seal_datagram

from tests.builders import SPEC, spec_key_store, spec_rebuild, spec_replay, spec_vectors

VECTORS = spec_vectors()
REBUILD = spec_rebuild()
REPLAY_FLOOR, REPLAY = spec_replay()
pytestmark = pytest.mark.usefixtures("each_cipher")  # vpncrypt's open with each AES-SIV class


def hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 with no salt (HashLen zero bytes), from its text."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def spec_epoch_key(root: bytes, root_epoch: int, epoch: int) -> bytes:
    """Section 1.1: one HKDF step per epoch, the new epoch's number in the info."""
    key = root
    for step in range(root_epoch + 1, epoch + 1):
        key = hkdf_sha256(key, b"vpncrypt v2 epoch" + step.to_bytes(8, "big"), 64)
    return key


def test_the_spec_has_vectors_of_every_kind_direction_and_an_epoch_boundary():
    assert len(VECTORS) >= 9
    assert {v["kind"] for v in VECTORS} == {"0x21", "0x22", "0x23", "0x24", "0x25", "0x26"}
    assert {v["direction"] for v in VECTORS} == {"0x01", "0x02"}
    assert {int(v["epoch"]) - int(v["root_epoch"]) for v in VECTORS} >= {0, 1, 2, 5}
    assert {v["epoch_seconds"] for v in VECTORS} == {"3600", "60"}


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_with_pycryptodome(vector):
    # The root key is SHA-512 of its seed, which names its own N (not the vector's place).
    assert re.fullmatch(r"vpncrypt vector \d+", vector["root_key_seed"])
    assert hashlib.sha512(vector["root_key_seed"].encode("ascii")).hexdigest() == vector["root_key"]
    key = spec_epoch_key(bytes.fromhex(vector["root_key"]), int(vector["root_epoch"]), int(vector["epoch"]))
    assert int(vector["epoch"]) == int(vector["timestamp"]) // int(vector["epoch_seconds"])
    assert key.hex() == vector["key"]
    kind, client_id, counter = int(vector["kind"], 16), int(vector["client_id"]), int(vector["counter"])
    ts, direction, server_id = int(vector["timestamp"]), int(vector["direction"], 16), int(vector["server_id"])
    payload = bytes.fromhex(vector["payload"])

    # Built from the spec's words, not from vpncrypt's code.
    header = struct.pack(">HHI", (kind << 10) | (ts % 1024), client_id, counter)
    ad = header + bytes([direction]) + server_id.to_bytes(4, "big") + ts.to_bytes(8, "big")
    siv = AES.new(key, AES.MODE_SIV)
    siv.update(ad)
    ciphertext, tag = siv.encrypt_and_digest(payload)

    assert len(key) == 64
    assert header.hex() == vector["header"]
    assert ad.hex() == vector["ad"]
    assert (header + tag + ciphertext).hex() == vector["datagram"]

    datagram = bytes.fromhex(vector["datagram"])
    # pycryptodome opens it, and so does vpncrypt's reference open.
    check = AES.new(key, AES.MODE_SIV)
    check.update(ad)
    assert check.decrypt_and_verify(datagram[24:], datagram[8:24]) == payload
    if kind == 0x24:  # a time answer: the client opens it as section 7.1 says
        assert len(datagram) == 32
        return
    if kind in (0x25, 0x26):  # a probe and its acknowledgement: padded to the size they name (section 8)
        assert int.from_bytes(payload[:2], "big") == len(datagram) and not any(payload[4 if kind == 0x25 else 2:])
    _, rebuilt_ts, opened = open_datagram(cipher_choice.AESSIV(key), datagram, direction=direction, server_id=server_id, now=ts + 0.5)
    assert (rebuilt_ts, opened) == (ts, payload)


# --- section 9.2: the timestamp rebuild and the time check ---------------------------

def test_the_rebuild_rows_reach_every_edge():
    """Each wrap of the 10 bits, and both sides of the window at both ends, are there."""
    assert {math.floor(row.now) % 1024 for row in REBUILD} == {0, 512, 1023}
    offsets = {(row.ts - math.floor(row.now), row.window, row.result) for row in REBUILD}
    assert {(128, 128, "accepted"), (129, 128, "outside_time_window"), (-128, 128, "accepted"),
            (-129, 128, "outside_time_window"), (511, 511, "accepted"), (-512, 511, "outside_time_window"),
            (1, 1, "accepted"), (2, 1, "outside_time_window")} <= offsets
    assert any(row.now != math.floor(row.now) for row in REBUILD)


@pytest.mark.parametrize("row", REBUILD, ids=lambda row: f"{row.now}-{row.window}-{row.low}")
def test_rebuild_row(row):
    n = math.floor(row.now)
    # Section 5's formula and step 4, as written.
    base = n - 512
    assert row.ts == base + (row.low - base) % 1024
    assert row.result == ("accepted" if abs(row.ts - n) <= row.window else "outside_time_window")
    # vpncrypt's reference: the rebuild, and a keepalive stamped ts opened at now.
    assert rebuild_timestamp(row.low, n) == row.ts
    aead = cipher_choice.AESSIV(bytes(64))
    datagram = seal_datagram(aead, KIND_KEEPALIVE, 1, 1, row.ts, TO_SERVER, 1, b"")
    try:
        open_datagram(aead, datagram, direction=TO_SERVER, server_id=1, now=row.now, time_window=row.window)
        result = "accepted"
    except Rejected as rejected:
        result = rejected.reason
    assert result == row.result


# --- section 9.3: a replay window -----------------------------------------------------

class SpecWindow:
    """Section 6's rules as written, with a plain set for the counters accepted
    among the last 2048 up to the newest."""

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self.newest_ts: int | None = None
        self.newest_counter: int | None = None
        self.seen: set[int] = set()

    def offer(self, ts: int, counter: int) -> str:
        if ts < self.floor:  # 1
            return "superseded"
        if self.newest_counter is None:  # 2
            return self.accept_newest(ts, counter, "newest", restart=True)
        ahead = (counter - self.newest_counter) % 2**32
        if 0 < ahead < 2**31:  # 3
            if ts < self.newest_ts:
                return "superseded"
            jump = ahead >= 2048
            return self.accept_newest(ts, counter, "restart" if jump else "newest", restart=jump)
        if ts > self.newest_ts:  # 4
            return self.accept_newest(ts, counter, "restart", restart=True)
        if (self.newest_counter - counter) % 2**32 >= 2048:  # 5
            return "counter_too_old"
        if counter in self.seen:  # 6
            return "replayed"
        self.seen.add(counter)  # 7
        return "reordered"

    def accept_newest(self, ts: int, counter: int, result: str, restart: bool) -> str:
        if restart:
            if self.newest_ts is not None and ts > self.newest_ts:
                self.floor = self.newest_ts + 1
            self.seen = set()
        self.newest_ts, self.newest_counter = ts, counter
        self.seen = {seen for seen in self.seen if (counter - seen) % 2**32 < 2048} | {counter}
        return result


def test_the_replay_rows_reach_every_rule():
    assert {row.result for row in REPLAY} == {
        "newest", "restart", "reordered", "superseded", "counter_too_old", "replayed"}
    floors = [row.floor for row in REPLAY]
    assert floors == sorted(floors) and len(set(floors)) >= 3  # the floor rises, twice


def test_the_replay_rows_follow_section_6():
    window = SpecWindow(REPLAY_FLOOR)
    for row in REPLAY:
        assert window.offer(row.ts, row.counter) == row.result, row
        assert (window.floor, window.newest_ts, window.newest_counter) == row[3:], row


def test_vpncrypt_replay_window_gives_the_replay_rows():
    names = {NEWEST: "newest", REORDERED: "reordered", JUMPED: "restart", REPLAYED: "replayed",
             TOO_OLD: "counter_too_old", SUPERSEDED: "superseded"}
    window = ReplayWindow(REPLAY_FLOOR)
    for row in REPLAY:
        empty = window.newest_counter < 0
        verdict = window.check(row.ts, row.counter)
        if verdict > 0:
            window.commit(row.ts, row.counter, verdict)
        assert ("newest" if verdict == JUMPED and empty else names[verdict]) == row.result, row
        state = (window.floor, None, None) if window.newest_counter < 0 else (
            window.floor, window.newest_ts, window.newest_counter)
        assert state == row[3:], row


# --- section 9.4: a key store -----------------------------------------------------------

def test_the_key_store_holds_the_root_keys_of_its_clients_vectors():
    """Decoded as section 7.2 says, each entry is the root key of every vector of
    its client ID (and epoch length), which it opens one HKDF step later."""
    store = json.loads(spec_key_store())
    assert store["version"] == 1 and set(store) == {"version", "epoch_seconds", "keys"}
    for client_id, entry in store["keys"].items():
        assert set(entry) == {"epoch", "key", "name"} and isinstance(entry["name"], str)
        assert len(entry["key"]) == 88
        key = base64.b64decode(entry["key"], validate=True)
        assert len(key) == 64
        theirs = [v for v in VECTORS if v["client_id"] == client_id and int(v["root_epoch"]) == entry["epoch"]
                  and int(v["epoch_seconds"]) == store["epoch_seconds"]]
        assert theirs, client_id
        for vector in theirs:
            assert key.hex() == vector["root_key"]
            epoch_key = spec_epoch_key(key, entry["epoch"], int(vector["epoch"]))
            datagram = bytes.fromhex(vector["datagram"])
            siv = AES.new(epoch_key, AES.MODE_SIV)
            siv.update(bytes.fromhex(vector["ad"]))
            assert siv.decrypt_and_verify(datagram[24:], datagram[8:24]) == bytes.fromhex(vector["payload"])


# --- every block is today's output of tools/protocol-vectors ---------------------------

def test_every_block_is_what_the_tool_prints():
    tool = SPEC.parents[1] / "tools" / "protocol-vectors"
    printed = subprocess.run([sys.executable, str(tool)], capture_output=True, text=True, check=True).stdout
    blocks = re.findall(r"```\w+\n.*?```\n", printed, re.S)
    spec_blocks = re.findall(r"```(?:vector|rebuild|replay|keystore)\n.*?```\n", SPEC.read_text(), re.S)
    assert blocks == spec_blocks
