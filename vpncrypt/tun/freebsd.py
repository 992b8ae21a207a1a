"""FreeBSD TUN: a tun(4) interface in multi-family mode, non-blocking.

Opening /dev/tun makes the lowest free ``tunN`` (devfs cloning); a configured
name ``tunN`` opens /dev/tunN instead, and any other name is given to the
clone with SIOCSIFNAME (``tun`` alone keeps the kernel's). TUNSIFHEAD puts a
4-byte address family in front of every packet (without it IPv6 never reaches
the reader), TUNSIFMODE makes the interface point-to-point before anything
brings it up (the kernel refuses once it is up), and TUNGIFNAME says what it
is called. Unlike Linux, the interface outlives the descriptor: ``close``
destroys it. tun has no offloads (the virtio header is tap's only).

Numbers from net/if_tun.h and sys/sockio.h for 64-bit systems (amd64, arm64),
as ../shared/PLATFORMS.md §1.1 has them and wireguard-go's tun_freebsd.go uses.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import sys
from typing import Callable

from . import IOC_IN, IOC_OUT, FamilyHeaderTun, TunError, bsd_ioctl

IFNAMSIZ = 16
IFREQ_SIZE = 32  # struct ifreq: the name, then a 16-byte union
INT_SIZE = 4
TUNGIFNAME = bsd_ioctl(IOC_OUT, "t", 93, IFREQ_SIZE)  # _IOR('t', 93, struct ifreq) = 0x4020745D
TUNSIFMODE = bsd_ioctl(IOC_IN, "t", 94, INT_SIZE)  # _IOW('t', 94, int) = 0x8004745E
TUNSIFHEAD = bsd_ioctl(IOC_IN, "t", 96, INT_SIZE)  # _IOW('t', 96, int) = 0x80047460
SIOCSIFNAME = bsd_ioctl(IOC_IN, "i", 40, IFREQ_SIZE)  # _IOW('i', 40, struct ifreq) = 0x80206928
SIOCIFDESTROY = bsd_ioctl(IOC_IN, "i", 121, IFREQ_SIZE)  # _IOW('i', 121, struct ifreq) = 0x80206979
IFF_POINTOPOINT, IFF_MULTICAST = 0x10, 0x8000
AF_INET6 = 28  # FreeBSD's; Python's socket.AF_INET6 is the host's
_UNIT_NAME = re.compile(r"tun[0-9]+")
Ioctl = Callable[[int, int, bytes], bytes]  # (fd, request, argument) -> the argument as the kernel left it

log = logging.getLogger("vpncrypt")


def kernel_ioctl(fd: int, request: int, argument: bytes) -> bytes:
    """fcntl.ioctl. A bytes argument is passed by pointer, as every one here
    must be: an int would be taken for an address (EFAULT)."""
    return fcntl.ioctl(fd, request, argument)


def open_device_file(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def _int(value: int) -> bytes:
    return value.to_bytes(INT_SIZE, sys.byteorder)


def _ifreq(name: str) -> bytes:
    return name.encode().ljust(IFREQ_SIZE, b"\0")


def _on_control_socket(ioctl: Ioctl, request: int, argument: bytes) -> None:
    """Interface ioctls (sys/sockio.h) go to any socket, not to the device."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
        ioctl(control.fileno(), request, argument)


class FreeBsdTun(FamilyHeaderTun):
    """A tun interface owned by this process: destroyed when closed."""

    INET6 = AF_INET6

    def __init__(self, fd: int, name: str, ioctl: Ioctl = kernel_ioctl) -> None:
        super().__init__(fd, name)
        self._ioctl = ioctl

    @classmethod
    def open(cls, name: str, offload: bool = True, *, ioctl: Ioctl = kernel_ioctl,
             open_device: Callable[[str], int] = open_device_file) -> "FreeBsdTun":
        """Make the interface ``name``; ``ioctl`` and ``open_device`` are the
        kernel's unless a test plays it (tests/tun/test_freebsd.py)."""
        if not 0 < len(name.encode()) < IFNAMSIZ:
            raise TunError(f"interface name {name!r}: FreeBSD takes 1 to {IFNAMSIZ - 1} characters")
        by_unit = _UNIT_NAME.fullmatch(name) is not None
        path = f"/dev/{name}" if by_unit else "/dev/tun"
        try:
            fd = open_device(path)
        except FileNotFoundError:
            raise TunError(f"{path} does not exist: load the tun driver (kldload if_tuntap)") from None
        except PermissionError:
            raise TunError(f"cannot open {path}: run as root") from None
        except OSError as error:
            if error.errno == errno.EBUSY:
                raise TunError(f"{name} is in use by another process") from None
            raise TunError(f"cannot open {path}: {error.strerror}") from None
        try:
            made = cls._name_of(fd, ioctl)
        except OSError as error:
            os.close(fd)
            raise TunError(f"cannot learn the name of the interface {path} made (TUNGIFNAME: {error.strerror}): "
                           f"FreeBSD 12.1 or newer is needed") from None
        device = cls(fd, made, ioctl)
        try:
            device._set_up("" if by_unit or name == "tun" else name)
        except BaseException:
            if by_unit:
                FamilyHeaderTun.close(device)  # not necessarily ours: leave it as it was
            else:
                device.close()  # the clone, under whatever name it has now
            raise
        if offload:
            log.info("%s: no offloads on FreeBSD, one packet per read and write", device.name)
        return device

    @staticmethod
    def _name_of(fd: int, ioctl: Ioctl) -> str:
        reply = ioctl(fd, TUNGIFNAME, bytes(IFREQ_SIZE))
        return reply[:IFNAMSIZ].split(b"\0", 1)[0].decode()

    def _set_up(self, rename_to: str) -> None:
        step = "TUNSIFHEAD"
        try:
            self._ioctl(self._fd, TUNSIFHEAD, _int(1))
            step = "TUNSIFMODE"
            self._ioctl(self._fd, TUNSIFMODE, _int(IFF_POINTOPOINT | IFF_MULTICAST))
        except OSError as error:
            if error.errno == errno.EBUSY:
                raise TunError(f"{self.name} is up already, configured by something else: "
                               f"ifconfig {self.name} destroy, or name another interface") from None
            raise TunError(f"cannot set up {self.name} ({step}): {error.strerror}") from None
        if rename_to:
            self._rename(rename_to)

    def _rename(self, new: str) -> None:
        pointed = ctypes.create_string_buffer(new.encode(), IFNAMSIZ)  # SIOCSIFNAME's ifr_data points at the new name
        request = struct.pack("16sP", self.name.encode(), ctypes.addressof(pointed)).ljust(IFREQ_SIZE, b"\0")
        try:
            _on_control_socket(self._ioctl, SIOCSIFNAME, request)
        except OSError as error:
            if error.errno == errno.EEXIST:
                raise TunError(f"an interface named {new} exists already (left by an earlier run?): "
                               f"ifconfig {new} destroy") from None
            if error.errno in (errno.EPERM, errno.EACCES):
                raise TunError(f"cannot name the interface {new}: run as root") from None
            raise TunError(f"cannot rename {self.name} to {new}: {error.strerror}") from None
        self.name = new

    def close(self) -> None:
        if self._fd < 0:
            return
        super().close()  # the kernel brings the interface down, but it stays
        try:
            _on_control_socket(self._ioctl, SIOCIFDESTROY, _ifreq(self.name))
        except OSError as error:
            if error.errno != errno.ENXIO:  # gone already
                log.warning("%s stays after close (%s): ifconfig %s destroy", self.name, error.strerror, self.name)
