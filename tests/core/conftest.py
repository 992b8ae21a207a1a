"""Fixtures for the core's tests."""

from __future__ import annotations

import os

import pytest

from vpncrypt.core import siv


@pytest.fixture(scope="module", params=["compiled", "cryptography"])
def each_cipher(request):
    """Run a module's tests once with each AES-SIV class the core can use
    (``siv.AESSIV``): the compiled one and cryptography's (the pure-Python
    path). With VPNCRYPT_PURE_PYTHON=1 the compiled one is not required (a
    machine without the build); otherwise its absence fails the test (and
    tests/cipher/test_build.py says why)."""
    if request.param == "compiled":
        if os.environ.get("VPNCRYPT_PURE_PYTHON") == "1":
            pytest.skip("VPNCRYPT_PURE_PYTHON=1: only the pure-Python path is tested")
        assert siv.CompiledAESSIV is not None, siv.NOT_BUILT
    chosen = siv.AESSIV
    siv.AESSIV = siv.CompiledAESSIV if request.param == "compiled" else siv.CryptographyAESSIV
    yield siv.AESSIV
    siv.AESSIV = chosen
