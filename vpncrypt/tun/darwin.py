"""macOS TUN: a utun interface, made by connecting a kernel-control socket.

A PF_SYSTEM socket asks the kernel for the utun control's ID (CTLIOCGINFO)
and connects to it with a unit: N + 1 makes ``utunN``, 0 lets the kernel take
the next free one, which is what any name other than ``utunN`` gets (macOS
names utun interfaces itself). UTUN_OPT_IFNAME then says which it is. Every
packet carries a 4-byte address family, each way; the interface, its
addresses and its routes go away when the socket is closed. No offloads.

UTUN_OPT_MAX_PENDING_PACKETS is left at the kernel's default (1): whether a
larger queue lets batches drain is for a real Mac to show.
Numbers from xnu's sys/kern_control.h, sys/sys_domain.h and net/if_utun.h,
as ../shared/PLATFORMS.md §2.1 has them.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import re
import socket
import struct
from typing import Callable

from . import IOC_INOUT, FamilyHeaderTun, TunError, bsd_ioctl

PF_SYSTEM = 32  # AF_SYSTEM; Linux has none, and Python names it only on macOS
SYSPROTO_CONTROL = 2
UTUN_CONTROL_NAME = b"com.apple.net.utun_control"
UTUN_OPT_IFNAME = 2  # a getsockopt at level SYSPROTO_CONTROL
CTL_INFO = struct.Struct("I96s")  # struct ctl_info: ctl_id, then ctl_name[MAX_KCTL_NAME]
CTLIOCGINFO = bsd_ioctl(IOC_INOUT, "N", 3, CTL_INFO.size)  # _IOWR('N', 3, struct ctl_info) = 0xC0644E03
IFNAMSIZ = 16
AF_INET6 = 30  # macOS's; Python's socket.AF_INET6 is the host's
_UNIT_NAME = re.compile(r"utun([0-9]+)")
Ioctl = Callable[[int, int, bytes], bytes]

log = logging.getLogger("vpncrypt")


def kernel_ioctl(fd: int, request: int, argument: bytes) -> bytes:
    return fcntl.ioctl(fd, request, argument)


class KernelControl:
    """The socket calls that make a utun, done by the system; a test plays
    them on Linux, which has no PF_SYSTEM (tests/tun/test_darwin.py)."""

    def socket(self, family: int, kind: int, protocol: int) -> socket.socket:
        return socket.socket(family, kind, protocol)

    def connect(self, sock: socket.socket, address: tuple[int, int]) -> None:
        """``address`` is (control ID, unit): CPython makes the sockaddr_ctl of it."""
        sock.connect(address)

    def getsockopt(self, sock: socket.socket, level: int, option: int, size: int) -> bytes:
        return sock.getsockopt(level, option, size)


class DarwinTun(FamilyHeaderTun):
    """A utun interface: it disappears when closed."""

    INET6 = AF_INET6

    @classmethod
    def open(cls, name: str, offload: bool = True, *, ioctl: Ioctl = kernel_ioctl,
             kernel: KernelControl = KernelControl()) -> "DarwinTun":
        """Make ``name`` if it is ``utunN``, else the next free utun; ``ioctl``
        and ``kernel`` are the system's unless a test plays them."""
        asked = _UNIT_NAME.fullmatch(name)
        unit = int(asked[1]) + 1 if asked else 0
        try:
            sock = kernel.socket(PF_SYSTEM, socket.SOCK_DGRAM, SYSPROTO_CONTROL)
        except OSError as error:
            raise TunError(f"cannot open a kernel control socket: {error.strerror}") from None
        try:
            actual = cls._connect(sock, unit, name, ioctl, kernel)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        if actual != name:
            log.info("macOS named the interface %s (configured: %s)", actual, name)
        if offload:
            log.info("%s: no offloads on macOS, one packet per read and write", actual)
        return cls(sock.detach(), actual)

    @staticmethod
    def _connect(sock: socket.socket, unit: int, name: str, ioctl: Ioctl, kernel: KernelControl) -> str:
        """Connect ``sock`` to the utun control with ``unit``; the name it made."""
        try:
            reply = ioctl(sock.fileno(), CTLIOCGINFO, CTL_INFO.pack(0, UTUN_CONTROL_NAME))
        except OSError as error:
            raise TunError(f"cannot find the utun kernel control: {error.strerror}") from None
        control_id = CTL_INFO.unpack(reply)[0]
        try:
            kernel.connect(sock, (control_id, unit))
        except OSError as error:
            if error.errno in (errno.EPERM, errno.EACCES):
                raise TunError("cannot create a utun interface: run as root") from None
            if error.errno == errno.EBUSY:
                raise TunError(f"{name} is in use: configure another utunN, or utun to let macOS pick") from None
            raise TunError(f"cannot create a utun interface: {error.strerror}") from None
        try:
            reply = kernel.getsockopt(sock, SYSPROTO_CONTROL, UTUN_OPT_IFNAME, IFNAMSIZ)
        except OSError as error:
            raise TunError(f"cannot learn the utun interface's name: {error.strerror}") from None
        return reply.split(b"\0", 1)[0].decode()
