"""macOS's socket options, by their numbers in xnu's headers.

bsd/netinet/in.h: IP_PKTINFO 26, which is also IP_RECVPKTINFO and the cmsg
type both ways, with the same ``in_pktinfo`` as Linux; sent with ifindex 0,
``ipi_spec_dst`` is the source address. bsd/netinet6/in6.h (RFC 3542 names):
IPV6_RECVPKTINFO 61, IPV6_PKTINFO 46. macOS has no SO_MARK, forced buffer
sizes nor UDP GSO/GRO, and no socket filter (its BPF reads interfaces): floods
are refused in user space only. IP_BOUND_IF (25) is not used: a full tunnel keeps the
client's datagrams outside it with a host route to the server instead
(``netconfig.darwin``).
"""

from __future__ import annotations

from .options import SocketOptions

DARWIN = SocketOptions("macOS", ip_pktinfo=26, ipv6_recvpktinfo=61, ipv6_pktinfo=46)
