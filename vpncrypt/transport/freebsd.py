"""FreeBSD's socket options, by their numbers in its headers.

netinet/in.h: IP_RECVDSTADDR 7, and IP_SENDSRCADDR, the cmsg type that sets
the source address, is the same 7 (it works on a socket bound to INADDR_ANY
only: udp_output). netinet6/in6.h: IPV6_RECVPKTINFO 36, IPV6_PKTINFO 46.
FreeBSD has no IP_PKTINFO, SO_MARK, forced buffer sizes nor UDP GSO/GRO, and no
socket filter (its BPF reads interfaces): floods are refused in user space only.

A socket bound to '::' that also takes IPv4 gets no destination address with
an IPv4 datagram (ip6_savecontrol_v4 stops at IPv4 packets), so such replies
leave from the address the route picks; a server that must answer IPv4
clients from a second address listens on '0.0.0.0'.
"""

from __future__ import annotations

from .options import SocketOptions

FREEBSD = SocketOptions(
    "FreeBSD", ip_recvdstaddr=7, ip_sendsrcaddr=7, ipv6_recvpktinfo=36, ipv6_pktinfo=46,
)
