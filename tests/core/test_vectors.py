"""docs/PROTOCOL.md's test vectors, recomputed with pycryptodome's AES-SIV and an HKDF
written here from RFC 5869 with hmac.

Both are independent of the data path (``cryptography``'s HKDF, and the AES-SIV
in use: vpncrypt's compiled one or ``cryptography``'s, each in turn): if vpncrypt
and the spec disagreed, the vectors would not match here.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from Crypto.Cipher import AES

from vpncrypt.core import siv as cipher_choice
from vpncrypt.core.wire import open_datagram

from tests.builders import spec_vectors

VECTORS = spec_vectors()
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
