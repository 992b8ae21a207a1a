"""Socket options per OS, without the OS: the numbers against their headers,
the reply-address ancillary data encoded and decoded by pure functions for
each OS, and UdpTransport driven through a recording socket with FreeBSD's
and macOS's options, so that what it sets and sends is what that kernel
wants (no FreeBSD or Mac here; Linux is also run for real in test_udp.py)."""

from __future__ import annotations

import socket
import struct

import pytest

from vpncrypt.transport import socket_options
from vpncrypt.transport.darwin import DARWIN
from vpncrypt.transport.freebsd import FREEBSD
from vpncrypt.transport.options import NO_OPTIONS, SocketOptions
from vpncrypt.transport.udp import UdpTransport

LINUX = socket_options("linux")

# From the headers: linux/in.h, linux/in6.h; FreeBSD netinet/in.h, netinet6/in6.h;
# xnu bsd/netinet/in.h, bsd/netinet6/in6.h (RFC 3542 names).
HEADERS = {
    "Linux": {"ip_pktinfo": 8, "ipv6_recvpktinfo": 49, "ipv6_pktinfo": 50, "mark": 36, "udp_segment": 103,
              "udp_gro": 104, "rcvbuf_force": 33, "sndbuf_force": 32},
    "FreeBSD": {"ip_recvdstaddr": 7, "ip_sendsrcaddr": 7, "ipv6_recvpktinfo": 36, "ipv6_pktinfo": 46},
    "macOS": {"ip_pktinfo": 26, "ipv6_recvpktinfo": 61, "ipv6_pktinfo": 46},
}
NUMBERED = ("rcvbuf_force", "sndbuf_force", "mark", "udp_segment", "udp_gro", "ip_pktinfo", "ip_recvdstaddr",
            "ip_sendsrcaddr", "ipv6_recvpktinfo", "ipv6_pktinfo")

LOCAL4, PEER4 = socket.inet_aton("203.0.113.10"), ("198.51.100.7", 4000)
LOCAL6 = socket.inet_pton(socket.AF_INET6, "2001:db8::10")
PEER6 = ("2001:db8:1::7", 4000, 0, 0)


def in_pktinfo(ifindex: int, spec_dst: bytes, addr: bytes) -> bytes:
    return struct.pack("=I4s4s", ifindex, spec_dst, addr)


def in6_pktinfo(addr: bytes, ifindex: int) -> bytes:
    return struct.pack("=16sI", addr, ifindex)


@pytest.mark.parametrize("options", [LINUX, FREEBSD, DARWIN], ids=lambda o: o.name)
def test_each_os_has_its_headers_numbers_and_no_other_option(options):
    assert {field: getattr(options, field) for field in NUMBERED if getattr(options, field) is not None} \
        == HEADERS[options.name]


def test_the_platform_picks_its_own_module():
    assert socket_options("freebsd14") is FREEBSD and socket_options("darwin") is DARWIN
    assert socket_options("openbsd7") is NO_OPTIONS
    assert LINUX.name == "Linux" and LINUX.ip_pktinfo == 8


@pytest.mark.parametrize("options, ipv4, ipv6", [
    (LINUX, (0, 8), (41, 49)),
    (FREEBSD, (0, 7), (41, 36)),  # IP_RECVDSTADDR: FreeBSD has no IP_PKTINFO
    (DARWIN, (0, 26), (41, 61)),
    (NO_OPTIONS, None, None),
], ids=lambda value: getattr(value, "name", None))
def test_the_option_that_asks_for_the_local_address(options, ipv4, ipv6):
    assert options.destination_option(ipv6=False) == ipv4
    assert options.destination_option(ipv6=True) == ipv6


@pytest.mark.parametrize("options, received, reply", [
    # Linux and macOS: in_pktinfo in (ipi_addr is where it came), in_pktinfo out (ipi_spec_dst is the source).
    (LINUX, (0, 8, in_pktinfo(3, LOCAL4, LOCAL4)), (0, 8, in_pktinfo(0, LOCAL4, bytes(4)))),
    (DARWIN, (0, 26, in_pktinfo(4, bytes(4), LOCAL4)), (0, 26, in_pktinfo(0, LOCAL4, bytes(4)))),
    # FreeBSD: a bare in_addr with IP_RECVDSTADDR in, the same with IP_SENDSRCADDR out.
    (FREEBSD, (0, 7, LOCAL4), (0, 7, LOCAL4)),
    # IPv6: in6_pktinfo both ways, the interface left to the route; the cmsg type is each OS's.
    (LINUX, (41, 50, in6_pktinfo(LOCAL6, 3)), (41, 50, in6_pktinfo(LOCAL6, 0))),
    (FREEBSD, (41, 46, in6_pktinfo(LOCAL6, 3)), (41, 46, in6_pktinfo(LOCAL6, 0))),
    (DARWIN, (41, 46, in6_pktinfo(LOCAL6, 5)), (41, 46, in6_pktinfo(LOCAL6, 0))),
], ids=lambda value: getattr(value, "name", None))
def test_the_local_address_received_becomes_the_source_sent(options, received, reply):
    assert options.reply_source(*received) == reply


def test_the_reply_is_sent_with_ip_sendsrcaddr_which_freebsd_numbers_as_ip_recvdstaddr():
    other = SocketOptions("a BSD", ip_recvdstaddr=7, ip_sendsrcaddr=99)
    assert other.reply_source(0, 7, LOCAL4) == (0, 99, LOCAL4)
    assert SocketOptions("half", ip_recvdstaddr=7).destination_option(ipv6=False) is None  # no way to send from it


