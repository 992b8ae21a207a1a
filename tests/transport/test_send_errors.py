"""Refused sends (issue 13): a GSO run larger than the path MTU, a full queue, any
refusal: each datagram is still tried, nothing is dropped as a whole run, and the
errors are logged at most once a minute per kind."""

from __future__ import annotations

import errno
import logging
import socket

import pytest

from vpncrypt.transport.options import NO_OPTIONS
from vpncrypt.transport.udp import (
    SEND_ERROR_LOG_INTERVAL, UdpTransport, _IP_MTU_DISCOVER, open_client_transport, open_server_transport,
)

ENDPOINT = ("192.0.2.1", 51820)


class PathSocket:
    """A socket on a path of ``mtu`` bytes of UDP payload: a GSO send of larger
    segments fails with EMSGSIZE, as Linux's udp_send_skb does; single datagrams
    go (the kernel fragments them). ``refuse`` makes every send fail with that errno."""

    def __init__(self, mtu: int = 1372, refuse: int | None = None, refuse_single: int | None = None) -> None:
        self.mtu = mtu
        self.refuse = refuse
        self.refuse_single = refuse_single
        self.gso_sends: list[int] = []  # datagrams per GSO send that went
        self.gso_attempts = 0
        self.sent: list[bytes] = []

    def setsockopt(self, *args):
        pass

    def sendmsg(self, buffers, ancillary, flags, address):
        if self.refuse is not None:
            raise OSError(self.refuse, "refused")
        segment = [a for a in ancillary if a[0] == 17]
        if segment:
            self.gso_attempts += 1
            if int.from_bytes(segment[0][2], "little") > self.mtu:
                raise OSError(errno.EMSGSIZE, "Message too long")
            self.gso_sends.append(len(buffers))
            self.sent.extend(bytes(b) for b in buffers)
            return sum(map(len, buffers))
        return self.sendto(b"".join(buffers), address)

    def sendto(self, data, address):
        if self.refuse is not None or self.refuse_single is not None:
            raise OSError(self.refuse if self.refuse is not None else self.refuse_single, "refused")
        self.sent.append(bytes(data))
        return len(data)


def run(size: int, count: int = 20, endpoint=ENDPOINT) -> list[tuple[bytes, tuple]]:
    return [(bytes([i]) * size, endpoint) for i in range(count)]


def test_a_gso_run_larger_than_the_path_goes_one_by_one_and_later_ones_too():
    sock = PathSocket(mtu=1372)
    sender = UdpTransport(sock)  # type: ignore[arg-type]
    big = run(1444)
    sender.send(big)
    assert sock.sent == [d for d, _ in big]
    assert sender.send_errors == 0
    assert sender.gso is True  # still on: for smaller datagrams and other endpoints
    assert sender.gso_limits == {ENDPOINT: 1444}
    sender.send(big)
    assert sock.sent == [d for d, _ in big] * 2 and sock.gso_sends == []
    assert sock.gso_attempts == 1  # not tried again: no EMSGSIZE round trip per run
    # Smaller datagrams to it, and big ones elsewhere, still leave in GSO runs.
    small, elsewhere = run(1000), run(1444, endpoint=("198.51.100.7", 4000))
    sock.mtu = 1500
    sender.send(small + elsewhere)
    assert sock.gso_sends == [20, 20]
    assert sock.sent[-40:] == [d for d, _ in small + elsewhere]


@pytest.mark.parametrize("number", [errno.ENOBUFS, errno.EAGAIN, errno.ENETUNREACH, errno.EPERM])
def test_any_other_refusal_of_a_run_still_tries_each_datagram(number):
    sock = PathSocket(refuse=number)
    sender = UdpTransport(sock)  # type: ignore[arg-type]
    sender.send(run(1000))
    assert sender.send_errors == 20  # each tried, each counted
    sock.refuse = None
    sender.send(run(1000))  # and the next run goes, with GSO
    assert sock.gso_sends == [20] and sender.send_errors == 20


class Flaky(PathSocket):
    """A run refused as a whole (the queue was full for 20 at once) while single
    datagrams still fit: they must go."""

    def sendmsg(self, buffers, ancillary, flags, address):
        if any(a[0] == 17 for a in ancillary):
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return super().sendmsg(buffers, ancillary, flags, address)


def test_a_refused_run_sends_what_it_can():
    sock = Flaky()
    sender = UdpTransport(sock)  # type: ignore[arg-type]
    sender.send(run(1000))
    assert len(sock.sent) == 20 and sender.send_errors == 0


def test_send_errors_are_logged_once_a_minute_per_kind_with_destination_and_errno(caplog):
    now = [1000.0]
    sock = PathSocket(refuse_single=errno.EMSGSIZE, mtu=1000)
    sender = UdpTransport(sock, clock=lambda: now[0])  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="vpncrypt"):
        sender.send(run(1444))  # the GSO run refused, then each datagram
        sender.send(run(1444))
        sock.refuse = errno.ENOBUFS
        sender.send(run(200, 3))
    lines = [r.getMessage() for r in caplog.records if "UDP send" in r.message]
    assert len(lines) == 3, lines
    assert all("192.0.2.1:51820" in line for line in lines)
    assert "EMSGSIZE" in lines[0] and "path MTU" in lines[0] and "one at a time" in lines[0]
    assert "EMSGSIZE" in lines[1] and "path MTU" in lines[1] and "fragment" in lines[1]
    assert "ENOBUFS" in lines[2]
    assert sender.send_errors == 43
    caplog.clear()
    now[0] += SEND_ERROR_LOG_INTERVAL
    with caplog.at_level(logging.INFO, logger="vpncrypt"):
        sender.send(run(200, 1))
    [line] = [r.getMessage() for r in caplog.records if "UDP send" in r.message]
    assert "ENOBUFS" in line and "2 more since the last line" in line


def test_ipv6_destinations_are_named_with_brackets(caplog):
    sock = PathSocket(refuse=errno.ENETUNREACH)
    sender = UdpTransport(sock)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="vpncrypt"):
        sender.send([(b"x", ("2001:db8::7", 4000, 0, 0))])
    assert "[2001:db8::7]:4000" in caplog.text and "ENETUNREACH" in caplog.text


def test_offload_false_means_neither_gso_nor_gro():
    for transport in (open_server_transport("127.0.0.1", 0, offload=False),
                      open_client_transport(socket.AF_INET, offload=False)):
        try:
            assert transport.gso is False and transport.gro is False
        finally:
            transport.close()
    transport = open_server_transport("127.0.0.1", 0)
    try:
        assert transport.gso is True and transport.gro is True
    finally:
        transport.close()


@pytest.mark.parametrize("make", [
    lambda: open_server_transport("0.0.0.0", 0),
    lambda: open_server_transport("::", 0),
    lambda: open_client_transport(socket.AF_INET),
])
def test_outer_ipv4_datagrams_leave_without_df(make):
    transport = make()
    try:
        assert transport.sock.getsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER) == 0  # IP_PMTUDISC_DONT
    finally:
        transport.close()
