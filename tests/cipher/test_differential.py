"""The compiled AES-SIV against cryptography's on random keys, AD lists and
plaintexts (hypothesis): the same bytes out, and any one bit changed in the
output, or any change to the AD, is refused by both."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cipher.conftest import compiled

pytestmark = pytest.mark.usefixtures("engine")  # the compiled class with each engine of its MAC half

keys = st.sampled_from([32, 48, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
ad_lists = st.one_of(st.none(), st.lists(st.binary(max_size=100), max_size=5))
plaintexts = st.one_of(st.binary(max_size=100), st.binary(min_size=100, max_size=1600))


@settings(max_examples=400, deadline=None)
@given(key=keys, ad=ad_lists, plaintext=plaintexts, data=st.data())
def test_same_output_and_both_refuse_a_flipped_bit(key, ad, plaintext, data):
    mine, reference = compiled()(key), AESSIV(key)
    sealed = mine.encrypt(plaintext, ad)
    assert sealed == reference.encrypt(plaintext, ad)
    assert mine.decrypt(sealed, ad) == plaintext == reference.decrypt(sealed, ad)

    bit = data.draw(st.integers(0, len(sealed) * 8 - 1), label="bit")
    tampered = bytearray(sealed)
    tampered[bit // 8] ^= 0x80 >> (bit % 8)
    for cipher in (mine, reference):
        with pytest.raises(InvalidTag):
            cipher.decrypt(bytes(tampered), ad)


@settings(max_examples=200, deadline=None)
@given(key=keys, ad=st.lists(st.binary(max_size=100), max_size=5), plaintext=plaintexts, data=st.data())
def test_both_refuse_other_associated_data(key, ad, plaintext, data):
    mine, reference = compiled()(key), AESSIV(key)
    sealed = mine.encrypt(plaintext, ad)
    other = data.draw(st.lists(st.binary(max_size=100), max_size=5).filter(lambda o: o != ad), label="other AD")
    for cipher in (mine, reference):
        with pytest.raises(InvalidTag):
            cipher.decrypt(sealed, other)


@settings(max_examples=200, deadline=None)
@given(key=keys, data=st.binary(max_size=60), ad=ad_lists)
def test_both_open_arbitrary_bytes_alike(key, data, ad):
    """Forged input: the same plaintext (never, in practice) or InvalidTag from both."""
    outcomes = []
    for cipher in (compiled()(key), AESSIV(key)):
        try:
            outcomes.append(cipher.decrypt(data, ad))
        except InvalidTag:
            outcomes.append(InvalidTag)
    assert outcomes[0] == outcomes[1]
