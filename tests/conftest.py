"""Fixtures shared by the in-process tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def state_directory(tmp_path, monkeypatch):
    """Never this machine's /var/lib/vpncrypt: every daemon and keygen run a
    test starts keeps its key store and restart state here, by default."""
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("STATE_DIRECTORY", str(directory))
    return directory


@pytest.fixture
def key() -> bytes:
    return os.urandom(64)
