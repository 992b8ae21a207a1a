"""Whether the compiled modules (vpncrypt._siv, vpncrypt._offload) must be
there: everywhere, but where VPNCRYPT_PURE_PYTHON=1 says this machine runs
the pure-Python path (the daemon reads the same variable)."""

from __future__ import annotations

import os

import pytest

PURE_ONLY = os.environ.get("VPNCRYPT_PURE_PYTHON") == "1"


def built(compiled, not_built: str, untested: str):
    """``compiled`` (a class or module, None where it did not build); a
    failure (not a skip) saying ``not_built`` where it is None, unless
    PURE_ONLY, where it is a skip saying ``untested``."""
    if compiled is None:
        if PURE_ONLY:
            pytest.skip(f"VPNCRYPT_PURE_PYTHON=1: {untested}")
        pytest.fail(not_built)
    return compiled
