"""FreeBsdTun without FreeBSD: the device over one end of a datagram socket pair, its
ioctls answered by a fake kernel that records them (fake_kernel.FakeFreeBsd). What the
test sends on the other end is what the kernel would hand the device; what arrives there
is what it would get."""

from __future__ import annotations

import errno
import logging
import os
import struct
import sys

import pytest

from tests.builders import make_partial, tcp_packet, udp_packet
from vpncrypt.tun import IOC_IN, IOC_OUT, TunError, bsd_ioctl, open_tun
from vpncrypt.tun import freebsd as backend
from vpncrypt.tun.freebsd import FreeBsdTun

from .fake_kernel import (
    FREEBSD_INET6, INET, POINTOPOINT_MULTICAST, SIOCIFDESTROY, SIOCSIFNAME, TUNGIFNAME, TUNSIFHEAD, TUNSIFMODE,
    FakeFreeBsd, device_pair, drain, freebsd_over_socketpair, native_int,
)

V4, V6 = tcp_packet(1, b"four"), tcp_packet(2, b"six", v6=True)


def name16(name: bytes) -> bytes:
    return name.ljust(16, b"\0")


@pytest.fixture
def freebsd():
    opened = []

    def make(name: str = "vc0", offload: bool = False, **kernel):
        made = freebsd_over_socketpair(name, offload, **kernel)
        opened.append(made)
        return made

    yield make
    for tun, peer, _ in opened:
        tun.close()
        peer.close()


@pytest.fixture
def failing():
    """Open a FreeBsdTun that must fail; the fake kernel, to look at afterwards."""
    made = []

    def make(name: str = "vc0", **kernel) -> tuple[FakeFreeBsd, TunError]:
        own, peer = device_pair()
        fake = FakeFreeBsd(own.detach(), **kernel)
        made.append((fake, peer))
        with pytest.raises(TunError) as raised:
            FreeBsdTun.open(name, ioctl=fake, open_device=fake.open_device)
        return fake, raised.value

    yield make
    for fake, peer in made:
        if fake.device_open():  # never handed out
            os.close(fake.fd)
        peer.close()


def test_ioctl_numbers_are_the_bsd_encoding_of_their_definitions():
    assert bsd_ioctl(IOC_OUT, "t", 93, 32) == TUNGIFNAME == backend.TUNGIFNAME  # _IOR('t', 93, struct ifreq)
    assert bsd_ioctl(IOC_IN, "t", 94, 4) == TUNSIFMODE == backend.TUNSIFMODE  # _IOW('t', 94, int)
    assert bsd_ioctl(IOC_IN, "t", 96, 4) == TUNSIFHEAD == backend.TUNSIFHEAD  # _IOW('t', 96, int)
    assert bsd_ioctl(IOC_IN, "i", 40, 32) == SIOCSIFNAME == backend.SIOCSIFNAME  # _IOW('i', 40, struct ifreq)
    assert bsd_ioctl(IOC_IN, "i", 121, 32) == SIOCIFDESTROY == backend.SIOCIFDESTROY  # _IOW('i', 121, ...)
    assert struct.calcsize("16sP") <= backend.IFREQ_SIZE == 32
    assert (backend.AF_INET6, backend.IFF_POINTOPOINT | backend.IFF_MULTICAST) == (28, POINTOPOINT_MULTICAST)


def test_open_clones_sets_the_header_and_mode_then_renames(freebsd):
    tun, _, kernel = freebsd("vc0", interfaces=("tun0",))
    assert kernel.opened == ["/dev/tun"]
    assert kernel.calls == [
        (TUNGIFNAME, bytes(32)),
        (TUNSIFHEAD, native_int(1)),
        (TUNSIFMODE, native_int(POINTOPOINT_MULTICAST)),
        (SIOCSIFNAME, (name16(b"tun1"), name16(b"vc0"))),
    ]
    assert tun.name == "vc0" and kernel.interfaces == {"tun0", "vc0"}


