"""The AES-SIV classes under test: vpncrypt's compiled one against cryptography's."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from vpncrypt.core import siv

PURE_ONLY = os.environ.get("VPNCRYPT_PURE_PYTHON") == "1"


def compiled():
    """vpncrypt._siv.AesSiv; a failure (not a skip) where it did not build,
    unless VPNCRYPT_PURE_PYTHON=1 says this machine runs without it."""
    if siv.CompiledAESSIV is None:
        if PURE_ONLY:
            pytest.skip("VPNCRYPT_PURE_PYTHON=1: the compiled AES-SIV is not tested")
        pytest.fail(siv.NOT_BUILT)
    return siv.CompiledAESSIV


@pytest.fixture(params=["compiled", "cryptography"])
def aessiv(request):
    """Each class in turn, for properties both must have."""
    return compiled() if request.param == "compiled" else AESSIV


@pytest.fixture
def aes_siv():
    """The compiled class alone, for comparisons against the references."""
    return compiled()
