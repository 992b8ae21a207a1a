"""The compiled class is a drop-in for cryptography's AESSIV: the same
arguments taken, the same exceptions raised for the ones it refuses; and what
it holds (buffers, references, its contexts) is let go and never shared."""

from __future__ import annotations

import sys
import threading

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from tests.cipher.conftest import compiled

KEY = bytes(range(64))


def outcome(call):
    """(exception type, message) or ("ok", result)."""
    try:
        return "ok", call()
    except Exception as error:  # the comparison is the point
        return type(error), str(error)


@pytest.mark.parametrize("key", [
    b"", bytes(16), bytes(31), bytes(33), bytes(63), bytes(65), bytes(128),  # ValueError
    "k" * 64, None, 64, [bytes(64)],  # TypeError
    bytes(32), bytes(48), bytes(64), bytearray(64), memoryview(bytes(64)),  # taken
], ids=repr)
def test_keys_taken_and_refused_alike(key):
    mine, theirs = outcome(lambda: compiled()(key)), outcome(lambda: AESSIV(key))
    assert mine[0] == theirs[0]
    if mine[0] is not ValueError and mine[0] != "ok":
        assert mine[1] == theirs[1]
    if mine[0] == "ok":
        assert mine[1].encrypt(b"x", None) == theirs[1].encrypt(b"x", None)


def test_the_key_length_error_names_the_sizes():
    with pytest.raises(ValueError, match=r"^AESSIV key must be 256, 384, or 512 bits\.$"):
        compiled()(bytes(16))


ARGUMENTS = [
    (b"data", None), (b"data", []), (b"", None), (b"", [b""]), (b"data", [b"a"] * 200),
    (bytearray(b"data"), [bytearray(b"a"), memoryview(b"b")]),
    ("text", [b"a"]), (None, [b"a"]), (7, [b"a"]),
    (b"data", (b"a",)), (b"data", b"ab"), (b"data", {b"a"}), (b"data", iter([b"a"])),
    (b"data", ["a"]), (b"data", [1]), (b"data", [b"a", None]),
]


@pytest.mark.parametrize("data, ad", ARGUMENTS, ids=repr)
def test_encrypt_takes_and_refuses_what_cryptography_does(data, ad):
    mine, theirs = outcome(lambda: compiled()(KEY).encrypt(data, ad)), outcome(lambda: AESSIV(KEY).encrypt(data, ad))
    assert mine == theirs


@pytest.mark.parametrize("data, ad", ARGUMENTS, ids=repr)
def test_decrypt_takes_and_refuses_what_cryptography_does(data, ad):
    sealed = AESSIV(KEY).encrypt(b"plain", [b"a"])
    for body in (data, sealed):
        mine = outcome(lambda: compiled()(KEY).decrypt(body, ad))
        theirs = outcome(lambda: AESSIV(KEY).decrypt(body, ad))
        assert mine == theirs


@pytest.mark.parametrize("length", [0, 1, 15])
def test_shorter_than_the_synthetic_iv_is_an_invalid_tag(aessiv, length):
    with pytest.raises(InvalidTag):
        aessiv(KEY).decrypt(bytes(length), None)


def test_keywords_as_cryptography_names_them(aessiv):
    cipher = aessiv(KEY)
    sealed = cipher.encrypt(data=b"x", associated_data=[b"a"])
    assert cipher.encrypt(b"x", associated_data=[b"a"]) == sealed
    assert cipher.decrypt(associated_data=[b"a"], data=sealed) == b"x"
    assert aessiv(key=KEY).encrypt(b"x", [b"a"]) == sealed


@pytest.mark.parametrize("call", [
    lambda c: c.encrypt(b"x"),
    lambda c: c.encrypt(b"x", [b"a"], None),
    lambda c: c.encrypt(b"x", [b"a"], data=b"y"),
    lambda c: c.encrypt(b"x", [b"a"], nonce=b"y"),
    lambda c: c.decrypt(),
], ids=["missing AD", "three positional", "data twice", "unknown keyword", "nothing"])
def test_wrong_calls_are_type_errors(aessiv, call):
    with pytest.raises(TypeError):
        call(aessiv(KEY))


def test_the_output_is_fresh_bytes(aes_siv):
    cipher = aes_siv(KEY)
    sealed = cipher.encrypt(b"payload", [b"a"])
    assert type(sealed) is bytes and type(cipher.decrypt(sealed, [b"a"])) is bytes
    assert cipher.encrypt(b"payload", [b"a"]) is not sealed


def test_no_reference_is_kept_or_lost(aes_siv):
    """Every path lets go of the buffers and references it takes (a leak, or
    one released twice, moves the counts)."""
    cipher = aes_siv(KEY)
    data, big, ad_item = bytearray(b"x" * 100), bytes(5000), bytearray(b"ad")
    ad = [ad_item] * 10  # more components than fit on the stack
    sealed = cipher.encrypt(bytes(data), ad)
    objects = (data, big, ad_item, ad, sealed)
    before = [sys.getrefcount(o) for o in objects]
    for _ in range(200):
        cipher.encrypt(data, ad)
        cipher.encrypt(big, ad)
        cipher.decrypt(sealed, ad)
        for bad in (lambda: cipher.decrypt(sealed, ad[:1]), lambda: cipher.encrypt(data, ad + ["x"]),
                    lambda: cipher.decrypt(big, ad), lambda: cipher.encrypt(data, (ad_item,))):
            with pytest.raises((InvalidTag, TypeError)):
                bad()
    assert [sys.getrefcount(o) for o in objects] == before
    data.extend(b"!")  # a view still held would refuse this (BufferError)
    ad_item.extend(b"!")


def test_one_object_in_two_threads_gives_right_answers_or_refuses(aes_siv):
    """The GIL is released around large inputs: a second thread using the same
    object meanwhile gets RuntimeError, never a mixed-up result."""
    cipher = aes_siv(KEY)
    inputs = [bytes([i]) * 65535 for i in range(2)]
    expected = [AESSIV(KEY).encrypt(p, [b"a"]) for p in inputs]
    wrong, refused = [], []

    def work(which: int) -> None:
        for _ in range(500):
            try:
                if cipher.encrypt(inputs[which], [b"a"]) != expected[which]:
                    wrong.append(which)
            except RuntimeError as error:
                refused.append(str(error))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert wrong == []
    assert set(refused) <= {"this AesSiv object is in use by another thread"}
    # Alone again, it works.
    assert cipher.encrypt(inputs[0], [b"a"]) == expected[0]
