"""The two engines of the compiled AES-SIV's MAC half (vpncrypt/_aesni.c and
OpenSSL's AES-CBC), and the choice between them.

Both must give the same bytes as cryptography's AESSIV everywhere; the vectors,
every length and the hypothesis tests of this folder run with each (the
``engine`` and ``aessiv`` fixtures). Here: that the engine a CPU has is found,
that the choice is the module's and reaches objects already made, and the
shapes that only the chaining of several CMACs at once has (many AD
components, several messages in one call, of different lengths).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from tests.cipher.conftest import compiled, engine_in_use

KEY = bytes(range(64))


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them, or nothing elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_the_engine_of_this_cpu_is_found_and_in_use():
    compiled()
    from vpncrypt import _siv

    assert "openssl" in _siv.ENGINES
    flags = cpu_flags()
    if os.uname().machine == "x86_64" and {"aes", "sse4_1"} <= flags:
        assert _siv.ENGINES == ("aes-ni", "openssl")
    elif flags:
        assert _siv.ENGINES == ("openssl",)
    assert _siv.engine() == _siv.ENGINES[0]


@pytest.mark.parametrize("name, error", [("AES-NI", ValueError), ("", ValueError), (b"openssl", TypeError)])
def test_use_engine_refuses_other_names(name, error):
    compiled()
    from vpncrypt import _siv

    had = _siv.engine()
    with pytest.raises(error):
        _siv.use_engine(name)
    assert _siv.engine() == had


def test_an_object_made_under_one_engine_works_under_the_other():
    compiled()
    from vpncrypt import _siv

    if len(_siv.ENGINES) < 2:
        pytest.skip(f"one engine on this CPU: {_siv.ENGINES}")
    sealed = {}
    for first, second in (("aes-ni", "openssl"), ("openssl", "aes-ni")):
        with engine_in_use(first):
            cipher = compiled()(KEY)
            sealed[first] = cipher.encrypt(b"p" * 100, [b"ad"])
        with engine_in_use(second):
            assert cipher.decrypt(sealed[first], [b"ad"]) == b"p" * 100
            assert cipher.encrypt(b"p" * 100, [b"ad"]) == sealed[first]
    assert sealed["aes-ni"] == sealed["openssl"] == AESSIV(KEY).encrypt(b"p" * 100, [b"ad"])


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 30, 31, 32, 33, 64, 127])
def test_many_ad_components(aes_siv, count):
    """More AD components than one engine call takes (s2v_group's CHAINS)
    go in several, D folding them in order."""
    ad = [os.urandom(n % 40) for n in range(count)]
    for plaintext in (b"", b"x", os.urandom(40)):
        if count == 0 and not plaintext:
            continue  # cryptography refuses empty data
        sealed = aes_siv(KEY).encrypt(plaintext, ad)
        assert sealed == AESSIV(KEY).encrypt(plaintext, ad)
        assert aes_siv(KEY).decrypt(sealed, ad) == plaintext
