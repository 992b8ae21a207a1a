"""The UDP side: sockets set up for a VPN, batch receive and send that never block."""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from typing import Any

_BUFFER_BYTES = 4 << 20
# Linux's SO_RCVBUFFORCE and SO_SNDBUFFORCE, which Python does not name: as
# root they pass net.core.[rw]mem_max.
_FORCE = {socket.SO_RCVBUF: 33, socket.SO_SNDBUF: 32} if sys.platform.startswith("linux") else {}


def _grow_buffers(sock: socket.socket) -> None:
    """Room for bursts of datagrams."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, _FORCE[option], _BUFFER_BYTES)
        except (KeyError, OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, _BUFFER_BYTES)


def open_listening_socket(address: str, port: int) -> socket.socket:
    """A non-blocking UDP socket on ``address``:``port``; '::' takes IPv4 and IPv6 alike."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        _grow_buffers(sock)
        sock.bind((address, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise OSError(error.errno, f"UDP port {port} is already in use") from None
        raise OSError(error.errno, f"cannot listen on UDP {address} port {port}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


def open_client_socket(family: int, fwmark: int = 0) -> socket.socket:
    """Unbound until the first send and unconnected, so the kernel picks the
    source address afresh for each datagram: a new address after roaming is
    used at once. ``fwmark`` (Linux) marks every datagram it sends."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        _grow_buffers(sock)
        if fwmark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"cannot set up the UDP socket: {error.strerror}") from None
    sock.setblocking(False)
    return sock


def format_endpoint(endpoint: Any) -> str | None:
    """'198.51.100.7:4000' or '[2001:db8::7]:4000', IPv4-mapped IPv6 shown as IPv4."""
    if endpoint is None:
        return None
    if isinstance(endpoint[0], tuple):
        endpoint = endpoint[0]  # (address, the local address it sent to): see UdpBatcher
    host, port = endpoint[0], endpoint[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Linux UDP segmentation offload (send) and receive coalescing (linux/udp.h).
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000  # under IPv4's 65,507-byte UDP payload limit
_GSO_REFUSED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EIO}
_GRO_ANCILLARY = socket.CMSG_SPACE(4)
# The destination address of a received datagram (linux/in.h, linux/in6.h).
IP_PKTINFO = 8
_PKTINFO_ANCILLARY = socket.CMSG_SPACE(20)  # struct in6_pktinfo; in_pktinfo is 12 bytes
_NO_INTERFACE = bytes(4)


class UdpBatcher:
    """Batch receive and send on one socket; errors are counted, never raised.

    With ``offload`` (Linux), equal-sized datagrams to one endpoint leave in
    one sendmsg with UDP_SEGMENT (GSO) and arrive coalesced by UDP_GRO, to be
    split here: one system call for a batch instead of one per datagram. On
    the wire they stay separate datagrams, so a peer without offloads sees no
    difference. If the kernel refuses either, it is switched off for this
    socket and the datagrams go one by one.

    With ``reply_from_destination`` (a server listening on every address),
    each received datagram's address is paired with the local address it was
    sent to, and what is sent to that pair leaves from that address. Without
    it the kernel picks the source by route, which on a host with a second
    address (a floating IP) is not the one the client sent to, and a NAT or
    firewall in front of the client drops the reply.
    """

    def __init__(self, sock: socket.socket, *, offload: bool = True, reply_from_destination: bool = False) -> None:
        self.sock = sock
        self._buffer = bytearray(1 << 17)  # a coalesced read is at most 64 KiB
        self._view = memoryview(self._buffer)
        self.send_errors = 0
        self.gso = offload and sys.platform.startswith("linux")
        self.gro = False
        if self.gso:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
        self.sticky = False
        if reply_from_destination:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)  # IPv4-mapped ones too
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            self.sticky = True
        self._ancillary = (_GRO_ANCILLARY if self.gro else 0) + (_PKTINFO_ANCILLARY if self.sticky else 0)

    def receive(self, limit: int) -> list[tuple[bytes, Any]]:
        datagrams: list[tuple[bytes, Any]] = []
        view = self._view
        while len(datagrams) < limit:
            try:
                if self._ancillary:
                    size, ancillary, flags, address = self.sock.recvmsg_into([self._buffer], self._ancillary)
                else:
                    size, address = self.sock.recvfrom_into(self._buffer)
                    ancillary, flags = (), 0
            except BlockingIOError:
                break
            except OSError:
                # ICMP errors surface here (ECONNREFUSED ...): nothing to read.
                continue
            if flags & socket.MSG_TRUNC:
                continue
            segment = size
            source = None
            for level, kind, data in ancillary:
                if level == SOL_UDP and kind == UDP_GRO:
                    segment = int.from_bytes(data[:4], sys.byteorder) or size
                elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                    # Sent back as it came, but with no interface: the route picks it.
                    source = (level, kind, data[:16] + _NO_INTERFACE)
                elif level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    source = (level, kind, _NO_INTERFACE + data[8:12] + bytes(4))  # spec_dst = the address it came to
            if self.sticky:
                address = (address, source)
            if segment >= size:
                datagrams.append((bytes(view[:size]), address))
            else:
                coalesced = view[:size]  # the last segment may be short: never read past size
                datagrams.extend((bytes(coalesced[start:start + segment]), address) for start in range(0, size, segment))
        return datagrams

    def send(self, datagrams: list[tuple[bytes, Any]]) -> None:
        if not self.gso:
            self._send_each(datagrams)
            return
        count = len(datagrams)
        first = 0
        while first < count:
            datagram, endpoint = datagrams[first]
            size = len(datagram)
            end, total = first + 1, size
            # A run: same endpoint, same size; a shorter one may close it.
            while end < count and end - first < GSO_MAX_SEGMENTS:
                following, following_endpoint = datagrams[end]
                length = len(following)
                if following_endpoint != endpoint or length > size or total + length > GSO_MAX_BYTES:
                    break
                total += length
                end += 1
                if length < size:
                    break
            if end - first == 1 or not self.gso:
                self._send_each(datagrams[first:end])
            else:
                self._send_segmented(datagrams[first:end], size, endpoint)
            first = end

    def _send_segmented(self, run: list[tuple[bytes, Any]], size: int, endpoint: Any) -> None:
        ancillary = [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))]
        if self.sticky:
            endpoint, source = endpoint
            if source:
                ancillary.append(source)
        try:
            self.sock.sendmsg([d for d, _ in run], ancillary, 0, endpoint)
        except OSError as error:
            if error.errno in _GSO_REFUSED:
                errors = self.send_errors
                self._send_each(run)
                if self.send_errors == errors:
                    self.gso = False  # one by one they went: this kernel or route will not segment
            else:
                self.send_errors += len(run)

    def _send_each(self, datagrams: list[tuple[bytes, Any]]) -> None:
        sendto, sendmsg, sticky = self.sock.sendto, self.sock.sendmsg, self.sticky
        for datagram, endpoint in datagrams:
            try:
                if sticky:
                    address, source = endpoint
                    sendmsg([datagram], [source] if source else [], 0, address)
                else:
                    sendto(datagram, endpoint)
            except OSError:
                # Full buffer, network down, no route, a local address that
                # has gone: lost like on any network, and the tunnel carries
                # on when the network is back.
                self.send_errors += 1
