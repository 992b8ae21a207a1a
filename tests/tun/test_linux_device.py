"""LinuxTun's framing without root: the device over one end of a datagram socket pair,
its ioctls answered by a fake kernel that records them. What the test sends on the other
end is what the kernel would hand the device; what arrives there is what it would get."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from tests.builders import datagrams, flow, make_partial, tcp_packet
from vpncrypt.core.inner import PartialChecksumPacket, complete_checksum
from vpncrypt.tun import TunError
from vpncrypt.tun.linux import LinuxTun
from vpncrypt.tun.offload import coalesce

from .fake_kernel import (
    ALL_OFFLOADS, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, NEEDS_CSUM, NO_PI, PLAIN, TCP_OFFLOADS, TUN, TUNSETIFF,
    TUN_EXCL, TUNSETOFFLOAD, USO, VNET, VNET_HDR, FakeKernel, drain, ifreq, linux_over_socketpair,
)
from .offload_paths import PATHS, chosen

@pytest.fixture(params=PATHS)
def linux(request):
    """Opens devices over socket pairs, with the compiled offload functions and with the Python ones."""
    opened = []

    def make(offload: bool = True, **kernel):
        with chosen(request.param):
            made = linux_over_socketpair(offload, **kernel)
        opened.append(made)
        return made

    yield make
    for tun, peer, _ in opened:
        tun.close()
        peer.close()


@pytest.mark.parametrize("refused, offload_calls, segmentation", [
    (0, [ALL_OFFLOADS], ALL_OFFLOADS),
    (USO, [ALL_OFFLOADS, TCP_OFFLOADS], TCP_OFFLOADS),  # a kernel before 6.2
    (0xFF, [ALL_OFFLOADS, TCP_OFFLOADS], 0),
])
def test_open_with_offload_asks_for_the_best_the_kernel_takes(linux, refused, offload_calls, segmentation):
    tun, _, kernel = linux(refused=refused)
    assert kernel.calls == [(TUNSETIFF, ifreq(b"vc%d", TUN | NO_PI | TUN_EXCL | VNET_HDR))] + [
        (TUNSETOFFLOAD, flags) for flags in offload_calls]
    assert (tun.name, tun.segmentation) == ("vc0", segmentation)


def test_open_without_offload_only_creates(linux):
    tun, _, kernel = linux(offload=False)
    assert kernel.calls == [(TUNSETIFF, ifreq(b"vc%d", TUN | NO_PI | TUN_EXCL))]
    assert (tun.name, tun.segmentation) == ("vc0", 0)


def test_reads_with_offload_split_super_packets_and_keep_partial_checksums(linux):
    tun, peer, _ = linux()
    plain, partial = tcp_packet(1, b"plain"), make_partial(tcp_packet(2, b"x" * 300))
    runs = {GSO_TCPV4: flow(5, last=100), GSO_TCPV6: flow(3, v6=True), GSO_UDP_L4: datagrams(4, last=50)}
    peer.send(PLAIN + plain)
    peer.send(VNET.pack(NEEDS_CSUM, 0, 0, 0, 20, 16) + partial)
    for gso_type, run in runs.items():
        [plan] = coalesce(run)  # the super-packet as the kernel hands it over
        assert VNET.unpack(plan[0])[1] == gso_type
        peer.send(b"".join(plan))
    got = tun.read_batch(64)
    assert got[:2] == [plain, partial] and [type(p) for p in got[:2]] == [bytes, PartialChecksumPacket]
    assert [complete_checksum(p) for p in got[2:]] == [p for run in runs.values() for p in run]


def test_writes_with_offload_carry_a_header_and_merge_where_coalesce_does(linux):
    tun, peer, _ = linux()
    batch = [tcp_packet(1, b"plain", src_port=7), make_partial(tcp_packet(2, b"p" * 99, src_port=8)),
             *flow(4), *datagrams(3)]
    assert tun.write_batch(batch) == 0
    received = drain(peer)
    assert [VNET.unpack(r[:10])[:2] for r in received] == [(0, 0), (NEEDS_CSUM, 0), (NEEDS_CSUM, GSO_TCPV4),
                                                           (NEEDS_CSUM, GSO_UDP_L4)]
    assert received == [b"".join(bytes(part) for part in plan) for plan in coalesce(batch)]


def test_a_kernel_without_udp_segmentation_gets_datagrams_one_by_one(linux):
    tun, peer, _ = linux(refused=USO)
    assert tun.write_batch([*flow(3), *datagrams(3)]) == 0
    received = drain(peer)
    assert VNET.unpack(received[0][:10])[1] == GSO_TCPV4
    assert received[1:] == [PLAIN + d for d in datagrams(3)]


def test_without_offload_no_header_either_way_and_checksums_finished(linux):
    tun, peer, _ = linux(offload=False)
    packet, whole = tcp_packet(1, b"plain"), tcp_packet(2, b"p" * 99)
    peer.send(packet)
    assert tun.read_batch(8) == [packet]
    assert tun.write_batch([packet, make_partial(whole), *flow(3)]) == 0
    assert drain(peer) == [packet, whole, *flow(3)]  # nothing merged either


def test_read_stops_at_limit_and_when_nothing_waits(linux):
    tun, peer, _ = linux()
    packets = [tcp_packet(seq, b"r", src_port=seq) for seq in range(5)]
    for packet in packets:
        peer.send(PLAIN + packet)
    assert tun.read_batch(2) == packets[:2]
    assert tun.read_batch(10) == packets[2:]
    assert tun.read_batch(10) == []
    peer.send(b"".join(coalesce(flow(4))[0]))
    assert len(tun.read_batch(1)) == 4  # over limit: a super-packet is never cut short


@pytest.mark.parametrize("offload", [True, False])
def test_refused_writes_are_counted_not_raised(linux, offload):
    tun, peer, _ = linux(offload)
    many = [tcp_packet(1, b"f" * 1000)] * 2000  # more than the peer's queue takes
    refused = tun.write_batch(many)
    assert 0 < refused < len(many) and len(drain(peer)) == len(many) - refused
    peer.close()  # the "kernel" is gone: every packet refused, a merged write counting all it holds
    assert tun.write_batch([*flow(4), tcp_packet(9, b"alone", src_port=9)]) == 5


@pytest.mark.parametrize("error, message", [
    (errno.ENOENT, "/dev/net/tun does not exist: load the tun module"),
    (errno.EACCES, "cannot open /dev/net/tun: run as root"),
    (errno.ENODEV, "cannot open /dev/net/tun: No such device"),
])
def test_open_failures_on_the_clone_device(error, message):
    def open_device() -> int:
        raise OSError(error, os.strerror(error))

    with pytest.raises(TunError, match=message):
        LinuxTun.open("vc%d", ioctl=FakeKernel(-1), open_device=open_device)


@pytest.mark.parametrize("error, message", [
    (errno.EPERM, "cannot create vc%d: run as root"),
    (errno.EBUSY, r"an interface named vc%d exists already .*: choose another interface in the config, or delete it \(ip link delete vc%d\)"),
    (errno.EINVAL, "cannot create vc%d: Invalid argument"),
])
def test_open_failures_on_create_close_the_descriptor(error, message):
    own, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fd = own.detach()
    with peer, pytest.raises(TunError, match=message):
        LinuxTun.open("vc%d", ioctl=FakeKernel(fd, create_error=error), open_device=lambda: fd)
    with pytest.raises(OSError) as closed:
        os.fstat(fd)
    assert closed.value.errno == errno.EBADF


def _uncuttable() -> dict[str, tuple[int, int, bytes]]:
    """Super-packets the splitters return [] for, as (GSO type, size, packet) by case:
    each must come out of read_batch whole, never dropped without a trace (issue 13)."""
    from tests.tun.test_offload import FRAGMENT, altered, super_packet, udp_super_packet, with_extensions

    tcp4, tso4, mss4 = super_packet(flow(3))
    tcp6, tso6, mss6 = super_packet(flow(3, v6=True))
    udp6, size6 = udp_super_packet(datagrams(3, v6=True))
    small = tcp_packet(1, b"x" * 40)
    return {
        "tcp type, udp inside": (GSO_TCPV4, mss4, small[:9] + b"\x11" + small[10:]),
        "ipv6 not tcp": (tso6, mss6, altered(tcp6, 6, b"\x11")),
        "no payload": (tso6, mss6, tcp6[:60]),
        "no segment size": (tso4, 0, tcp4),
        "udp, no segment size": (GSO_UDP_L4, 0, udp6),
        "udp type, tcp inside": (GSO_UDP_L4, mss4, tcp4),
        "tcp with a fragment header": (tso6, mss6, with_extensions(tcp6, [FRAGMENT])),
        "udp with a fragment header": (GSO_UDP_L4, size6, with_extensions(udp6, [FRAGMENT])),
    }


@pytest.mark.parametrize("case", list(_uncuttable()))
def test_a_super_packet_the_splitters_cannot_cut_goes_on_whole(linux, case):
    gso_type, size, packet = _uncuttable()[case]
    tun, peer, _ = linux()
    peer.send(VNET.pack(0, gso_type, 0, size, 0, 0) + packet)
    assert tun.read_batch(8) == [packet]
