"""Fixtures for the core's tests."""

from __future__ import annotations


import pytest

from tests.cipher.conftest import ENGINES, engine_in_use
from tests.compiled import PURE_ONLY
from vpncrypt.core import siv


@pytest.fixture(scope="module", params=[f"compiled {name}" for name in ENGINES] + ["cryptography"])
def each_cipher(request):
    """Run a module's tests once with each AES-SIV class the core can use
    (``siv.AESSIV``): the compiled one, with each engine of its MAC half
    (vpncrypt._siv.ENGINES), and cryptography's (the pure-Python path). With
    VPNCRYPT_PURE_PYTHON=1 the compiled one is not required (a machine
    without the build); otherwise its absence fails the test (and
    tests/cipher/test_build.py says why)."""
    if request.param != "cryptography":
        if PURE_ONLY:
            pytest.skip("VPNCRYPT_PURE_PYTHON=1: only the pure-Python path is tested")
        assert siv.CompiledAESSIV is not None, siv.NOT_BUILT
    chosen = siv.AESSIV
    siv.AESSIV = siv.CompiledAESSIV if request.param != "cryptography" else siv.CryptographyAESSIV
    if request.param == "cryptography":
        yield siv.AESSIV
    else:
        with engine_in_use(request.param.split()[1]):
            yield siv.AESSIV
    siv.AESSIV = chosen
