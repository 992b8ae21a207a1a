"""Fake Linux, FreeBSD and macOS kernels for the TUN backends: their ioctls
(and on macOS the kernel-control socket calls) answered and recorded, the
device's descriptor one end of a datagram socket pair. Shared by the device
tests, the backend conformance suite and the daemon tests.

The ioctl numbers, flags and header bytes are written out here rather than
imported, so that a wrong constant in a backend fails."""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import socket
import struct
import sys

from vpncrypt.tun.darwin import DarwinTun
from vpncrypt.tun.freebsd import FreeBsdTun
from vpncrypt.tun.linux import LinuxTun

TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
TUN, NO_PI, TUN_EXCL, VNET_HDR = 0x0001, 0x1000, 0x8000, 0x4000
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


# The 4-byte address family before every packet on FreeBSD (TUNSIFHEAD) and macOS.
INET = bytes.fromhex("00000002")
FREEBSD_INET6 = bytes.fromhex("0000001c")  # 28
DARWIN_INET6 = bytes.fromhex("0000001e")  # 30


def framed(packet: bytes, inet6: bytes) -> bytes:
    """``packet`` as the kernel hands it over: its family first, by its version."""
    return {4: INET, 6: inet6}[packet[0] >> 4] + packet


def unframed(frames: list[bytes], inet6: bytes) -> list[bytes]:
    """The packets in what the device wrote, each checked for the right family."""
    for frame in frames:
        assert frame[:4] == {4: INET, 6: inet6}[frame[4] >> 4], frame[:8].hex()
    return [frame[4:] for frame in frames]


def native_int(value: int) -> bytes:
    return value.to_bytes(4, sys.byteorder)


def errno_error(number: int) -> OSError:
    return OSError(number, os.strerror(number))


def opened_socket(fd: int) -> tuple[int, int]:
    """(family, type) of the socket ``fd``, which stays open."""
    sock = socket.socket(fileno=fd)
    try:
        return sock.family, sock.type
    finally:
        sock.detach()


# FreeBSD: net/if_tun.h and sys/sockio.h, 64-bit (PLATFORMS.md §1.1).
TUNGIFNAME, TUNSIFMODE, TUNSIFHEAD = 0x4020745D, 0x8004745E, 0x80047460
SIOCSIFNAME, SIOCIFDESTROY = 0x80206928, 0x80206979
POINTOPOINT_MULTICAST = 0x8010
TUN_IOCTLS = (TUNGIFNAME, TUNSIFMODE, TUNSIFHEAD)


class FakeFreeBsd:
    """What FreeBsdTun asks of a FreeBSD kernel. ``open_device`` hands out
    ``fd`` (one end of a socket pair) as a tun interface: opening /dev/tun
    makes the lowest free tunN, /dev/tunN makes or opens that one. Tun ioctls
    must go to ``fd``, interface ioctls to an AF_INET datagram socket.

    ``calls`` records (request, argument); SIOCSIFNAME's argument as
    (ifr_name, the 16 bytes its pointer points at), read during the call.
    ``destroyed`` records (name, whether the device was still open).
    ``errors`` maps a request (or "open") to the errno it fails with."""

    def __init__(self, fd: int, interfaces: tuple[str, ...] = (), errors: dict | None = None) -> None:
        self.fd, self.inode = fd, os.fstat(fd).st_ino
        self.interfaces = set(interfaces)
        self.errors = errors or {}
        self.opened: list[str] = []
        self.calls: list[tuple[int, object]] = []
        self.destroyed: list[tuple[str, bool]] = []
        self.name = ""  # the interface of fd

    def open_device(self, path: str) -> int:
        self.opened.append(path)
        if "open" in self.errors:
            raise errno_error(self.errors["open"])
        if path == "/dev/tun":
            self.name = next(f"tun{unit}" for unit in itertools.count() if f"tun{unit}" not in self.interfaces)
        else:
            self.name = path.removeprefix("/dev/")
        self.interfaces.add(self.name)
        return self.fd

    def device_open(self) -> bool:
        try:
            return os.fstat(self.fd).st_ino == self.inode  # the number may be another descriptor's now
        except OSError:
            return False

    def __call__(self, fd: int, request: int, argument: bytes) -> bytes:
        assert type(argument) is bytes, "a BSD ioctl's argument goes by pointer: bytes, never an int"
        if request == SIOCSIFNAME:
            assert len(argument) == 32 and argument[24:] == bytes(8)
            name, pointer = struct.unpack_from("16sP", argument)
            self.calls.append((request, (name, ctypes.string_at(pointer, 16))))
        else:
            self.calls.append((request, argument))
        if request in self.errors:
            raise errno_error(self.errors[request])
        if request in TUN_IOCTLS:
            assert fd == self.fd and self.device_open(), "a tun ioctl goes to the device"
            assert len(argument) == (32 if request == TUNGIFNAME else 4)
            return self.name.encode().ljust(32, b"\0") if request == TUNGIFNAME else argument
        assert opened_socket(fd) == (socket.AF_INET, socket.SOCK_DGRAM), "an interface ioctl goes to a socket"
        if request == SIOCSIFNAME:
            old, new = (raw.split(b"\0", 1)[0].decode() for raw in self.calls[-1][1])  # type: ignore[union-attr]
            if old not in self.interfaces:
                raise errno_error(errno.ENXIO)
            if new in self.interfaces:
                raise errno_error(errno.EEXIST)
            self.interfaces = self.interfaces - {old} | {new}
            self.name = new if self.name == old else self.name
            return argument
        if request == SIOCIFDESTROY:
            assert len(argument) == 32
            name = argument[:16].split(b"\0", 1)[0].decode()
            if name not in self.interfaces:
                raise errno_error(errno.ENXIO)
            self.interfaces.remove(name)
            self.destroyed.append((name, self.device_open()))
            return argument
        raise errno_error(errno.ENOTTY)


