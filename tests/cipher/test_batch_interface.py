"""The batch path's two entry points (vpncrypt/_batch.c) against the Python
they replace, and what they do with arguments they cannot take.

``AesSiv.seal_batch`` must give, byte for byte, what Peer.seal's Python loop
gives (a header per payload, the header and suffix as the one AD string,
cryptography's AESSIV); ``open_run`` is held to open_datagrams' Python loop by
tests/core (test_differential.py, test_fast_path.py); here only its refusals.
"""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cipher.conftest import compiled
from vpncrypt.core.inner import PartialChecksumPacket
from vpncrypt.core.siv import compiled_open_run

pytestmark = pytest.mark.usefixtures("engine")  # the compiled class with each engine of its MAC half

KEY = bytes(range(64))
SUFFIX = bytes(range(13))


def python_seal(payloads, word0, partial_word0, client_id, counter, suffix):
    """Peer.seal's loop, with cryptography's AESSIV."""
    aead, out = AESSIV(KEY), []
    for payload in payloads:
        counter = (counter + 1) & 0xFFFFFFFF
        word = partial_word0 if type(payload) is PartialChecksumPacket else word0
        header = struct.pack("!HHI", word, client_id, counter)
        out.append(header + aead.encrypt(payload, [header + suffix]))
    return out, counter, sum(len(payload) for payload in payloads)


payload = st.binary(max_size=1600).map(bytes) | st.binary(max_size=100).map(PartialChecksumPacket)


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(payload, max_size=12), word0=st.integers(0, 0xFFFF), partial_word0=st.integers(0, 0xFFFF),
       client_id=st.integers(0, 0xFFFF), counter=st.integers(0, 0xFFFFFFFF), suffix=st.binary(min_size=13, max_size=13))
def test_seal_batch_is_the_python_loop(payloads, word0, partial_word0, client_id, counter, suffix):
    context = compiled()(KEY)
    assert context.seal_batch(payloads, word0, partial_word0, client_id, counter, suffix, PartialChecksumPacket) == (
        python_seal(payloads, word0, partial_word0, client_id, counter, suffix))


def test_seal_batch_wraps_the_counter_and_takes_any_buffer():
    context = compiled()(KEY)
    datagrams, counter, size = context.seal_batch(
        [b"a", bytearray(b"bc"), memoryview(b"def")], 0x8400, 0x8C00, 7, 0xFFFFFFFF, SUFFIX, PartialChecksumPacket)
    assert counter == 2 and size == 6
    assert [struct.unpack_from("!HHI", d)[2] for d in datagrams] == [0, 1, 2]
    assert datagrams == python_seal([b"a", b"bc", b"def"], 0x8400, 0x8C00, 7, 0xFFFFFFFF, SUFFIX)[0]


@pytest.mark.parametrize("args, error", [
    (((b"x",), 0, 0, 0, 0, SUFFIX, PartialChecksumPacket), TypeError),  # payloads not a list
    (([b"x"], 0x10000, 0, 0, 0, SUFFIX, PartialChecksumPacket), ValueError),
    (([b"x"], 0, -1, 0, 0, SUFFIX, PartialChecksumPacket), ValueError),
    (([b"x"], 0, 0, 0x10000, 0, SUFFIX, PartialChecksumPacket), ValueError),
    (([b"x"], 0, 0, 0, 1 << 32, SUFFIX, PartialChecksumPacket), ValueError),
    (([b"x"], 0, 0, 0, 0, SUFFIX[:12], PartialChecksumPacket), ValueError),
    (([b"x"], 0, 0, 0, 0, "s" * 13, PartialChecksumPacket), TypeError),
    (([b"x", "text"], 0, 0, 0, 0, SUFFIX, PartialChecksumPacket), TypeError),
    (([b"x"], 0, 0, 0, 0, SUFFIX), TypeError),  # six arguments
], ids=range(9))
def test_seal_batch_refuses_what_it_cannot_take(args, error):
    with pytest.raises(error):
        compiled()(KEY).seal_batch(*args)


def plan(**changes):
    """A valid plan tuple for open_run, with ``changes`` by position name."""
    names = ("now", "time_window", "direction", "server_id", "find_peer", "hosts", "remembered", "longest_match",
             "well_formed", "checksum_location", "partial_type", "follow_source", "max_datagram", "probe_kind",
             "reasons", "answers_time")
    values = dict(now=1_700_000_000, time_window=128, direction=1, server_id=1, find_peer={}.get, hosts={},
                  remembered={}, longest_match=lambda address: None, well_formed=bytes,
                  checksum_location=lambda packet: None, partial_type=PartialChecksumPacket, follow_source=True, max_datagram=1524, probe_kind=0x25,
                  reasons=tuple("abcdefgh"), answers_time=True)
    values.update(changes)
    return tuple(values[name] for name in names)


def test_open_run_counts_what_it_drops_alone_and_leaves_the_rest():
    compiled()
    drops: dict = {}
    unknown = struct.pack("!HHI", 0x21 << 10, 9, 1) + bytes(16)
    datagrams = [(b"short", None), (struct.pack("!HHI", 0x11 << 10, 1, 1) + bytes(16), None),
                 (struct.pack("!HHI", 0x3F << 10, 1, 1) + bytes(16), None), (unknown, None), (unknown, None),
                 (bytearray(unknown), None), (unknown, None)]
    assert compiled_open_run(datagrams, 0, [], drops, plan()) == 5  # a bytearray is the Python loop's
    assert drops == {"a": 1, "b": 1, "c": 1, "d": 2}
    assert compiled_open_run(datagrams, 6, [], drops, plan()) == 7
    assert drops == {"a": 1, "b": 1, "c": 1, "d": 3}


@pytest.mark.parametrize("args", [
    ((), 0, [], {}, plan()),  # datagrams not a list
    ([], 0, (), {}, plan()),  # opened not a list
    ([], 0, [], [], plan()),  # drops not a dict
    ([], 0, [], {}, plan()[:-1]),  # a plan too short
    ([], 0, [], {}, plan(reasons=("a",))),
    ([], 0, [], {}, plan(hosts=[])),
    ([], 0, [], {}, plan(remembered=[])),
    ([], "0", [], {}, plan()),
], ids=range(8))
def test_open_run_refuses_arguments_of_the_wrong_shape(args):
    compiled()
    with pytest.raises(TypeError):
        compiled_open_run(*args)


@pytest.mark.parametrize("change", [dict(server_id=1 << 32), dict(direction=256), dict(direction=-1)], ids=repr)
def test_open_run_refuses_values_out_of_range(change):
    compiled()
    with pytest.raises((ValueError, OverflowError)):
        compiled_open_run([], 0, [], {}, plan(**change))
