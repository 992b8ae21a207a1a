"""UDP batching with and without GSO/GRO, on loopback: what is sent is what arrives, in order."""

from __future__ import annotations

import errno
import socket
import time

import pytest

from vpncrypt.transport.options import NO_OPTIONS
from vpncrypt.transport.udp import UdpTransport, open_client_transport, open_server_transport


def collect(receiver: UdpTransport, count: int, timeout: float = 5) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(receiver.receive(64))
        time.sleep(0.001)
    return got


def traffic() -> list[bytes]:
    """Runs of equal sizes with a short one closing some, then odd sizes."""
    datagrams = [bytes([i % 251]) * 1444 for i in range(100)]
    datagrams.append(b"short" * 20)
    datagrams += [bytes([i]) * (60 + i) for i in range(10)]
    datagrams += [b"x" * 1444] * 3
    return datagrams


@pytest.mark.parametrize("send_offload, receive_offload", [(True, True), (True, False), (False, True), (False, False)])
def test_everything_arrives_in_order(send_offload, receive_offload):
    receiver = open_server_transport("127.0.0.1", 0, offload=receive_offload)
    server = receiver.sock
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = UdpTransport(client, offload=send_offload)
    endpoint = server.getsockname()
    try:
        sent = traffic()
        sender.send([(d, endpoint) for d in sent])
        got = collect(receiver, len(sent))
        assert [d for d, _ in got] == sent
        assert {a[1] for _, a in got} == {client.getsockname()[1]}
        assert sender.send_errors == 0
        assert receiver.gro == receive_offload and sender.gso == send_offload
    finally:
        server.close()
        client.close()


def test_runs_split_by_endpoint():
    receivers = [open_server_transport("127.0.0.1", 0) for _ in range(2)]
    servers = [r.sock for r in receivers]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = UdpTransport(client)
    try:
        plan = [(bytes([i]) * 1000, servers[i % 3 == 0].getsockname()) for i in range(90)]
        sender.send(plan)
        for index, receiver in enumerate(receivers):
            expected = [d for d, e in plan if e == servers[index].getsockname()]
            assert [d for d, _ in collect(receiver, len(expected))] == expected
    finally:
        for s in (*servers, client):
            s.close()


class RefusingSocket:
    """A socket whose kernel will not segment: sendmsg fails as GSO-less routes do."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.sendmsg_calls = 0

    def setsockopt(self, *args):
        return self.real.setsockopt(*args)

    def sendmsg(self, *args):
        self.sendmsg_calls += 1
        raise OSError(errno.EIO, "no segmentation here")

    def sendto(self, data, endpoint):
        return self.real.sendto(data, endpoint)


def test_falls_back_when_the_kernel_refuses_segmentation():
    receiver = open_server_transport("127.0.0.1", 0)
    server = receiver.sock
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    refusing = RefusingSocket(client)
    sender = UdpTransport(refusing)  # type: ignore[arg-type]
    try:
        sent = traffic()
        sender.send([(d, server.getsockname()) for d in sent])
        sender.send([(d, server.getsockname()) for d in sent])
        assert [d for d, _ in collect(receiver, 2 * len(sent))] == sent + sent
        assert sender.gso is False and refusing.sendmsg_calls == 1 and sender.send_errors == 0
    finally:
        server.close()
        client.close()


@pytest.mark.parametrize("listen, sticky, count, source", [
    ("0.0.0.0", True, 1, "127.0.0.2"),
    ("0.0.0.0", True, 5, "127.0.0.2"),  # a run, sent with GSO
    ("::", True, 1, "127.0.0.2"),  # IPv4-mapped, on the dual-stack socket
    ("::", True, 5, "127.0.0.2"),
    ("0.0.0.0", False, 1, "127.0.0.1"),  # without the option: what the route picks
])
def test_replies_leave_from_the_address_the_client_sent_to(listen, sticky, count, source):
    """127.0.0.2 is local too, but the route back to 127.0.0.1 picks 127.0.0.1 as source."""
    server = socket.socket(socket.AF_INET6 if ":" in listen else socket.AF_INET, socket.SOCK_DGRAM)
    if ":" in listen:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind((listen, 0))
    server.setblocking(False)
    receiver = UdpTransport(server, reply_from_destination=sticky)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(5)
    try:
        client.sendto(b"hello", ("127.0.0.2", server.getsockname()[1]))
        [(data, endpoint)] = collect(receiver, 1)
        assert data == b"hello"
        receiver.send([(b"r" * 100, endpoint)] * count)
        for _ in range(count):
            assert client.recvfrom(2048) == (b"r" * 100, (source, server.getsockname()[1]))
        assert receiver.send_errors == 0
    finally:
        server.close()
        client.close()


def test_a_platform_without_the_options_gets_none_of_them():
    """Never Linux's numbers elsewhere: no GSO, no GRO, IPv4 replies from the route's address."""
    receiver = open_server_transport("0.0.0.0", 0, options=NO_OPTIONS)
    try:
        assert (receiver.gso, receiver.gro, receiver.sticky) == (False, False, False)
    finally:
        receiver.close()
    with pytest.raises(OSError, match="SO_MARK"):
        open_client_transport(socket.AF_INET, fwmark=7, options=NO_OPTIONS)


def test_the_server_transport_answers_from_the_address_sent_to_only_when_listening_on_all():
    for listen, sticky in (("0.0.0.0", True), ("::", True), ("127.0.0.1", False)):
        transport = open_server_transport(listen, 0)
        try:
            assert transport.sticky is sticky and transport.fileno() == transport.sock.fileno()
        finally:
            transport.close()
