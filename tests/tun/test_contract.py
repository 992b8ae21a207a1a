"""What every TUN backend promises (vpncrypt.tun.TunDevice), checked on each one that
runs here. A new backend (Windows, say) is one more entry in BACKENDS: a function that
opens it and returns a Harness, the test's stand-in for the kernel on the other side."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Callable

import pytest

from tests.builders import kernel_view, make_partial, tcp_packet
from vpncrypt.tun import TunDevice
from vpncrypt.tun.memory import MemoryTun

from .fake_kernel import (
    DARWIN_INET6, FREEBSD_INET6, darwin_over_socketpair, drain, framed, freebsd_over_socketpair,
    linux_over_socketpair, unframed,
)
from .offload_paths import chosen


@dataclass
class Harness:
    device: TunDevice
    inject: Callable[[bytes], None]  # the kernel hands the device one IP packet
    delivered: Callable[[], list[bytes]]  # the IP packets the kernel got, checksums finished as it would
    hang_up: Callable[[], None]  # the kernel stops taking packets
    close: Callable[[], None]  # the device and everything the harness opened


def memory() -> Harness:
    tun = MemoryTun()
    return Harness(tun, tun.peer.send, lambda: drain(tun.peer), tun.peer.close, tun.close)


def linux(offload: bool, path: str | None = None) -> Callable[[], Harness]:
    """LinuxTun over a socket pair, the ioctls faked (test_linux_device.py); with offload,
    every packet carries a virtio header, and NEEDS_CSUM is finished as the kernel does.
    ``path``: which offload functions it runs (offload_paths.py), None for the default."""

    def open_() -> Harness:
        with chosen(path):
            tun, peer, _ = linux_over_socketpair(offload)
        if not offload:
            return Harness(tun, peer.send, lambda: drain(peer), peer.close, lambda: (tun.close(), peer.close()))

        def delivered() -> list[bytes]:
            return [kernel_view([frame[:10], frame[10:]])[1] for frame in drain(peer)]

        return Harness(tun, lambda packet: peer.send(bytes(10) + packet), delivered, peer.close,
                       lambda: (tun.close(), peer.close()))

    return open_


def family_header(over_socketpair: Callable, inet6: bytes) -> Callable[[], Harness]:
    """FreeBSD's or macOS's device over a socket pair, its kernel faked
    (test_freebsd.py, test_darwin.py): every packet carries its address family."""

    def open_() -> Harness:
        tun, peer, _ = over_socketpair()
        return Harness(tun, lambda packet: peer.send(framed(packet, inet6)), lambda: unframed(drain(peer), inet6),
                       peer.close, lambda: (tun.close(), peer.close()))

    return open_


BACKENDS = {
    "memory": memory, "linux-offload": linux(True, "compiled"), "linux-offload-pure": linux(True, "pure"),
    "linux-plain": linux(False),
    "freebsd": family_header(freebsd_over_socketpair, FREEBSD_INET6),
    "darwin": family_header(darwin_over_socketpair, DARWIN_INET6),
}


def blocked(*_) -> None:
    raise TimeoutError("the device blocked: every call must return at once")


@pytest.fixture(params=list(BACKENDS))
def tun(request):
    harness = BACKENDS[request.param]()
    previous = signal.signal(signal.SIGALRM, blocked)
    signal.setitimer(signal.ITIMER_REAL, 2)  # a failure, not a hung run
    yield harness
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
    harness.close()


def packets(count: int) -> list[bytes]:
    """Packets of different flows, so that no backend may merge them; IPv4 and IPv6 in turn."""
    return [tcp_packet(index, b"c" * (index + 1), src_port=6000 + index, v6=index % 2 == 1) for index in range(count)]


def test_written_packets_reach_the_kernel_in_order(tun):
    assert tun.device.write_batch(packets(3)) == 0
    assert tun.delivered() == packets(3)


def test_packets_from_the_kernel_come_out_of_read_batch(tun):
    for packet in packets(3):
        tun.inject(packet)
    assert tun.device.read_batch(64) == packets(3)


def test_read_batch_on_an_empty_device_returns_at_once(tun):
    assert tun.device.read_batch(64) == []


def test_read_batch_honours_limit(tun):
    for packet in packets(5):
        tun.inject(packet)
    assert tun.device.read_batch(2) == packets(2)
    assert tun.device.read_batch(64) == packets(5)[2:]


def test_a_partial_checksum_reaches_the_kernel_finished(tun):
    """Without offload the device must finish it (vpncrypt.tun.finished); with offload
    the kernel does, here the harness."""
    assert tun.device.write_batch([make_partial(packets(1)[0])]) == 0
    assert tun.delivered() == packets(1)


def test_refused_writes_are_counted_not_raised(tun):
    tun.hang_up()
    assert tun.device.write_batch(packets(3)) == 3


def test_close_is_idempotent(tun):
    tun.device.close()
    tun.device.close()

