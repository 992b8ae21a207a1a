"""UDP: sockets set up for a VPN, batch receive and send that never block.

The OS-specific options (GSO, GRO, the local address of a datagram, a firewall
mark, forced buffer sizes) come from ``socket_options()``; where the platform
lacks one it is off, and the log says so once.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import socket
import struct
import sys
import time
from typing import Any, Callable

from . import id_filter, socket_options
from .options import SocketOptions

log = logging.getLogger("vpncrypt")

_BUFFER_BYTES = 4 << 20
SOL_UDP = 17  # IPPROTO_UDP, the level of UDP_SEGMENT and UDP_GRO
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS in linux/udp.h
GSO_MAX_BYTES = 65000  # under IPv4's 65,507-byte UDP payload limit
_GSO_REFUSED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EIO}
# Linux's IP_MTU_DISCOVER (linux/in.h 10) set to IP_PMTUDISC_DONT (0): outer IPv4
# datagrams leave without DF, so a router on a smaller path fragments them even
# where ICMP is filtered. FreeBSD and macOS send UDP without DF already.
_IP_MTU_DISCOVER = 10
_IP_PMTUDISC_DONT = 0
SEND_ERROR_LOG_INTERVAL = 60.0  # seconds at least between two log lines about one errno
GSO_LIMITS_KEPT = 4096  # endpoints whose GSO size limit is remembered; then all are tried afresh
GSO_RETRY_RUNS = 1 << 16  # segmented sends after which remembered limits are forgotten (a path may grow)
_GRO_ANCILLARY = socket.CMSG_SPACE(4)
_PKTINFO_ANCILLARY = socket.CMSG_SPACE(20)  # struct in6_pktinfo; in_pktinfo is 12 bytes, in_addr 4
_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: ``flags & socket.MSG_TRUNC`` runs enum code, a microsecond a read
_missing_said = False
_FPROG = struct.Struct("HP")  # struct sock_fprog {unsigned short len; struct sock_filter *filter;}, native


def _say_missing_once(options: SocketOptions) -> None:
    global _missing_said
    missing = options.missing()
    if missing and not _missing_said:
        log.info("UDP on %s: without %s (not on this platform)", options.name, ", ".join(missing))
        _missing_said = True


def _grow_buffers(sock: socket.socket, options: SocketOptions) -> None:
    """Room for bursts of datagrams: past the system's cap where root may."""
    for plain, force in ((socket.SO_RCVBUF, options.rcvbuf_force), (socket.SO_SNDBUF, options.sndbuf_force)):
        try:
            if force is None:
                raise OSError
            sock.setsockopt(socket.SOL_SOCKET, force, _BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, _BUFFER_BYTES)


def _clear_df(sock: socket.socket, options: SocketOptions) -> None:
    """IPv4 datagrams without DF (see ``_IP_MTU_DISCOVER``); also the IPv4 side
    of a dual-stack IPv6 socket. IPv6 has no DF: its datagrams larger than the
    path are fragmented by this host's kernel, at the path MTU an ICMPv6 Packet
    Too Big told it."""
    if options.name != "Linux":
        return
    try:
        sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DONT)
    except OSError:
        pass  # an IPv6-only socket has no IPv4 side


