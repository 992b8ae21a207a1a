"""Linux's socket options, by their numbers in the kernel's headers.

asm-generic/socket.h: SO_ATTACH_FILTER 26, SO_DETACH_FILTER 27, SO_SNDBUFFORCE 32,
SO_RCVBUFFORCE 33, SO_MARK 36;
linux/udp.h: UDP_SEGMENT 103, UDP_GRO 104; linux/in.h: IP_PKTINFO 8;
linux/in6.h: IPV6_RECVPKTINFO 49, IPV6_PKTINFO 50.
"""

from __future__ import annotations

from .options import SocketOptions

LINUX = SocketOptions(
    "Linux", rcvbuf_force=33, sndbuf_force=32, mark=36, udp_segment=103, udp_gro=104, ip_pktinfo=8,
    ipv6_recvpktinfo=49, ipv6_pktinfo=50, attach_filter=26, detach_filter=27,
)