def device_pair() -> tuple[socket.socket, socket.socket]:
    """Two non-blocking ends of a datagram socket pair: the device's and the test's."""
    own, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for end in (own, peer):
        end.setblocking(False)
    return own, peer


def freebsd_over_socketpair(name: str = "vc0", offload: bool = False,
                            **kernel) -> tuple[FreeBsdTun, socket.socket, FakeFreeBsd]:
    """A FreeBsdTun whose descriptor is one end of a socket pair; the caller
    gets the other end (the kernel's side) and closes both."""
    own, peer = device_pair()
    fd = own.detach()
    fake = FakeFreeBsd(fd, **kernel)
    try:
        return FreeBsdTun.open(name, offload, ioctl=fake, open_device=fake.open_device), peer, fake
    except BaseException:
        peer.close()
        raise


# macOS: sys/kern_control.h, sys/sys_domain.h, net/if_utun.h (PLATFORMS.md §2.1).
PF_SYSTEM, SYSPROTO_CONTROL, UTUN_OPT_IFNAME = 32, 2, 2
CTLIOCGINFO = 0xC0644E03
UTUN_CONTROL = b"com.apple.net.utun_control".ljust(96, b"\0")


class FakeDarwin:
    """What DarwinTun asks of macOS: ``socket`` hands out ``own`` (one end of
    a socket pair), CTLIOCGINFO answers ``control_id`` for the utun control,
    connecting with unit 0 takes the lowest free utunN and with N + 1 utunN
    (EBUSY if ``taken``), UTUN_OPT_IFNAME gives the name. ``calls`` records
    each step as a tuple; ``errors`` maps a step's name to its errno."""

    def __init__(self, own: socket.socket, taken: tuple[str, ...] = (), control_id: int = 0x1234,
                 errors: dict | None = None) -> None:
        self.own, self.taken, self.control_id = own, set(taken), control_id
        own.setblocking(True)  # as a new socket is
        self.errors = errors or {}
        self.calls: list[tuple] = []
        self.name = ""

    def _step(self, *call) -> None:
        self.calls.append(call)
        if call[0] in self.errors:
            raise errno_error(self.errors[call[0]])

    def socket(self, family: int, kind: int, protocol: int) -> socket.socket:
        self._step("socket", family, kind, protocol)
        return self.own

    def __call__(self, fd: int, request: int, argument: bytes) -> bytes:
        assert fd == self.own.fileno()
        self._step("ioctl", request, argument)
        if request != CTLIOCGINFO or len(argument) != 100:
            raise errno_error(errno.ENOTTY)
        if argument[4:] != UTUN_CONTROL:
            raise errno_error(errno.ENOENT)
        return self.control_id.to_bytes(4, sys.byteorder) + argument[4:]

    def connect(self, sock: socket.socket, address: tuple[int, int]) -> None:
        assert sock is self.own
        self._step("connect", address)
        control_id, unit = address
        if control_id != self.control_id:
            raise errno_error(errno.ENOENT)
        if unit:
            name = f"utun{unit - 1}"
            if name in self.taken:
                raise errno_error(errno.EBUSY)
        else:
            name = next(f"utun{n}" for n in itertools.count() if f"utun{n}" not in self.taken)
        self.name = name
        self.taken.add(name)

    def getsockopt(self, sock: socket.socket, level: int, option: int, size: int) -> bytes:
        assert sock is self.own
        self._step("getsockopt", level, option, size)
        if (level, option) != (SYSPROTO_CONTROL, UTUN_OPT_IFNAME) or not self.name:
            raise errno_error(errno.ENOPROTOOPT)
        value = self.name.encode() + b"\0"
        if size < len(value):
            raise errno_error(errno.EMSGSIZE)
        return value


def darwin_over_socketpair(name: str = "utun", offload: bool = False,
                           **kernel) -> tuple[DarwinTun, socket.socket, FakeDarwin]:
    """A DarwinTun whose socket is one end of a socket pair; the caller gets
    the other end (the kernel's side) and closes both."""
    own, peer = device_pair()
    fake = FakeDarwin(own, **kernel)
    try:
        return DarwinTun.open(name, offload, ioctl=fake, kernel=fake), peer, fake
    except BaseException:
        own.close()
        peer.close()
        raise
