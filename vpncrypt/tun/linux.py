"""Linux TUN: /dev/net/tun with IFF_TUN | IFF_NO_PI, non-blocking.

With ``offload`` the device also has IFF_VNET_HDR and, where the kernel
agrees, TUNSETOFFLOAD with checksum offload and TCP and UDP segmentation
offload (UDP from Linux 6.2; older kernels refuse it and get TCP only): every
read and write carries a 10-byte virtio_net_hdr. A read may then return a TCP
or UDP super-packet of up to 64 KiB (cut into segments here, see offload.py
and its compiled twin vpncrypt/_offload.c) and a write may hand the kernel
one merged super-packet instead of its segments one by one; checksums are
left to the kernel both ways.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from typing import Callable

from ..core.inner import PartialChecksumPacket, checksum_location, complete_checksum
from . import TunError, finished
from .offload import (
    F_NEEDS_CSUM, GSO_UDP_L4, VNET_HEADER, VNET_HEADER_LEN, coalesce, compiled as compiled_offload, split, split_datagrams,
)

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
# What to ask for, best first, and what the log calls it: the kernel refuses
# flags it does not know (EINVAL).
OFFLOAD_CHOICES = (
    (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6, "checksums, TCP and UDP segmentation"),
    (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, "checksums and TCP segmentation (the kernel refused UDP)"),
)
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
# Fail with EBUSY if an interface of that name exists (linux/if_tun.h): a TUN
# device of ours never outlives its process, so one that exists is someone
# else's (a persistent TUN device, another VPN's, a veth), never to be taken over.
IFF_TUN_EXCL = 0x8000
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then flags in the union
_READ_SIZE = 65536  # the largest IP packet; MTU changes at run time cannot truncate
Ioctl = Callable[[int, int, bytes | int], bytes | int]  # (fd, request, argument) -> reply


def kernel_ioctl(fd: int, request: int, argument: bytes | int) -> bytes | int:
    """fcntl.ioctl, looked up at each call: tests/netns/tun_probe.py plays an
    older kernel by replacing it."""
    return fcntl.ioctl(fd, request, argument)


def open_clone_device() -> int:
    """A new descriptor on /dev/net/tun, the device that TUNSETIFF turns into an interface."""
    return os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


class LinuxTun:
    """A TUN device owned by this process: it disappears when closed."""

    def __init__(self, fd: int, name: str, offload: bool, segmentation: int = 0) -> None:
        self._fd = fd
        self.name = name
        self.offload = offload
        self.segmentation = segmentation  # the TUN_F_* flags the kernel took, 0 for none
        self._buffer = bytearray(_READ_SIZE + VNET_HEADER_LEN)
        self._view = memoryview(self._buffer)
        # The offload functions offload.choose chose: compiled, or the Python reference.
        compiled = compiled_offload()
        self._split = compiled.split if compiled else split
        self._split_datagrams = compiled.split_datagrams if compiled else split_datagrams
        self._write_compiled = compiled.write_coalesced if compiled else None

    @classmethod
    def open(cls, name: str, offload: bool = True, *, ioctl: Ioctl = kernel_ioctl,
             open_device: Callable[[], int] = open_clone_device) -> "LinuxTun":
        """Create the interface ``name``; ``ioctl`` and ``open_device`` are the
        kernel's unless a test plays it (tests/tun/test_linux_device.py)."""
        try:
            fd = open_device()
        except FileNotFoundError:
            raise TunError("/dev/net/tun does not exist: load the tun module (modprobe tun)") from None
        except PermissionError:
            raise TunError("cannot open /dev/net/tun: run as root (or with CAP_NET_ADMIN)") from None
        except OSError as error:
            raise TunError(f"cannot open /dev/net/tun: {error.strerror}") from None
        try:
            flags = IFF_TUN | IFF_NO_PI | IFF_TUN_EXCL | (IFF_VNET_HDR if offload else 0)
            reply = ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
        except OSError as error:
            os.close(fd)
            if error.errno == errno.EPERM:
                raise TunError(f"cannot create {name}: run as root (or with CAP_NET_ADMIN)") from None
            if error.errno == errno.EBUSY:
                raise TunError(f"an interface named {name} exists already (a persistent TUN device, another"
                               f" VPN's or any other): choose another interface in the config, or delete"
                               f" it (ip link delete {name}) if nothing needs it") from None
            raise TunError(f"cannot create {name}: {error.strerror}") from None
        actual = _IFREQ.unpack(reply)[0].rstrip(b"\0").decode()
        segmentation, taken = 0, "none taken by the kernel"
        for choice, description in OFFLOAD_CHOICES if offload else ():
            try:
                ioctl(fd, TUNSETOFFLOAD, choice)
            except OSError:
                continue  # with none, the kernel hands over plain packets; merged writes still work
            segmentation, taken = choice, description
            break
        if offload:
            logging.getLogger("vpncrypt").info("%s offloads: %s", actual, taken)
        return cls(fd, actual, offload, segmentation)

    def fileno(self) -> int:
        return self._fd

    def read_batch(self, limit: int) -> list[bytes]:
        packets = []
        readv, fd, buffers, view = os.readv, self._fd, [self._buffer], self._view
        if not self.offload:
            while len(packets) < limit:
                try:
                    size = readv(fd, buffers)
                except BlockingIOError:
                    break
                packets.append(bytes(view[:size]))
            return packets
        unpack, split_tcp, split_udp = VNET_HEADER.unpack_from, self._split, self._split_datagrams
        while len(packets) < limit:
            try:
                size = readv(fd, buffers)
            except BlockingIOError:
                break
            flags, gso_type, _, gso_size, start, offset = unpack(self._buffer)
            if gso_type:
                segments = (split_udp(view[VNET_HEADER_LEN:size], gso_size) if gso_type == GSO_UDP_L4
                            else split_tcp(view[VNET_HEADER_LEN:size], gso_type, gso_size))
                if segments:
                    packets.extend(segments)
                    continue
                # What the splitters cannot cut goes on whole, as a packet without
                # GSO, never dropped here: a malformed one is counted by the server
                # core (tun_malformed) or the receiving end (inner_malformed), one
                # too big for the tunnel by the receiving end (bad_length).
            if flags & F_NEEDS_CSUM:
                packet = view[VNET_HEADER_LEN:size]
                if checksum_location(packet) == (start, offset):
                    packets.append(PartialChecksumPacket(packet))
                else:
                    packets.append(complete_checksum(bytes(packet), (start, offset)))
            else:
                packets.append(bytes(view[VNET_HEADER_LEN:size]))
        return packets

    def write_batch(self, packets: list[bytes]) -> int:
        if self.offload:
            return self._write_coalesced(packets)
        refused = 0
        write, fd, finish = os.write, self._fd, finished
        for packet in packets:
            try:
                write(fd, finish(packet))  # no offload: nobody else will finish a partial checksum
            except (BlockingIOError, OSError):
                # Full queue or a packet the kernel will not take (EINVAL):
                # lost like on any network; the counter shows it.
                refused += 1
        return refused

    def _write_coalesced(self, packets: list[bytes]) -> int:
        # A kernel that refused UDP segmentation also refuses merged UDP writes.
        merge_datagrams = bool(self.segmentation & TUN_F_USO4)
        if self._write_compiled is not None:  # this loop, compiled (vpncrypt/_offload.c)
            return self._write_compiled(self._fd, packets, merge_datagrams)
        refused = 0
        writev, fd = os.writev, self._fd
        for plan in coalesce(packets, merge_datagrams=merge_datagrams):
            try:
                writev(fd, plan)
            except (BlockingIOError, OSError):
                refused += len(plan) - 2 if len(plan) > 2 else 1
        return refused

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
