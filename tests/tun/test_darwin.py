"""DarwinTun without macOS: the utun socket is one end of a datagram socket pair, and the
kernel-control calls (socket, CTLIOCGINFO, connect, UTUN_OPT_IFNAME) are answered by a
fake that records them (fake_kernel.FakeDarwin): Linux has no PF_SYSTEM to make one."""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import sys

import pytest

from tests.builders import make_partial, tcp_packet, udp_packet
from vpncrypt.tun import IOC_INOUT, TunError, bsd_ioctl, open_tun
from vpncrypt.tun import darwin as backend
from vpncrypt.tun.darwin import DarwinTun

from .fake_kernel import (
    CTLIOCGINFO, DARWIN_INET6, FREEBSD_INET6, INET, PF_SYSTEM, SYSPROTO_CONTROL, UTUN_CONTROL, UTUN_OPT_IFNAME,
    FakeDarwin, darwin_over_socketpair, device_pair, drain,
)

V4, V6 = tcp_packet(1, b"four"), tcp_packet(2, b"six", v6=True)


@pytest.fixture
def darwin():
    opened = []

    def make(name: str = "utun", offload: bool = False, **kernel):
        made = darwin_over_socketpair(name, offload, **kernel)
        opened.append(made)
        return made

    yield make
    for tun, peer, _ in opened:
        tun.close()
        peer.close()


@pytest.fixture
def failing():
    """Open a DarwinTun that must fail: the fake kernel and the error."""
    ends = []

    def make(name: str = "utun", **kernel) -> tuple[FakeDarwin, TunError]:
        own, peer = device_pair()
        ends.extend((own, peer))
        fake = FakeDarwin(own, **kernel)
        with pytest.raises(TunError) as raised:
            DarwinTun.open(name, ioctl=fake, kernel=fake)
        return fake, raised.value

    yield make
    for end in ends:
        end.close()


def test_numbers_are_the_bsd_encoding_of_their_definitions():
    assert bsd_ioctl(IOC_INOUT, "N", 3, 100) == CTLIOCGINFO == backend.CTLIOCGINFO  # _IOWR('N', 3, struct ctl_info)
    assert struct.calcsize("I96s") == backend.CTL_INFO.size == 100
    assert (backend.PF_SYSTEM, backend.SYSPROTO_CONTROL, backend.UTUN_OPT_IFNAME) == (
        PF_SYSTEM, SYSPROTO_CONTROL, UTUN_OPT_IFNAME)
    assert backend.AF_INET6 == 30


def test_open_finds_the_control_connects_and_learns_the_name(darwin, caplog):
    with caplog.at_level(logging.INFO, logger="vpncrypt"):
        tun, _, kernel = darwin("vpncrypt0", taken=("utun0", "utun1", "utun2"))
    assert kernel.calls == [
        ("socket", 32, socket.SOCK_DGRAM, 2),
        ("ioctl", 0xC0644E03, bytes(4) + UTUN_CONTROL),
        ("connect", (0x1234, 0)),  # the control ID the kernel gave; unit 0: the next free one
        ("getsockopt", 2, 2, 16),  # UTUN_OPT_IFNAME at SYSPROTO_CONTROL, room for IFNAMSIZ
    ]
    assert tun.name == "utun3"
    assert [r.getMessage() for r in caplog.records] == ["macOS named the interface utun3 (configured: vpncrypt0)"]


@pytest.mark.parametrize("name, unit", [("utun7", 8), ("utun0", 1), ("utun", 0)])
def test_a_utun_n_name_asks_for_unit_n_plus_one(darwin, name, unit):
    tun, _, kernel = darwin(name, taken=("utun0",) if unit != 1 else ())
    assert kernel.calls[2] == ("connect", (0x1234, unit))
    assert tun.name == (name if unit else "utun1")