def test_a_bare_tun_keeps_the_kernels_name_and_tun_n_opens_its_device(freebsd):
    tun, _, kernel = freebsd("tun", interfaces=("tun0", "tun1"))
    assert (tun.name, kernel.opened) == ("tun2", ["/dev/tun"])
    assert [request for request, _ in kernel.calls] == [TUNGIFNAME, TUNSIFHEAD, TUNSIFMODE]
    tun, _, kernel = freebsd("tun7")
    assert (tun.name, kernel.opened) == ("tun7", ["/dev/tun7"])
    assert [request for request, _ in kernel.calls] == [TUNGIFNAME, TUNSIFHEAD, TUNSIFMODE]


def test_offload_turns_nothing_on_and_says_so_once(freebsd, caplog):
    with caplog.at_level(logging.INFO, logger="vpncrypt"):
        _, _, kernel = freebsd(offload=True)
    assert [request for request, _ in kernel.calls] == [TUNGIFNAME, TUNSIFHEAD, TUNSIFMODE, SIOCSIFNAME]
    assert [r.getMessage() for r in caplog.records] == ["vc0: no offloads on FreeBSD, one packet per read and write"]


def test_reads_strip_the_family_of_ipv4_and_ipv6(freebsd):
    tun, peer, _ = freebsd()
    peer.send(INET + V4)
    peer.send(FREEBSD_INET6 + V6)
    assert tun.read_batch(64) == [V4, V6]


def test_writes_carry_freebsds_family_by_ip_version(freebsd):
    tun, peer, _ = freebsd()
    assert tun.write_batch([V4, V6, V4]) == 0
    assert drain(peer) == [bytes.fromhex("00000002") + V4, bytes.fromhex("0000001c") + V6,
                           bytes.fromhex("00000002") + V4]


def test_other_families_and_runts_are_skipped_and_counted(freebsd):
    tun, peer, _ = freebsd()
    for frame in (bytes.fromhex("0000001e") + V6,  # macOS's AF_INET6
                  bytes.fromhex("0000000a") + V6,  # Linux's
                  bytes.fromhex("00000002"), b"\0\0"):
        peer.send(frame)
    peer.send(INET + V4)
    assert tun.read_batch(64) == [V4]
    assert tun.skipped == 4


def test_a_packet_without_an_ip_version_is_refused_not_written(freebsd):
    tun, peer, _ = freebsd()
    assert tun.write_batch([b"", b"\x50" + V4[1:], V6]) == 2
    assert drain(peer) == [FREEBSD_INET6 + V6]


def test_partial_checksums_are_finished_before_writing(freebsd):
    tun, peer, _ = freebsd()
    whole = [tcp_packet(3, b"t" * 200), tcp_packet(4, b"t" * 99, v6=True), udp_packet(b"u" * 70, v6=True)]
    assert tun.write_batch([make_partial(packet) for packet in whole]) == 0
    assert drain(peer) == [INET + whole[0], FREEBSD_INET6 + whole[1], FREEBSD_INET6 + whole[2]]


def test_a_batch_is_one_read_a_packet_until_the_device_is_empty(freebsd):
    tun, peer, _ = freebsd()
    packets = [tcp_packet(seq, b"r", src_port=seq, v6=seq % 2 == 1) for seq in range(5)]
    for packet in packets:
        peer.send(FREEBSD_INET6 + packet if packet[0] >> 4 == 6 else INET + packet)
    assert tun.read_batch(3) == packets[:3]
    assert tun.read_batch(64) == packets[3:]  # EAGAIN ends it, never raised
    assert tun.read_batch(64) == []


def test_a_write_the_kernel_drops_is_refused(freebsd, monkeypatch):
    """FreeBSD takes a packet for a down interface and returns 0: not written."""
    tun, _, _ = freebsd()
    monkeypatch.setattr(os, "writev", lambda fd, parts: 0)
    assert tun.write_batch([V4, V6]) == 2


