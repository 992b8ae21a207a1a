"""The wire format: header layout, overhead, timestamp rebuilding, reference seal/open."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import given
from hypothesis import strategies as st

from vpncrypt.core import wire
from vpncrypt.core.wire import (
    KIND_DATA, KIND_KEEPALIVE, OVERHEAD, TO_CLIENT, TO_SERVER, Rejected, decode_header,
    encode_header, open_datagram, rebuild_timestamp, seal_datagram,
)

from tests.builders import NOW, SERVER_ID


def test_overhead_is_at_most_24_bytes():
    aead = AESSIV(os.urandom(64))
    for size in (0, 1, 64, 1400):
        datagram = seal_datagram(aead, KIND_DATA, 1, 2, int(NOW), TO_SERVER, SERVER_ID, bytes(size))
        assert len(datagram) - size == OVERHEAD == 24


def test_kinds_carry_version_two():
    assert KIND_DATA == 0x21 and KIND_KEEPALIVE == 0x22 and wire.KIND_DATA_PARTIAL == 0x23
    assert wire.KIND_TIME_ANSWER == 0x24
    assert wire.KINDS == {KIND_DATA, KIND_KEEPALIVE, wire.KIND_DATA_PARTIAL}
    assert wire.VERSION_1_KINDS == {0x11, 0x12, 0x13}


@given(
    kind=st.integers(0, 63), ts=st.integers(0, 2**40), client_id=st.integers(0, 0xFFFF),
    counter=st.integers(0, 2**32 - 1),
)
def test_header_round_trips(kind, ts, client_id, counter):
    header = encode_header(kind, ts, client_id, counter)
    assert len(header) == 8
    assert decode_header(header) == (kind, ts % 1024, client_id, counter)


def test_header_layout_is_big_endian_bit_packed():
    assert encode_header(0x11, 0x3FF, 0xBEEF, 0x01020304) == bytes.fromhex("47ffbeef01020304")
    with pytest.raises(ValueError):
        decode_header(b"\x00" * 7)


def test_at_least_65536_client_ids():
    assert decode_header(encode_header(KIND_DATA, 0, 0xFFFF, 0)).client_id == 65535
    assert decode_header(encode_header(KIND_DATA, 0, 0, 0)).client_id == 0


@given(now=st.integers(10**6, 2**40), offset=st.integers(-512, 511))
def test_rebuild_timestamp_recovers_anything_within_512_seconds(now, offset):
    assert rebuild_timestamp((now + offset) % 1024, now) == now + offset


@given(now=st.integers(10**6, 2**40), low=st.integers(0, 1023))
def test_rebuild_timestamp_range(now, low):
    ts = rebuild_timestamp(low, now)
    assert now - 512 <= ts <= now + 511 and ts % 1024 == low


def test_associated_data_is_one_21_byte_string():
    header = encode_header(KIND_DATA, 5, 7, 9)
    ad = wire.associated_data(header, TO_SERVER, 0xA1B2C3D4, 0x0102030405)
    assert ad == header + bytes.fromhex("01" "a1b2c3d4" "0000000102030405")


def _sealed(aead, payload=b"x" * 40, ts=int(NOW), **overrides):
    fields = dict(kind=KIND_DATA, client_id=3, counter=77, timestamp=ts, direction=TO_SERVER, server_id=SERVER_ID)
    fields.update(overrides)
    return seal_datagram(aead, fields["kind"], fields["client_id"], fields["counter"], fields["timestamp"],
                         fields["direction"], fields["server_id"], payload)


def test_reference_open_round_trips():
    aead = AESSIV(os.urandom(64))
    header, ts, payload = open_datagram(aead, _sealed(aead), direction=TO_SERVER, server_id=SERVER_ID, now=NOW)
    assert (header.client_id, header.counter, ts, payload) == (3, 77, int(NOW), b"x" * 40)


@pytest.mark.parametrize("edge, accepted", [(128, True), (-128, True), (129, False), (-129, False)])
def test_time_window_edges(edge, accepted):
    aead = AESSIV(os.urandom(64))
    datagram = _sealed(aead, ts=int(NOW) + edge)
    if accepted:
        assert open_datagram(aead, datagram, direction=TO_SERVER, server_id=SERVER_ID, now=NOW)[1] == int(NOW) + edge
    else:
        with pytest.raises(Rejected, match="outside_time_window"):
            open_datagram(aead, datagram, direction=TO_SERVER, server_id=SERVER_ID, now=NOW)


def test_time_window_uses_whole_seconds_of_now():
    aead = AESSIV(os.urandom(64))
    datagram = _sealed(aead, ts=int(NOW) + 128)
    # now = NOW + 0.999 still counts as second int(NOW).
    assert open_datagram(aead, datagram, direction=TO_SERVER, server_id=SERVER_ID, now=NOW + 0.999)


@pytest.mark.parametrize(
    "datagram_change, reason",
    [
        (lambda d: d[:23], "bad_length"),
        (lambda d: bytes([0x14 << 2]) + d[1:], "unknown_kind"),
        (lambda d: bytes([0]) + d[1:], "unknown_kind"),
    ],
)
def test_reference_open_rejects_before_cipher(datagram_change, reason):
    class NoCipher:
        def decrypt(self, *_):
            raise AssertionError("the cipher must not run")

    datagram = datagram_change(_sealed(AESSIV(os.urandom(64))))
    with pytest.raises(Rejected) as caught:
        open_datagram(NoCipher(), datagram, direction=TO_SERVER, server_id=SERVER_ID, now=NOW)
    assert caught.value.reason == reason


def test_keepalive_must_be_empty():
    aead = AESSIV(os.urandom(64))
    with pytest.raises(Rejected, match="bad_length"):
        open_datagram(aead, _sealed(aead, kind=KIND_KEEPALIVE), direction=TO_SERVER, server_id=SERVER_ID, now=NOW)
    keepalive = _sealed(aead, payload=b"", kind=KIND_KEEPALIVE)
    assert open_datagram(aead, keepalive, direction=TO_SERVER, server_id=SERVER_ID, now=NOW)[2] == b""


@pytest.mark.parametrize("change", [
    dict(direction=TO_CLIENT), dict(server_id=SERVER_ID + 1),
])
def test_wrong_direction_or_server_fails_authentication(change):
    aead = AESSIV(os.urandom(64))
    opened = dict(direction=TO_SERVER, server_id=SERVER_ID)
    opened.update(change)
    with pytest.raises(Rejected, match="auth_failed"):
        open_datagram(aead, _sealed(aead), now=NOW, **opened)


def test_wrong_key_fails_authentication():
    datagram = _sealed(AESSIV(os.urandom(64)))
    with pytest.raises(Rejected, match="auth_failed"):
        open_datagram(AESSIV(os.urandom(64)), datagram, direction=TO_SERVER, server_id=SERVER_ID, now=NOW)


def test_a_cipher_that_refuses_an_empty_payload_is_named_in_one_line():
    from vpncrypt.core.wire import CipherUnusable, check_cipher

    class Refusing:
        """What cryptography 44 and 45 do with an empty payload."""

        def __init__(self, key):
            pass

        def encrypt(self, data, associated_data):
            if not data:
                raise ValueError("data must not be zero length")
            return data

        decrypt = encrypt

    check_cipher()  # the installed one works
    with pytest.raises(CipherUnusable, match=r"^cryptography \S+ cannot seal an empty payload "
                                             r"\(data must not be zero length\); vpncrypt needs cryptography 46"):
        check_cipher(Refusing)