def open_server_transport(
    address: str, port: int, *, offload: bool = True, options: SocketOptions | None = None,
) -> "UdpTransport":
    """A non-blocking UDP transport bound to ``address``:``port``; '::' takes
    IPv4 and IPv6 alike, and then each datagram is answered from the local
    address it came to. Raises OSError with a message for the operator."""
    options = options or socket_options()
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        _grow_buffers(sock, options)
        _clear_df(sock, options)
        sock.bind((address, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise OSError(error.errno, f"UDP port {port} is already in use") from None
        raise OSError(error.errno, f"cannot listen on UDP {address} port {port}: {error.strerror}") from None
    sock.setblocking(False)
    reply_from_destination = ipaddress.ip_address(address).is_unspecified
    return UdpTransport(sock, offload=offload, reply_from_destination=reply_from_destination, options=options)


def open_client_transport(
    family: int, *, fwmark: int = 0, offload: bool = True, options: SocketOptions | None = None,
) -> "UdpTransport":
    """Unbound until the first send and unconnected, so the kernel picks the
    source address afresh for each datagram: a new address after roaming is
    used at once. ``fwmark`` (non-zero) marks every datagram sent, where the
    platform has SO_MARK. Raises OSError with a message for the operator."""
    options = options or socket_options()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        _grow_buffers(sock, options)
        _clear_df(sock, options)
        if fwmark:
            if options.mark is None:
                raise OSError(errno.EOPNOTSUPP, f"a fwmark needs SO_MARK, which {options.name} does not have")
            sock.setsockopt(socket.SOL_SOCKET, options.mark, fwmark)
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"cannot set up the UDP socket: {error.strerror}") from None
    sock.setblocking(False)
    return UdpTransport(sock, offload=offload, options=options)


class UdpTransport:
    """Batch receive and send on one socket; errors are counted, never raised.

    With ``offload`` (Linux), equal-sized datagrams to one endpoint leave in
    one sendmsg with UDP_SEGMENT (GSO) and arrive coalesced by UDP_GRO, to be
    split here: one system call for a batch instead of one per datagram. On
    the wire they stay separate datagrams, so a peer without offloads sees no
    difference. If the kernel refuses either, it is switched off for this
    socket and the datagrams go one by one. A run larger than the path MTU to
    its endpoint (EMSGSIZE: the kernel does not fragment a GSO send) goes one
    by one instead, where the kernel fragments what does not fit, and so do
    later runs of that size or larger to that endpoint. Whatever the kernel
    refuses, each datagram of a run is tried: one refusal never loses a run.

    Send errors are counted in ``send_errors`` and logged, at most one line a
    ``SEND_ERROR_LOG_INTERVAL`` per errno, with the destination, the errno and
    for EMSGSIZE its likely cause.

    With ``reply_from_destination`` (a server listening on every address),
    each received datagram's address is paired with the local address it was
    sent to, and what is sent to that pair leaves from that address. Without
    it the kernel picks the source by route, which on a host with a second
    address (a floating IP) is not the one the client sent to, and a NAT or
    firewall in front of the client drops the reply.
    """

    def __init__(
        self, sock: socket.socket, *, offload: bool = True, reply_from_destination: bool = False,
        options: SocketOptions | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        options = options or socket_options()
        _say_missing_once(options)
        self.sock = sock
        self._clock = clock
        self._logged: dict[tuple, float] = {}  # kind -> when a line about it was last logged
        self._unlogged: dict[tuple, int] = {}  # kind -> errors since that line
        # Endpoint -> the smallest datagram size a GSO send to it was refused
        # for with EMSGSIZE: runs that large go one by one (fragmented by the kernel).
        self.gso_limits: dict[Any, int] = {}
        self._segmented_runs = 0
        self._buffer = bytearray(1 << 17)  # a coalesced read is at most 64 KiB
        self._view = memoryview(self._buffer)
        self.send_errors = 0
        self._udp_segment = options.udp_segment
        self._udp_gro = options.udp_gro
        self._reply_source = options.reply_source
        self.gso = offload and self._udp_segment is not None
        self.gro = False
        if offload and self._udp_gro is not None:
            try:
                sock.setsockopt(SOL_UDP, self._udp_gro, 1)
                self.gro = True
            except OSError:
                pass
        log.info("UDP offloads: GSO %s, GRO %s%s", "on" if self.gso else "off", "on" if self.gro else "off",
                  "" if offload else " (offload = false)")
        self.sticky = False
        if reply_from_destination:
            # On Linux IPV6_RECVPKTINFO covers IPv4-mapped datagrams too (RFC 3542).
            option = options.destination_option(ipv6=sock.family == socket.AF_INET6)
            if option is not None:
                sock.setsockopt(*option, 1)
                self.sticky = True
        self._ancillary = (_GRO_ANCILLARY if self.gro else 0) + (_PKTINFO_ANCILLARY if self.sticky else 0)
        self._attach_filter = options.attach_filter
        self._detach_filter = options.detach_filter
        self._platform = options.name
        self.refused_ids: tuple[int, ...] = ()  # the client IDs the socket filter refuses now
        self._filter_said = False

    def refuse_client_ids(self, client_ids: list[int]) -> bool:
        """Have the kernel drop, before they are queued to this socket, the
        datagrams naming any of ``client_ids`` (at most id_filter.MAX_IDS),
        replacing the previous set; an empty list detaches the filter.

        What the filter drops never reaches us, so is not counted by us;
        the kernel counts it among the socket's drops (/proc/net/udp), with
        those of a full buffer. True if the kernel refuses exactly
        ``client_ids`` now; False where the platform has no socket filter
        (nothing changes; the log says so once) or the kernel refused the
        filter (logged; the previous set stays)."""
        ids = tuple(sorted(set(client_ids)))
        if ids == self.refused_ids:
            return True
        if self._attach_filter is None or self._detach_filter is None:
            if ids and not self._filter_said:
                log.info("UDP on %s: no socket filter, so a flood aimed at a client ID is refused in user space"
                         " only (it costs this process more than on Linux)", self._platform)
                self._filter_said = True
            return not ids
        try:
            if ids:
                code = id_filter.encode(id_filter.program(ids))
                buffer = ctypes.create_string_buffer(code, len(code))
                # The kernel copies the program during the call: the buffer may go after it.
                self.sock.setsockopt(socket.SOL_SOCKET, self._attach_filter,
                                     _FPROG.pack(len(code) // id_filter.SOCK_FILTER.size, ctypes.addressof(buffer)))
            else:
                self.sock.setsockopt(socket.SOL_SOCKET, self._detach_filter, 0)
        except (OSError, ValueError) as error:
            log.warning("UDP: cannot set the socket filter for %d client IDs (%s); they are refused in user"
                        " space", len(ids), getattr(error, "strerror", None) or error)
            return False
        self.refused_ids = ids
        return True

    def fileno(self) -> int:
        """The socket's descriptor, for the event loop."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket; safe to call twice."""
        self.sock.close()

    def receive(self, limit: int) -> list[tuple[bytes, Any]]:
        """Up to ``limit`` (datagram, endpoint) pairs; a coalesced read may add
        up to 63 more. With ``reply_from_destination`` the endpoint is
        (address, local address it came to)."""
        udp_gro, sticky, reply_source = self._udp_gro, self.sticky, self._reply_source
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
            if flags & _MSG_TRUNC:
                continue
            segment = size
            source = None
            for level, kind, data in ancillary:
                if level == SOL_UDP and kind == udp_gro:
                    segment = int.from_bytes(data[:4], sys.byteorder) or size
                elif sticky:
                    # The address it came to, as the platform sends from it (see SocketOptions).
                    source = reply_source(level, kind, data) or source
            if sticky:
                address = (address, source)
            if segment >= size:
                datagrams.append((bytes(view[:size]), address))
            else:
                coalesced = view[:size]  # the last segment may be short: never read past size
                datagrams.extend((bytes(coalesced[start:start + segment]), address) for start in range(0, size, segment))
        return datagrams

    def send(self, datagrams: list[tuple[bytes, Any]]) -> None:
        """Send in order; runs of equal size to one endpoint leave in one GSO
        sendmsg. Refusals are counted in ``send_errors``."""
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
            if end - first == 1 or not self.gso or size >= self.gso_limits.get(endpoint, GSO_MAX_BYTES):
                self._send_each(datagrams[first:end])
            else:
                self._send_segmented(datagrams[first:end], size, endpoint)
            first = end

    def _send_segmented(self, run: list[tuple[bytes, Any]], size: int, endpoint: Any) -> None:
        ancillary = [(SOL_UDP, self._udp_segment, size.to_bytes(2, sys.byteorder))]
        if self.sticky:
            address, source = endpoint
            if source:
                ancillary.append(source)
        else:
            address = endpoint
        self._segmented_runs += 1
        if self._segmented_runs >= GSO_RETRY_RUNS:
            self._segmented_runs = 0
            self.gso_limits.clear()  # the path may have grown again: find out
        try:
            self.sock.sendmsg([d for d, _ in run], ancillary, 0, address)
        except OSError as error:
            if error.errno == errno.EMSGSIZE:
                # Larger than the path MTU to this endpoint (the route's, or one an
                # ICMP message taught the kernel): the kernel will not fragment a
                # GSO send, but it does one datagram at a time.
                if len(self.gso_limits) >= GSO_LIMITS_KEPT:
                    self.gso_limits.clear()
                self.gso_limits[endpoint] = min(size, self.gso_limits.get(endpoint, size))
                self._log_error(error, endpoint, size, segmented=True)
                self._send_each(run)
            elif error.errno in _GSO_REFUSED:
                errors = self.send_errors
                self._send_each(run)
                if self.send_errors == errors:
                    self.gso = False  # one by one they went: this kernel or route will not segment
            else:
                # Full buffer, no route ...: try each, so that what can go goes.
                self._send_each(run)

    def _send_each(self, datagrams: list[tuple[bytes, Any]]) -> None:
        sendto, sendmsg, sticky = self.sock.sendto, self.sock.sendmsg, self.sticky
        for datagram, endpoint in datagrams:
            try:
                if sticky:
                    address, source = endpoint
                    sendmsg([datagram], [source] if source else [], 0, address)
                else:
                    sendto(datagram, endpoint)
            except OSError as error:
                # Full buffer, network down, no route, a local address that
                # has gone: lost like on any network, and the tunnel carries
                # on when the network is back.
                self.send_errors += 1
                self._log_error(error, endpoint, len(datagram))

    def _log_error(self, error: OSError, endpoint: Any, size: int, segmented: bool = False) -> None:
        """One line per kind (errno, and whether a GSO run was refused) at most
        every SEND_ERROR_LOG_INTERVAL seconds, saying how many since the last."""
        number = error.errno or 0
        kind = (number, segmented)
        now = self._clock()
        last = self._logged.get(kind)
        if last is not None and now - last < SEND_ERROR_LOG_INTERVAL:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        self._logged[kind] = now
        since = self._unlogged.pop(kind, 0)
        address = endpoint[0] if self.sticky else endpoint
        cause = ""
        if segmented:
            cause = (f"; {size}-byte datagrams are larger than the path MTU to it (a small MTU on the way, or"
                     " one learned from ICMP): they go one at a time now, fragmented by the kernel")
        elif number == errno.EMSGSIZE:
            cause = (f"; a {size}-byte datagram is larger than the path MTU to it allows"
                     " and the kernel would not fragment it: lower mtu in the config")
        elif number in (errno.ENOBUFS, errno.EAGAIN):
            cause = "; the send queue is full"
        elif number in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            cause = "; no route to it"
        more = f" ({since} more since the last line)" if since else ""
        log.warning("UDP send to %s failed: %s (%s)%s%s", _format(address), os.strerror(number),
                    errno.errorcode.get(number, number), cause, more)


def _format(address: Any) -> str:
    try:
        host, port = address[0], address[1]
    except (TypeError, IndexError):
        return str(address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