def test_the_device_is_opened_non_blocking_and_not_inherited():
    fd = backend.open_device_file(os.devnull)
    try:
        assert not os.get_blocking(fd) and not os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_close_destroys_the_interface_after_closing_the_device_once(freebsd):
    tun, _, kernel = freebsd()
    tun.close()
    tun.close()
    assert kernel.destroyed == [("vc0", False)] and kernel.interfaces == set()
    assert kernel.calls[-1] == (SIOCIFDESTROY, name16(b"vc0") + bytes(16))
    assert tun.fileno() == -1


@pytest.mark.parametrize("error, warned", [(errno.EPERM, True), (errno.ENXIO, False)])
def test_a_destroy_that_fails_is_logged_with_what_to_do(freebsd, caplog, error, warned):
    tun, _, kernel = freebsd()
    kernel.errors[SIOCIFDESTROY] = error
    with caplog.at_level(logging.WARNING, logger="vpncrypt"):
        tun.close()
    expected = ["vc0 stays after close (Operation not permitted): ifconfig vc0 destroy"] if warned else []
    assert [r.getMessage() for r in caplog.records] == expected


@pytest.mark.parametrize("name, error, message", [
    ("vc0", errno.ENOENT, "/dev/tun does not exist: load the tun driver (kldload if_tuntap)"),
    ("vc0", errno.EACCES, "cannot open /dev/tun: run as root"),
    ("tun3", errno.EBUSY, "tun3 is in use by another process"),
    ("tun3", errno.ENXIO, f"cannot open /dev/tun3: {os.strerror(errno.ENXIO)}"),
])
def test_open_failures_on_the_device(failing, name, error, message):
    kernel, raised = failing(name, errors={"open": error})
    assert str(raised) == message and kernel.calls == []


def test_a_name_freebsd_cannot_take_is_refused_before_anything(failing):
    kernel, raised = failing("a-name-of-16-chr")
    assert str(raised) == "interface name 'a-name-of-16-chr': FreeBSD takes 1 to 15 characters"
    assert kernel.opened == []


def test_a_kernel_without_tungifname_closes_the_device(failing):
    kernel, raised = failing(errors={TUNGIFNAME: errno.ENOTTY})
    assert "TUNGIFNAME" in str(raised) and "FreeBSD 12.1 or newer" in str(raised)
    assert not kernel.device_open()


def test_a_name_in_use_destroys_the_clone_and_says_what_to_do(failing):
    kernel, raised = failing(interfaces=("vc0",))
    assert str(raised) == "an interface named vc0 exists already (left by an earlier run?): ifconfig vc0 destroy"
    assert kernel.destroyed == [("tun0", False)] and kernel.interfaces == {"vc0"}


def test_a_failed_setup_destroys_the_clone(failing):
    kernel, raised = failing(errors={TUNSIFHEAD: errno.EINVAL})
    assert str(raised) == "cannot set up tun0 (TUNSIFHEAD): Invalid argument"
    assert kernel.destroyed == [("tun0", False)] and not kernel.device_open()


def test_an_interface_up_already_is_reported_and_left_alone_when_opened_by_name(failing):
    kernel, raised = failing("tun4", interfaces=("tun4",), errors={TUNSIFMODE: errno.EBUSY})
    assert str(raised) == ("tun4 is up already, configured by something else: "
                           "ifconfig tun4 destroy, or name another interface")
    assert kernel.destroyed == [] and kernel.interfaces == {"tun4"} and not kernel.device_open()


def test_renaming_without_privilege_says_run_as_root(failing):
    kernel, raised = failing(errors={SIOCSIFNAME: errno.EPERM})
    assert str(raised) == "cannot name the interface vc0: run as root"
    assert kernel.destroyed == [("tun0", False)]


def test_open_tun_picks_this_backend_on_freebsd(monkeypatch):
    opened = []
    monkeypatch.setattr(sys, "platform", "freebsd14")
    monkeypatch.setattr(FreeBsdTun, "open", classmethod(lambda cls, name, offload: opened.append((name, offload))))
    open_tun("vc0", offload=False)
    assert opened == [("vc0", False)]