def test_offload_turns_nothing_on_and_says_so_once(darwin, caplog):
    with caplog.at_level(logging.INFO, logger="vpncrypt"):
        _, _, kernel = darwin("utun2", offload=True)
    assert [call[0] for call in kernel.calls] == ["socket", "ioctl", "connect", "getsockopt"]
    assert [r.getMessage() for r in caplog.records] == ["utun2: no offloads on macOS, one packet per read and write"]


def test_reads_strip_the_family_of_ipv4_and_ipv6(darwin):
    tun, peer, _ = darwin()
    peer.send(INET + V4)
    peer.send(DARWIN_INET6 + V6)
    assert tun.read_batch(64) == [V4, V6]


def test_writes_carry_macos_family_by_ip_version(darwin):
    tun, peer, _ = darwin()
    assert tun.write_batch([V6, V4]) == 0
    assert drain(peer) == [bytes.fromhex("0000001e") + V6, bytes.fromhex("00000002") + V4]


def test_other_families_and_runts_are_skipped_and_counted(darwin):
    tun, peer, _ = darwin()
    for frame in (FREEBSD_INET6 + V6, bytes.fromhex("0000000a") + V6, DARWIN_INET6, b"\0"):
        peer.send(frame)
    peer.send(DARWIN_INET6 + V6)
    assert tun.read_batch(64) == [V6]
    assert tun.skipped == 4


def test_partial_checksums_are_finished_before_writing(darwin):
    tun, peer, _ = darwin()
    whole = [tcp_packet(3, b"t" * 200, v6=True), udp_packet(b"u" * 70), tcp_packet(4, b"t" * 9)]
    assert tun.write_batch([make_partial(packet) for packet in whole]) == 0
    assert drain(peer) == [DARWIN_INET6 + whole[0], INET + whole[1], INET + whole[2]]


def test_a_batch_is_one_read_a_packet_until_the_device_is_empty(darwin):
    tun, peer, _ = darwin()
    packets = [tcp_packet(seq, b"r", src_port=seq) for seq in range(4)]
    for packet in packets:
        peer.send(INET + packet)
    assert tun.read_batch(1) == packets[:1]
    assert tun.read_batch(64) == packets[1:]
    assert tun.read_batch(64) == []


def test_the_socket_never_blocks_and_stays_with_this_process(darwin):
    tun, _, _ = darwin()
    assert not os.get_blocking(tun.fileno()) and not os.get_inheritable(tun.fileno())


def test_close_closes_the_socket_once(darwin):
    tun, peer, _ = darwin()
    fd = tun.fileno()
    tun.close()
    tun.close()
    assert tun.fileno() == -1
    with pytest.raises(OSError) as closed:
        os.fstat(fd)
    assert closed.value.errno == errno.EBADF
    with pytest.raises(OSError):
        peer.send(INET + V4)  # nobody on the other side: the interface is gone


@pytest.mark.parametrize("name, kernel, message", [
    ("utun", {"errors": {"socket": errno.EAFNOSUPPORT}},
     f"cannot open a kernel control socket: {os.strerror(errno.EAFNOSUPPORT)}"),
    ("utun", {"errors": {"ioctl": errno.ENOENT}}, "cannot find the utun kernel control: No such file or directory"),
    ("utun", {"errors": {"connect": errno.EPERM}}, "cannot create a utun interface: run as root"),
    ("utun3", {"taken": ("utun3",)}, "utun3 is in use: configure another utunN, or utun to let macOS pick"),
    ("utun", {"errors": {"getsockopt": errno.EMSGSIZE}},
     f"cannot learn the utun interface's name: {os.strerror(errno.EMSGSIZE)}"),
])
def test_open_failures_say_what_to_do_and_close_the_socket(failing, name, kernel, message):
    fake, raised = failing(name, **kernel)
    assert str(raised) == message
    handed_out = "socket" not in fake.errors  # a socket the device got, it closes
    assert (fake.own.fileno() == -1) == handed_out


def test_open_tun_picks_this_backend_on_macos(monkeypatch):
    opened = []
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(DarwinTun, "open", classmethod(lambda cls, name, offload: opened.append((name, offload))))
    open_tun("utun", offload=True)
    assert opened == [("utun", True)]
