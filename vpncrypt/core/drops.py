"""Why a datagram or packet was dropped, and how many times.

Drops are counted, never logged one by one: their rate is the attacker's to
choose. The status output and the README list every reason.
"""

from __future__ import annotations

from collections import Counter

# Datagrams from the network, rejected before any cipher work.
BAD_LENGTH = "bad_length"
UNKNOWN_KIND = "unknown_kind"
OLD_VERSION = "old_version"  # a version-1 datagram: that peer must be upgraded
UNKNOWN_CLIENT = "unknown_client"
OUTSIDE_TIME_WINDOW = "outside_time_window"
REPLAYED = "replayed"
COUNTER_TOO_OLD = "counter_too_old"
SUPERSEDED = "superseded"
# Datagrams that failed authentication: forged, corrupted, wrong key, wrong
# server ID or direction.
AUTH_FAILED = "auth_failed"
# Naming a client whose datagrams failed authentication faster than
# FAILURE_RATE a second (after a burst of FAILURE_BURST): refused before the
# cipher, so a flood aimed at one client ID costs that client only.
AUTH_FAILURES_LIMITED = "auth_failures_limited"
# Authentic, but stamped above the restart bound saved so far (restart.py):
# dropped until a higher one is saved, a fraction of a second.
PENDING_RESTART_STATE = "pending_restart_state"
# Decrypted inner packets.
INNER_MALFORMED = "inner_malformed"
INNER_SOURCE_NOT_ALLOWED = "inner_source_not_allowed"
CLIENT_TO_CLIENT_DENIED = "client_to_client_denied"
# Packets read from the TUN device: headers that do not hold together
# (inner.well_formed), a destination no client owns, a client not heard from
# yet. The last two are answered with ICMP destination unreachable (icmp.py),
# and so is a client's packet for either.
TUN_MALFORMED = "tun_malformed"
NO_ROUTE = "no_route"
NO_ENDPOINT = "no_endpoint"
# ICMP errors not sent for those: the source was over its rate (icmp.RATE a
# second after a burst of icmp.BURST), or the server has no tunnel address of
# that family to send from.
ICMP_RATE_LIMITED = "icmp_rate_limited"
ICMP_NO_SOURCE_ADDRESS = "icmp_no_source_address"
# An authentic path MTU probe or acknowledgement whose probed size is not its
# own length.
BAD_PROBE = "bad_probe"
# Larger than the path MTU found to the peer (core/pmtu.py) and not to be
# fragmented (IPv4 DF, any IPv6 above 1280 bytes): answered with ICMP
# "fragmentation needed" / "packet too big", within a rate.
PACKET_TOO_BIG = "packet_too_big"
# Time answers (client): one that echoes no datagram this client sent in the
# last few seconds, or that fails authentication.
UNEXPECTED_TIME_ANSWER = "unexpected_time_answer"

ALL = (
    BAD_LENGTH, UNKNOWN_KIND, OLD_VERSION, UNKNOWN_CLIENT, OUTSIDE_TIME_WINDOW, REPLAYED,
    COUNTER_TOO_OLD, SUPERSEDED, AUTH_FAILED, AUTH_FAILURES_LIMITED, PENDING_RESTART_STATE, INNER_MALFORMED,
    INNER_SOURCE_NOT_ALLOWED, CLIENT_TO_CLIENT_DENIED, TUN_MALFORMED, NO_ROUTE, NO_ENDPOINT, ICMP_RATE_LIMITED,
    ICMP_NO_SOURCE_ADDRESS, UNEXPECTED_TIME_ANSWER, BAD_PROBE, PACKET_TOO_BIG,
)


def new_counters() -> Counter:
    """A counter with every reason present, so status output lists zeros too."""
    return Counter({reason: 0 for reason in ALL})
