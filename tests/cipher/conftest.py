"""The AES-SIV classes under test: vpncrypt's compiled one, with each engine of
its MAC half, against cryptography's."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from tests.compiled import built
from vpncrypt.core import siv

# vpncrypt._siv's engines for S2V's CMACs (vpncrypt/_aesni.c, OpenSSL's AES-CBC).
ENGINES = ("aes-ni", "openssl")


def compiled():
    """vpncrypt._siv.AesSiv; a failure (not a skip) where it did not build,
    unless VPNCRYPT_PURE_PYTHON=1 says this machine runs without it."""
    return built(siv.CompiledAESSIV, siv.NOT_BUILT, "the compiled AES-SIV is not tested")


@contextlib.contextmanager
def engine_in_use(name: str):
    """The compiled AES-SIV with ``name`` as its engine while the block runs
    (every object, made before or after), then the engine it had. A skip, with
    the reason, where this CPU cannot run it (no AES-NI): the engine picked
    at start is the other one there."""
    from vpncrypt import _siv

    compiled()
    if name not in _siv.ENGINES:
        pytest.skip(f"engine {name!r} not on this CPU (it has {_siv.ENGINES})")
    had = _siv.engine()
    _siv.use_engine(name)
    try:
        yield
    finally:
        _siv.use_engine(had)


@pytest.fixture(params=ENGINES)
def engine(request):
    """Each engine of the compiled class in turn: its name."""
    with engine_in_use(request.param):
        yield request.param


@pytest.fixture(params=[f"compiled {name}" for name in ENGINES] + ["cryptography"])
def aessiv(request):
    """Each class in turn (the compiled one with each engine), for properties all must have."""
    if request.param == "cryptography":
        yield AESSIV
        return
    with engine_in_use(request.param.split()[1]):
        yield compiled()


@pytest.fixture
def aes_siv(engine):
    """The compiled class alone (with each engine), for comparisons against the references."""
    return compiled()
