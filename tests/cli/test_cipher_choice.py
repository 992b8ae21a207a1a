"""The daemons say at start which AES-SIV and which TUN offload functions they
run, and VPNCRYPT_PURE_PYTHON=1 makes them run cryptography's AESSIV and
vpncrypt/tun/offload.py."""

from __future__ import annotations

import logging

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from vpncrypt.cli import daemons
from vpncrypt import tun
from vpncrypt.core import siv
from vpncrypt.tun import offload


@pytest.fixture
def started(monkeypatch, caplog):
    """Run a daemon's start with the config, plan and run stubbed; returns
    (exit status, the class in use when it ran, the log lines)."""
    monkeypatch.setattr(siv, "AESSIV", siv.AESSIV)  # put back afterwards
    monkeypatch.setattr(offload, "_CHOSEN", offload._CHOSEN)
    monkeypatch.setattr(offload, "_IN_USE", offload._IN_USE)
    monkeypatch.setattr(tun, "_OFFLOAD_IN_USE", tun._OFFLOAD_IN_USE)
    monkeypatch.setattr(daemons, "setup_logging", lambda verbose: None)
    monkeypatch.setattr(daemons, "unwind_on_stop_signals", lambda: None)  # leave pytest's signal handlers be
    caplog.set_level(logging.INFO)

    def start():
        ran = []
        status = daemons._main("vpncrypt-server", ["--config", "unused.toml"], lambda path: object(),
                               lambda config: None, lambda config: ran.append(siv.AESSIV) or 0)
        return status, ran, [record.getMessage() for record in caplog.records if record.name == "vpncrypt"]
    return start


def test_the_pure_path_when_asked(started, monkeypatch):
    monkeypatch.setenv("VPNCRYPT_PURE_PYTHON", "1")
    status, ran, lines = started()
    assert (status, ran) == (0, [AESSIV])
    assert siv.in_use() == "cryptography's AESSIV (pure-Python path: VPNCRYPT_PURE_PYTHON=1)"
    assert tun.offload_in_use(True) == "pure Python (VPNCRYPT_PURE_PYTHON=1)" and offload.compiled() is None
    assert not any("cipher" in line or "offload" in line for line in lines)  # said in the start line


@pytest.mark.parametrize("value", [None, "0", ""])
def test_the_compiled_path_otherwise(started, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("VPNCRYPT_PURE_PYTHON", raising=False)
    else:
        monkeypatch.setenv("VPNCRYPT_PURE_PYTHON", value)
    monkeypatch.setattr(siv, "CompiledAESSIV", siv.CompiledAESSIV or AESSIV)  # the choice, built here or not
    monkeypatch.setattr(siv, "OPENSSL_VERSION", "OpenSSL 3.9.9 1 Jan 2030")
    monkeypatch.setattr(siv, "compiled_engine", lambda: "aes-ni")
    monkeypatch.setattr(offload, "COMPILED", offload.COMPILED or object())  # the choice, built here or not
    status, ran, lines = started()
    assert (status, ran) == (0, [siv.CompiledAESSIV])
    assert siv.in_use() == "compiled AES-SIV (OpenSSL 3.9.9 1 Jan 2030, CMAC on aes-ni)"
    assert tun.offload_in_use(True) == "compiled" and offload.compiled() is offload.COMPILED
    assert tun.offload_in_use(False) == "off in the config"


def test_the_pure_offload_functions_where_the_compiled_ones_are_not_built(started, monkeypatch):
    monkeypatch.delenv("VPNCRYPT_PURE_PYTHON", raising=False)
    monkeypatch.setattr(offload, "COMPILED", None)
    monkeypatch.setattr(offload, "NOT_BUILT", "the compiled module is not built: no module named _offload")
    started()
    assert tun.offload_in_use(True) == "pure Python (the compiled module is not built: no module named _offload)"
    assert offload.compiled() is None


def test_no_offload_functions_off_linux(started, monkeypatch):
    """FreeBSD's and macOS's devices have no offloads: the start line says so."""
    monkeypatch.setattr(tun.sys, "platform", "freebsd14")
    started()
    assert tun.offload_in_use(True) == "none on this system"
