"""The kill switch of a full tunnel (Linux, nftables): while the client runs,
nothing leaves this host outside the tunnel but the client's own datagrams.

One table of vpncrypt's own per interface (``inet vpncrypt_ks_IF``), so no
other firewall's rules are touched and deleting it undoes everything. Its
output chain drops every packet except those to loopback or the tunnel
interface, those carrying the client's mark (its UDP socket sets SO_MARK in
a full tunnel; see ``netconfig.linux``) and IPv6 neighbour discovery, without
which an IPv6 underlay could not reach its next hop (ARP is not IP and is
not filtered). DHCP, forwarded traffic and the rest of the local network are
not let through. The table is added first, before the routes, and deleted
at exit and before each start; a client that was killed leaves it, so the
host stays cut off until the client starts again (or ``nft delete table``).
"""

from __future__ import annotations

import re

from . import NetconfigError, TunnelSpec

ND = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit"  # RFC 4861 section 4: NS, NA, RS


def table(interface: str) -> str:
    """The table's name: the interface's, with what nft takes as an identifier."""
    return "vpncrypt_ks_" + re.sub(r"[^A-Za-z0-9_]", "_", interface)


def leftovers(spec: TunnelSpec, platform: str) -> list[list[str]]:
    """The teardown of a kill switch that a killed client of this interface
    left, for a start whose config has none (any more): the host would stay
    cut off otherwise. Nothing where there is no kill switch (not Linux)."""
    if not platform.startswith("linux") or not spec.fwmark:
        return []
    return [["nft", "delete", "table", "inet", table(spec.interface)]]


def commands(spec: TunnelSpec, platform: str) -> tuple[list[list[str]], list[list[str]]]:
    """(setup, teardown) of the kill switch for ``spec``; raises
    NetconfigError where there is none (not a full tunnel, not Linux)."""
    if not platform.startswith("linux"):
        raise NetconfigError("kill_switch is for Linux only so far (nftables); leave it out on this system")
    if not spec.full_tunnel or not spec.fwmark:
        raise NetconfigError("kill_switch goes with a full tunnel (a default route and its fwmark)")
    name = table(spec.interface)
    chain = ("{ chain output { type filter hook output priority 0; policy drop; "
             f'oifname "lo" accept; oifname "{spec.interface}" accept; meta mark {spec.fwmark:#010x} accept; '
             f"icmpv6 type {{ {ND} }} accept; }}; }}")
    return [["nft", "add", "table", "inet", name, chain]], [["nft", "delete", "table", "inet", name]]
