"""The daemons say at start which AES-SIV they run, and VPNCRYPT_PURE_PYTHON=1
makes them run cryptography's."""

from __future__ import annotations

import logging

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from vpncrypt.cli import daemons
from vpncrypt.core import siv


@pytest.fixture
def started(monkeypatch, caplog):
    """Run a daemon's start with the config, plan and run stubbed; returns
    (exit status, the class in use when it ran, the log lines)."""
    monkeypatch.setattr(siv, "AESSIV", siv.AESSIV)  # put back afterwards
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
    assert not any("cipher" in line for line in lines)  # said in the start line, once the tunnel is up


@pytest.mark.parametrize("value", [None, "0", ""])
def test_the_compiled_path_otherwise(started, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("VPNCRYPT_PURE_PYTHON", raising=False)
    else:
        monkeypatch.setenv("VPNCRYPT_PURE_PYTHON", value)
    monkeypatch.setattr(siv, "CompiledAESSIV", siv.CompiledAESSIV or AESSIV)  # the choice, built here or not
    monkeypatch.setattr(siv, "OPENSSL_VERSION", "OpenSSL 3.9.9 1 Jan 2030")
    monkeypatch.setattr(siv, "compiled_engine", lambda: "aes-ni")
    status, ran, lines = started()
    assert (status, ran) == (0, [siv.CompiledAESSIV])
    assert siv.in_use() == "compiled AES-SIV (OpenSSL 3.9.9 1 Jan 2030, CMAC on aes-ni)"
