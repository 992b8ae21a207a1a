"""The virtual interface: one small surface, one module per operating system.

Every backend offers ``open_tun(name)`` returning a TunDevice. Nothing outside
this package knows which OS it runs on; network configuration (addresses,
routes, MTU) is the separate ``vpncrypt.netconfig``. The contract is checked on
every backend by tests/tun/test_contract.py.
"""

from __future__ import annotations

import sys
from typing import Protocol

from ..core.inner import PartialChecksumPacket, complete_checksum


class TunError(Exception):
    """The device could not be opened or used; the message says what to do."""


class TunDevice(Protocol):
    name: str
    """The interface name the OS gave, which may differ from the one asked for."""

    def fileno(self) -> int:
        """For the event loop: readable when packets are waiting."""

    def read_batch(self, limit: int) -> list[bytes]:
        """The IP packets waiting, oldest first, without blocking: [] when none.

        Reads stop after ``limit`` packets from the device or when it has no
        more (EAGAIN, never raised). A super-packet (TCP or UDP segmentation
        offload) is returned as its segments, so the list may exceed ``limit``
        by fewer than one super-packet's segments (at most 64 KiB / MSS).
        Items may be PartialChecksumPacket: their checksum is left to whoever
        writes them out (see ``finished``). Any other OSError is raised.
        """

    def write_batch(self, packets: list[bytes]) -> int:
        """Write IP packets (PartialChecksumPacket allowed) in order, without
        blocking; returns how many the device refused.

        A refusal (queue full, a packet the OS will not take, device gone) is
        counted, never raised nor retried: a packet lost as on any network. A
        refused merged write counts every packet merged into it.
        """

    def close(self) -> None:
        """Release the device; calling it again does nothing."""


def finished(packet: bytes) -> bytes:
    """``packet`` as a backend without checksum offload must write it.

    A PartialChecksumPacket (read from a device with offload, or received as
    KIND_DATA_PARTIAL) holds only the pseudo-header sum in its TCP/UDP checksum
    field; without offload no kernel or NIC will finish it, so it is finished
    here. Anything else is returned as it is.
    """
    if type(packet) is PartialChecksumPacket:
        return complete_checksum(packet)
    return packet


def open_tun(name: str, offload: bool = True) -> TunDevice:
    """Open (creating it if need be) the TUN device ``name`` for this platform.

    ``offload`` lets the backend use what the OS offers to move many packets
    per system call; the packets the caller sees and gives are the same.
    """
    if sys.platform.startswith("linux"):
        from .linux import LinuxTun

        return LinuxTun.open(name, offload)
    raise TunError(f"no TUN backend for {sys.platform} yet (Linux is supported)")
