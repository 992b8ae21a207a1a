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
# Packets read from the TUN device.
NO_ROUTE = "no_route"
NO_ENDPOINT = "no_endpoint"
# Time answers (client): one that echoes no datagram this client sent in the
# last few seconds, or that fails authentication.
UNEXPECTED_TIME_ANSWER = "unexpected_time_answer"

ALL = (
    BAD_LENGTH, UNKNOWN_KIND, OLD_VERSION, UNKNOWN_CLIENT, OUTSIDE_TIME_WINDOW, REPLAYED,
    COUNTER_TOO_OLD, SUPERSEDED, AUTH_FAILED, AUTH_FAILURES_LIMITED, PENDING_RESTART_STATE, INNER_MALFORMED,
    INNER_SOURCE_NOT_ALLOWED, CLIENT_TO_CLIENT_DENIED, NO_ROUTE, NO_ENDPOINT, UNEXPECTED_TIME_ANSWER,
)


def new_counters() -> Counter:
    """A counter with every reason present, so status output lists zeros too."""
    return Counter({reason: 0 for reason in ALL})
