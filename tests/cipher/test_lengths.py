"""Every plaintext length through two blocks past the MTU, and large ones up to
65,535 bytes, byte for byte against cryptography's AESSIV and pycryptodome's
AES-SIV (an implementation of its own, not OpenSSL's)."""

from __future__ import annotations

import random

import pytest
from Crypto.Cipher import AES
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

LAST_SHORT = 1500 + 32  # two blocks past a 1500-byte MTU
LARGE = [4095, 4096, 4097, 8191, 16384, 16400, 32768, 40000, 65519, 65534, 65535]


def pycryptodome_seal(key: bytes, plaintext: bytes, ad: list[bytes]) -> bytes:
    cipher = AES.new(key, AES.MODE_SIV)
    for component in ad:
        cipher.update(component)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return tag + ciphertext


def test_every_length_through_two_blocks_past_the_mtu(aes_siv):
    rng = random.Random(5297)
    key = rng.randbytes(64)
    mine, reference = aes_siv(key), AESSIV(key)
    for length in range(LAST_SHORT + 1):
        plaintext, ad = rng.randbytes(length), [rng.randbytes(21)]
        sealed = mine.encrypt(plaintext, ad)
        assert sealed == reference.encrypt(plaintext, ad), length
        assert sealed == pycryptodome_seal(key, plaintext, ad), length
        assert mine.decrypt(sealed, ad) == plaintext, length
        with pytest.raises(InvalidTag):  # the last byte: the tag's at length 0, else the ciphertext's
            mine.decrypt(sealed[:-1] + bytes([sealed[-1] ^ 1]), ad)


@pytest.mark.parametrize("length", LARGE)
@pytest.mark.parametrize("key_len", [32, 48, 64])
def test_large_lengths(aes_siv, length, key_len):
    rng = random.Random(length * key_len)
    key, plaintext = rng.randbytes(key_len), rng.randbytes(length)
    ad = [rng.randbytes(40), b"", rng.randbytes(17)]
    sealed = aes_siv(key).encrypt(plaintext, ad)
    assert sealed == AESSIV(key).encrypt(plaintext, ad)
    assert sealed == pycryptodome_seal(key, plaintext, ad)
    assert aes_siv(key).decrypt(sealed, ad) == plaintext
    tampered = bytearray(sealed)
    tampered[16 + length // 2] ^= 0x80
    with pytest.raises(InvalidTag):
        aes_siv(key).decrypt(bytes(tampered), ad)
