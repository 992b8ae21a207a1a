"""Which OS-specific socket options a platform has, by their numbers there.

Python names some of these only on some platforms, and some not at all, and
the ones it names carry the numbers of the OS it runs on, so each OS module
states its own numbers (from its headers) and an option a platform lacks is
``None``: switched off, never set with another OS's number.

The local address a datagram came to, for answering from it, comes in one of
two shapes, and which one follows from the option a platform has:
IP_PKTINFO (Linux, macOS) and IPV6_PKTINFO (everywhere) carry an
``in_pktinfo``/``in6_pktinfo`` both ways; FreeBSD has no IP_PKTINFO and
receives a bare ``in_addr`` with IP_RECVDSTADDR and sends one with
IP_SENDSRCADDR. ``reply_source`` turns what came in into what goes out, a
pure function the tests run for every OS.
"""

from __future__ import annotations

from dataclasses import dataclass

IPPROTO_IP = 0  # the levels have these numbers on Linux, FreeBSD and macOS alike
IPPROTO_IPV6 = 41
NO_INTERFACE = bytes(4)  # ifindex 0: the route picks the interface, the address is kept

Ancillary = tuple[int, int, bytes]


@dataclass(frozen=True)
class SocketOptions:
    """One platform's option numbers; None for an option it lacks."""

    name: str  # the platform, for the log
    rcvbuf_force: int | None = None  # SO_RCVBUFFORCE: past net.core.rmem_max, as root
    sndbuf_force: int | None = None  # SO_SNDBUFFORCE
    mark: int | None = None  # SO_MARK: a firewall mark on every datagram sent
    udp_segment: int | None = None  # UDP_SEGMENT at level SOL_UDP: send-side segmentation (GSO)
    udp_gro: int | None = None  # UDP_GRO at level SOL_UDP: receive-side coalescing
    ip_pktinfo: int | None = None  # IP_PKTINFO: an IPv4 datagram's local address, in and out (in_pktinfo)
    ip_recvdstaddr: int | None = None  # IP_RECVDSTADDR: an IPv4 datagram's local address, in (in_addr)
    ip_sendsrcaddr: int | None = None  # IP_SENDSRCADDR: the source address of one sent, out (in_addr)
    ipv6_recvpktinfo: int | None = None  # IPV6_RECVPKTINFO: the option that turns IPV6_PKTINFO on
    ipv6_pktinfo: int | None = None  # IPV6_PKTINFO: the cmsg type, in and out (in6_pktinfo)
    attach_filter: int | None = None  # SO_ATTACH_FILTER at SOL_SOCKET: a classic BPF socket filter
    detach_filter: int | None = None  # SO_DETACH_FILTER

    def destination_option(self, ipv6: bool) -> tuple[int, int] | None:
        """(level, option) to set to 1 on a socket of that family so that each
        datagram comes with the local address it was sent to; None if the
        platform cannot."""
        if ipv6:
            return None if self.ipv6_recvpktinfo is None else (IPPROTO_IPV6, self.ipv6_recvpktinfo)
        if self.ip_pktinfo is not None:
            return (IPPROTO_IP, self.ip_pktinfo)
        if self.ip_recvdstaddr is not None and self.ip_sendsrcaddr is not None:
            return (IPPROTO_IP, self.ip_recvdstaddr)
        return None

    def reply_source(self, level: int, kind: int, data: bytes) -> Ancillary | None:
        """For one received ancillary item that names the local address a
        datagram came to, the item that sends from that address; None for
        any other item. In the pktinfo shapes the interface is left to the
        route, and an IPv4 address goes in ``ipi_spec_dst``, which is what
        Linux and macOS send from (``ipi_addr``, where it came, is ignored)."""
        if level == IPPROTO_IPV6 and kind == self.ipv6_pktinfo:
            return (level, kind, data[:16] + NO_INTERFACE)  # in6_pktinfo {addr[16], ifindex}
        if level == IPPROTO_IP:
            if kind == self.ip_pktinfo:
                return (level, kind, NO_INTERFACE + data[8:12] + bytes(4))  # in_pktinfo {ifindex, spec_dst, addr}
            if kind == self.ip_recvdstaddr and self.ip_sendsrcaddr is not None:
                return (level, self.ip_sendsrcaddr, data[:4])
        return None

    def missing(self) -> list[str]:
        """The names of the options this platform lacks, for one log line."""
        names = {
            "rcvbuf_force": "SO_RCVBUFFORCE", "sndbuf_force": "SO_SNDBUFFORCE", "mark": "SO_MARK",
            "udp_segment": "UDP_SEGMENT", "udp_gro": "UDP_GRO", "attach_filter": "SO_ATTACH_FILTER",
        }
        missing = [label for field, label in names.items() if getattr(self, field) is None]
        if self.destination_option(ipv6=False) is None:
            missing.append("IP_PKTINFO")
        if self.destination_option(ipv6=True) is None:
            missing.append("IPV6_RECVPKTINFO")
        return missing


NO_OPTIONS = SocketOptions("this platform")
