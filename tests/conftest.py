"""Fixtures shared by the in-process tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def key() -> bytes:
    return os.urandom(64)
