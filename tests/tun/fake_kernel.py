"""A fake Linux kernel for LinuxTun: its ioctls answered and recorded, its
descriptor one end of a datagram socket pair. Shared by the device tests and
the backend conformance suite.

The ioctl numbers, flags and header bytes are written out here rather than
imported, so that a wrong constant in linux.py fails."""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys

from vpncrypt.tun.linux import LinuxTun

TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
TUN, NO_PI, VNET_HDR = 0x0001, 0x1000, 0x4000
ALL_OFFLOADS, TCP_OFFLOADS, USO = 0x67, 0x07, 0x60  # CSUM|TSO4|TSO6|USO4|USO6; without USO4|USO6
VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
PLAIN = bytes(10)
NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4 = 1, 1, 4, 5


def ifreq(name: bytes, flags: int) -> bytes:
    """struct ifreq as TUNSETIFF takes it: 16 bytes of name, the flags, padding to 40."""
    return name.ljust(16, b"\0") + flags.to_bytes(2, sys.byteorder) + bytes(22)


class FakeKernel:
    """The ioctl side of /dev/net/tun for one descriptor: records (request, argument),
    names the interface ``given`` and refuses what it is told to."""

    def __init__(self, fd: int, given: bytes = b"vc0", refused: int = 0, create_error: int = 0) -> None:
        self.fd, self.given, self.refused, self.create_error = fd, given, refused, create_error
        self.calls: list[tuple[int, bytes | int]] = []

    def __call__(self, fd: int, request: int, argument: bytes | int) -> bytes | int:
        assert fd == self.fd
        self.calls.append((request, argument))
        if request == TUNSETIFF:
            if self.create_error:
                raise OSError(self.create_error, os.strerror(self.create_error))
            return self.given.ljust(16, b"\0") + argument[16:]  # type: ignore[index]
        if request == TUNSETOFFLOAD and argument & self.refused:  # type: ignore[operator]
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))  # flags this kernel does not know
        return 0


def linux_over_socketpair(offload: bool = True, **kernel) -> tuple[LinuxTun, socket.socket, FakeKernel]:
    """A LinuxTun named "vc%d" whose descriptor is one end of a non-blocking datagram
    socket pair; the caller gets the other end and closes both."""
    own, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    own.setblocking(False)
    peer.setblocking(False)
    fd = own.detach()
    fake = FakeKernel(fd, **kernel)
    try:
        return LinuxTun.open("vc%d", offload, ioctl=fake, open_device=lambda: fd), peer, fake
    except BaseException:
        peer.close()
        raise


def drain(peer: socket.socket) -> list[bytes]:
    received = []
    while True:
        try:
            received.append(peer.recv(70000))
        except BlockingIOError:
            return received