@pytest.mark.parametrize("options, foreign", [
    (FREEBSD, (0, 8, in_pktinfo(3, LOCAL4, LOCAL4))),  # Linux's IP_PKTINFO
    (FREEBSD, (41, 50, in6_pktinfo(LOCAL6, 3))),  # Linux's IPV6_PKTINFO
    (DARWIN, (0, 8, in_pktinfo(3, LOCAL4, LOCAL4))),
    (DARWIN, (41, 50, in6_pktinfo(LOCAL6, 3))),
    (LINUX, (0, 26, in_pktinfo(4, bytes(4), LOCAL4))),  # macOS's
    (LINUX, (0, 7, LOCAL4)),  # FreeBSD's (IP_RECVOPTS on Linux)
    (LINUX, (41, 46, in6_pktinfo(LOCAL6, 3))),
    (LINUX, (17, 104, (1400).to_bytes(4, "little"))),  # UDP_GRO's segment size
    (NO_OPTIONS, (41, 50, in6_pktinfo(LOCAL6, 3))),
], ids=lambda value: getattr(value, "name", None))
def test_another_oses_numbers_are_not_read_as_the_local_address(options, foreign):
    assert options.reply_source(*foreign) is None


def test_the_log_names_what_each_os_lacks():
    assert FREEBSD.missing() == ["SO_RCVBUFFORCE", "SO_SNDBUFFORCE", "SO_MARK", "UDP_SEGMENT", "UDP_GRO",
                                "SO_ATTACH_FILTER"]
    assert DARWIN.missing() == FREEBSD.missing()
    assert LINUX.missing() == []
    assert NO_OPTIONS.missing()[-2:] == ["IP_PKTINFO", "IPV6_RECVPKTINFO"]


class RecordingSocket:
    """A socket as the kernel of another OS would present it: it records what
    is set and sent, and hands out datagrams with that OS's ancillary data."""

    def __init__(self, family: int, incoming=()) -> None:
        self.family = family
        self.options: list[tuple[int, int, int]] = []
        self.incoming = list(incoming)  # (data, ancillary, address)
        self.sent: list[tuple[list[bytes], list, object]] = []

    def setsockopt(self, level, option, value):
        self.options.append((level, option, value))

    def recvmsg_into(self, buffers, ancbufsize=0):
        if not self.incoming:
            raise BlockingIOError
        data, ancillary, address = self.incoming.pop(0)
        buffers[0][:len(data)] = data
        return len(data), ancillary if ancbufsize else [], 0, address

    def recvfrom_into(self, buffer):
        raise AssertionError("a transport that answers from the local address must ask for ancillary data")

    def sendmsg(self, buffers, ancillary=(), flags=0, address=None):
        self.sent.append((list(buffers), list(ancillary), address))
        return sum(map(len, buffers))

    def sendto(self, data, address):
        self.sent.append(([data], [], address))
        return len(data)


@pytest.mark.parametrize("options, family, received, option_set", [
    (FREEBSD, socket.AF_INET, (0, 7, LOCAL4), (0, 7, 1)),
    (FREEBSD, socket.AF_INET6, (41, 46, in6_pktinfo(LOCAL6, 2)), (41, 36, 1)),
    (DARWIN, socket.AF_INET, (0, 26, in_pktinfo(4, bytes(4), LOCAL4)), (0, 26, 1)),
    (DARWIN, socket.AF_INET6, (41, 46, in6_pktinfo(LOCAL6, 5)), (41, 61, 1)),
], ids=lambda value: getattr(value, "name", None))
def test_a_server_answers_from_the_address_it_was_sent_to(options, family, received, option_set):
    peer = PEER6 if family == socket.AF_INET6 else PEER4
    sock = RecordingSocket(family, [(b"hello", [received], peer)])
    transport = UdpTransport(sock, offload=True, reply_from_destination=True, options=options)  # type: ignore[arg-type]
    assert transport.sticky and (transport.gso, transport.gro) == (False, False)
    assert sock.options == [option_set]  # only this OS's option, and no GRO, GSO or mark
    [(data, endpoint)] = transport.receive(64)
    assert data == b"hello" and endpoint == (peer, options.reply_source(*received))
    transport.send([(b"r" * 100, endpoint)] * 3)
    assert sock.sent == [([b"r" * 100], [options.reply_source(*received)], peer)] * 3
    assert transport.send_errors == 0


def test_without_the_options_nothing_is_set_and_replies_leave_as_the_route_picks():
    sock = RecordingSocket(socket.AF_INET6, [(b"hello", [], PEER6)])
    transport = UdpTransport(sock, offload=True, reply_from_destination=True, options=NO_OPTIONS)  # type: ignore[arg-type]
    assert sock.options == [] and not transport.sticky


def test_a_datagram_without_the_local_address_is_answered_as_the_route_picks():
    """An IPv4 datagram on FreeBSD's dual-stack socket comes with no address (ip6_savecontrol_v4)."""
    sock = RecordingSocket(socket.AF_INET6, [(b"hello", [], ("::ffff:198.51.100.7", 4000, 0, 0))])
    transport = UdpTransport(sock, reply_from_destination=True, options=FREEBSD)  # type: ignore[arg-type]
    [(_, endpoint)] = transport.receive(64)
    transport.send([(b"r", endpoint)])
    assert sock.sent == [([b"r"], [], ("::ffff:198.51.100.7", 4000, 0, 0))]

