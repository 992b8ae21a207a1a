"""docs/PROTOCOL.md's test vectors, recomputed with pycryptodome's AES-SIV.

pycryptodome is a second, independent AES-SIV: if vpncrypt's sealing (through
``cryptography``) and the spec disagreed, the vectors would not match here.
"""

from __future__ import annotations

import struct

import pytest
from Crypto.Cipher import AES
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from vpncrypt.core.wire import open_datagram

from tests.builders import spec_vectors

VECTORS = spec_vectors()


def test_the_spec_has_at_least_six_vectors():
    assert len(VECTORS) >= 6
    assert {v["kind"] for v in VECTORS} == {"0x11", "0x12", "0x13"}
    assert {v["direction"] for v in VECTORS} == {"0x01", "0x02"}


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_with_pycryptodome(vector):
    key = bytes.fromhex(vector["key"])
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
    _, rebuilt_ts, opened = open_datagram(AESSIV(key), datagram, direction=direction, server_id=server_id, now=ts + 0.5)
    assert (rebuilt_ts, opened) == (ts, payload)
