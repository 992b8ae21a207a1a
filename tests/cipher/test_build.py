"""Where tools/setup ran, the compiled AES-SIV is built and is what the core
uses: a failed build must fail here, not leave the tests quietly running the
fallback alone. VPNCRYPT_PURE_PYTHON=1 says this machine runs without it."""

from __future__ import annotations

import importlib

import pytest

from vpncrypt.core import siv

from tests.compiled import PURE_ONLY


@pytest.mark.skipif(PURE_ONLY, reason="VPNCRYPT_PURE_PYTHON=1: the compiled AES-SIV is not required")
def test_the_extension_is_built_and_chosen_by_default():
    module = importlib.import_module("vpncrypt._siv")  # ImportError: tools/setup did not build it
    assert siv.CompiledAESSIV is module.AesSiv and siv.NOT_BUILT == ""
    assert module.OPENSSL_VERSION.startswith("OpenSSL ")
    assert siv.AESSIV is module.AesSiv
