"""Which OS-specific socket options a platform has, by their numbers there.

Python names some of these only on some platforms, and some not at all, so
each OS module states its own numbers (from its headers) and an option a
platform lacks is ``None``: switched off, never set with another OS's number.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SocketOptions:
    """One platform's option numbers; None for an option it lacks."""

    name: str  # the platform, for the log
    rcvbuf_force: int | None = None  # SO_RCVBUFFORCE: past net.core.rmem_max, as root
    sndbuf_force: int | None = None  # SO_SNDBUFFORCE
    mark: int | None = None  # SO_MARK: a firewall mark on every datagram sent
    udp_segment: int | None = None  # UDP_SEGMENT at level SOL_UDP: send-side segmentation (GSO)
    udp_gro: int | None = None  # UDP_GRO at level SOL_UDP: receive-side coalescing
    ip_pktinfo: int | None = None  # IP_PKTINFO: an IPv4 datagram's local address, in and out

    def missing(self) -> list[str]:
        """The names of the options this platform lacks, for one log line."""
        names = {
            "rcvbuf_force": "SO_RCVBUFFORCE", "sndbuf_force": "SO_SNDBUFFORCE", "mark": "SO_MARK",
            "udp_segment": "UDP_SEGMENT", "udp_gro": "UDP_GRO", "ip_pktinfo": "IP_PKTINFO",
        }
        return [label for field, label in names.items() if getattr(self, field) is None]


NO_OPTIONS = SocketOptions("this platform")
