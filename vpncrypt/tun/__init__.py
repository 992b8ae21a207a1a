"""The virtual interface: one small surface, one module per operating system.

Every backend offers ``open_tun(name)`` returning a TunDevice. Nothing outside
this package knows which OS it runs on; network configuration (addresses,
routes, MTU) is the separate ``vpncrypt.netconfig``.
"""

from __future__ import annotations

import sys
from typing import Protocol


class TunError(Exception):
    """The device could not be opened or used; the message says what to do."""


class TunDevice(Protocol):
    name: str

    def fileno(self) -> int:
        """For the event loop: readable when packets are waiting."""

    def read_batch(self, limit: int) -> list[bytes]:
        """Up to ``limit`` waiting IP packets, without blocking (possibly none)."""

    def write_batch(self, packets: list[bytes]) -> int:
        """Write IP packets without blocking; returns how many the device refused."""

    @property
    def mtu(self) -> int: ...

    def close(self) -> None: ...


def open_tun(name: str, offload: bool = True) -> TunDevice:
    """Open (creating it if need be) the TUN device ``name`` for this platform.

    ``offload`` lets the backend use what the OS offers to move many packets
    per system call; the packets the caller sees and gives are the same.
    """
    if sys.platform.startswith("linux"):
        from .linux import LinuxTun

        return LinuxTun.open(name, offload)
    raise TunError(f"no TUN backend for {sys.platform} yet (Linux is supported)")
