"""Shared builders for the in-process tests: keys, inner packets, peers, fixed clocks."""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest

NOW = 1_800_000_000.0  # a fixed clock: the core never reads the real one
SERVER_ID = 0x5EC0_0001


def ipv4_packet(src: str, dst: str, payload: bytes = b"", proto: int = 17) -> bytes:
    """A minimal IPv4 packet (checksum left zero: the core never looks at it)."""
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )
    return header + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"", next_header: int = 17) -> bytes:
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
        ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed,
    )
    return header + payload


@pytest.fixture
def key() -> bytes:
    return os.urandom(64)
