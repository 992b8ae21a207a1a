"""The virtual interface: one small surface, one module per operating system.

``open_tun(name)`` returns the TunDevice of the platform's backend: linux.py,
freebsd.py or darwin.py (the last two share FamilyHeaderTun below). Nothing
outside this package knows which OS it runs on; network configuration
(addresses, routes, MTU) is the separate ``vpncrypt.netconfig``. The contract
is checked on every backend by tests/tun/test_contract.py.
"""

from __future__ import annotations

import os
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


# sys/ioccom.h, shared by FreeBSD and macOS: the direction in the top bits (IN
# is the caller's argument going in), the argument's size in bits 16-28, a
# group letter and a number. Linux encodes otherwise (write is 1 << 30).
IOC_OUT, IOC_IN = 0x40000000, 0x80000000
IOC_INOUT = IOC_IN | IOC_OUT


def bsd_ioctl(direction: int, group: str, number: int, size: int) -> int:
    """The request number that BSD's _IOC(direction, group, number, size) makes:
    _IOR is IOC_OUT, _IOW IOC_IN, _IOWR IOC_INOUT."""
    return direction | (size & 0x1FFF) << 16 | ord(group) << 8 | number


FAMILY_HEADER_LEN = 4
_AF_INET = 2  # the same on every system


class FamilyHeaderTun:
    """A device that frames every packet with its address family, 4 bytes in
    network byte order (FreeBSD's tun with TUNSIFHEAD, macOS's utun): one
    packet per system call each way and no offloads, so partial checksums are
    finished before writing. ``INET6`` is the OS's own AF_INET6 (never
    Python's, which is the host's); the backend opens the device and owns
    ``close``.
    """

    INET6: int

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self.name = name
        self.skipped = 0  # reads that were no IPv4 or IPv6 packet: another family, or a runt
        inet, inet6 = _AF_INET.to_bytes(4, "big"), self.INET6.to_bytes(4, "big")
        self._families = (inet, inet6)
        self._headers = {4: inet, 6: inet6}  # by the IP version nibble
        self._buffer = bytearray(FAMILY_HEADER_LEN + 65535)  # the largest IP packet
        self._view = memoryview(self._buffer)

    def fileno(self) -> int:
        return self._fd

    def read_batch(self, limit: int) -> list[bytes]:
        """At most ``limit`` reads, one packet each."""
        packets = []
        readv, fd, buffers, buffer, view, families = (
            os.readv, self._fd, [self._buffer], self._buffer, self._view, self._families)
        for _ in range(limit):
            try:
                size = readv(fd, buffers)
            except BlockingIOError:
                break
            if not size:
                break  # no packet, and none behind it (a real device says EAGAIN)
            if size > FAMILY_HEADER_LEN and buffer[:FAMILY_HEADER_LEN] in families:
                packets.append(bytes(view[FAMILY_HEADER_LEN:size]))
            else:
                self.skipped += 1
        return packets

    def write_batch(self, packets: list[bytes]) -> int:
        refused = 0
        writev, fd, headers, finish = os.writev, self._fd, self._headers, finished
        for packet in packets:
            header = headers.get(packet[0] >> 4) if packet else None
            if header is None:
                refused += 1  # neither IPv4 nor IPv6: no family to give it
                continue
            try:
                if not writev(fd, [header, finish(packet)]):
                    refused += 1  # FreeBSD drops what comes while the interface is down, and says 0
            except OSError:
                refused += 1  # full queue, a packet the kernel will not take: lost as on any network
        return refused

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_OFFLOAD_IN_USE = ""  # what choose_offload said, for the daemon's start line


def choose_offload(pure: bool, why: str = "") -> str:
    """Which offload code the backend runs: on Linux the compiled splitters
    and write coalescer (vpncrypt/_offload.c) unless ``pure`` (``why`` says
    who asked) or they are not built, then offload.py's Python; the other
    systems' devices have no offloads. Called once at start, before the
    device opens; returns what the daemon's start line says."""
    global _OFFLOAD_IN_USE
    if sys.platform.startswith("linux"):
        from .offload import choose

        _OFFLOAD_IN_USE = choose(pure, why)
    else:
        _OFFLOAD_IN_USE = "none on this system"
    return _OFFLOAD_IN_USE


def offload_in_use(enabled: bool) -> str:
    """The start line's "offload: ..." for a device opened with ``offload=enabled``:
    what the last ``choose_offload`` returned, or that the config turned it off."""
    return _OFFLOAD_IN_USE if enabled else "off in the config"


def open_tun(name: str, offload: bool = True) -> TunDevice:
    """Open (creating it if need be) the TUN device ``name`` for this platform.

    ``offload`` lets the backend use what the OS offers to move many packets
    per system call; the packets the caller sees and gives are the same. The
    device's ``name`` is the one the OS gave (on macOS, always ``utunN``).
    """
    if sys.platform.startswith("linux"):
        from .linux import LinuxTun

        return LinuxTun.open(name, offload)
    if sys.platform.startswith("freebsd"):
        from .freebsd import FreeBsdTun

        return FreeBsdTun.open(name, offload)
    if sys.platform == "darwin":
        from .darwin import DarwinTun

        return DarwinTun.open(name, offload)
    raise TunError(f"no TUN backend for {sys.platform} (Linux, FreeBSD and macOS have one)")
