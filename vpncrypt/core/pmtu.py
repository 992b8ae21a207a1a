"""Path MTU: the client's search for the largest datagram that gets through, and "too big" answers.

Where ICMP is filtered, a datagram too big for a hop is lost and nobody says
why (a black hole): over an IPv6 underlay, routers never fragment. The
client finds the largest datagram that gets through both ways by sending
padded, authenticated probes that the server acknowledges with an equally
padded answer (datagram packetization-layer PMTU discovery, RFC 8899, as
QUIC does it, RFC 9000 section 14.3; the wire format is docs/PROTOCOL.md
section 8). Sizes here are datagram sizes: UDP payload bytes, the 24 bytes of
header and SIV included, so the tunnel's effective MTU is ``confirmed - 24``.

vpncrypt sends outer IPv4 without DF, so a probe that a router fragments
still arrives: what the search finds is the largest datagram that is
delivered, fragmented or not. It only ever lowers the size where big
datagrams are lost: an IPv6 path below the configured MTU with ICMPv6
filtered, or a path that drops fragments.

``PathSearch`` is RFC 8899's state machine (section 5.2), sans-I/O: time
comes in as ``now`` (wall-clock Unix seconds, as everywhere in the core).
``too_big`` builds the ICMP answer that tells an inner sender the effective
MTU (RFC 1191 / RFC 4443), so its own path MTU discovery works; it sits
beside icmp.py's destination-unreachable builder (the server's), with its
checksum, and is used by both ends.
"""

from __future__ import annotations

import struct

from .icmp import answerable, internet_checksum

# RFC 8200 section 5: every IPv6 link carries 1280 bytes. Less the outer
# headers (IPv4 20 or IPv6 40, UDP 8), the datagram every path should carry
# (RFC 8899 section 5.1.2, BASE_PLPMTU): 1252 bytes over IPv4, 1232 over IPv6.
IPV6_MIN_MTU = 1280
OUTER_HEADERS = {4: 28, 6: 48}
MAX_UDP_PAYLOAD = {4: 65535 - 28, 6: 65535 - 8}  # IPv4 total length, IPv6 payload length (both 16 bits)
# RFC 8899 section 5.1.1 and 5.1.2. PROBE_TIMER: at least 1 s (a MUST);
# the RFC advises more than 15 s, for a peer that may delay its answer. A
# vpncrypt server answers a probe at once, so 1 s is far beyond any round
# trip it serves, and the search ends in seconds instead of minutes.
PROBE_TIMER = 1.0
MAX_PROBES = 3  # consecutive lost probes of one size before it counts as not getting through
PMTU_RAISE_TIMER = 600.0  # seconds in SEARCH_COMPLETE before confirming and searching upward again
# In ERROR the base size is probed again every PROBE_TIMER (RFC 8899 section
# 5.2: ERROR is left when probes no longer detect the error; Linux's SCTP
# PLPMTUD also keeps probing BASE_PLPMTU in its Error state): a client whose
# base probes were all lost (its server down, a restart's refusal window, a
# brief outage) finds the path again by itself, with no traffic to wake it,
# at the cost of one base-size datagram a second meanwhile.
# RFC 8899 section 4.3: black holes are also suspected when the PL sees its
# packets go unanswered. The server answers no datagram as such, but a tunnel
# that carries data out and hears nothing back for this long (WireGuard's
# REKEY_TIMEOUT, its own "sent data, heard nothing" limit) has its size
# confirmed at once instead of at the next PMTU_RAISE_TIMER.
BLACK_HOLE_SILENCE = 5.0
# The search stops when the largest size confirmed and the smallest size lost
# are this close (bytes): three more probes would gain at most 1 %.
SEARCH_RESOLUTION = 16

# RFC 8899 section 5.2 states, and CONFIRMING: one probe of the confirmed
# size, which tells the server the result and checks it still gets through
# (RFC 8899 section 4.3, black hole detection), before SEARCH_COMPLETE or a
# new upward search.
BASE, SEARCHING, CONFIRMING, SEARCH_COMPLETE, ERROR = "base", "searching", "confirming", "search_complete", "error"


def base_size(underlay_version: int) -> int:
    """BASE_PLPMTU for an IPv4 (4) or IPv6 (6) underlay, in datagram bytes."""
    return IPV6_MIN_MTU - OUTER_HEADERS[underlay_version]


def max_size(underlay_version: int, mtu: int) -> int:
    """MAX_PLPMTU: the datagram of a full ``mtu``-byte packet (plus 24), at
    most the largest UDP payload of the underlay (65,507 bytes over IPv4,
    65,527 over IPv6: a 16-bit length less the headers)."""
    return min(mtu + 24, MAX_UDP_PAYLOAD[underlay_version])


class PathSearch:
    """RFC 8899's search for the largest datagram size that gets through.

    ``base`` and ``maximum`` are datagram sizes (bytes): BASE_PLPMTU
    (``base_size``) and MAX_PLPMTU, the configured MTU plus 24; ``now`` Unix
    seconds. ``confirmed`` (the PLPMTU) is the size to keep datagrams to: the
    base until a larger probe is acknowledged, back to the base when a black
    hole is found. The owner sends a probe of the size ``probe_due`` returns
    (carrying ``confirmed``), and reports acknowledgements to
    ``acknowledged`` and any authentic datagram from the server to ``heard``.

    States (RFC 8899 section 5.2): BASE probes the base size; SEARCHING probes
    the maximum first (most paths carry it: one round trip), then halves the
    range between the largest size acknowledged and the smallest lost;
    CONFIRMING probes the confirmed size (so the server learns it, and as a
    black hole check); SEARCH_COMPLETE waits PMTU_RAISE_TIMER, then confirms
    and searches upward again, or confirms at once when ``suspect`` says data
    went unanswered; ERROR (the base size lost too) keeps the base and
    probes it again every PROBE_TIMER, searching on from the first
    acknowledgement, or starts over at once when the server is heard. A
    size counts as lost after MAX_PROBES probes of it went unacknowledged
    for PROBE_TIMER each.
    """

    def __init__(self, base: int, maximum: int, now: float) -> None:
        self.maximum = maximum
        self.base = min(base, maximum)
        self.confirmed = self.base
        self.state = BASE
        self.probed = self.base  # PROBED_SIZE: the size of the probe in flight
        self.probe_count = 0  # PROBE_COUNT: probes of that size sent without an acknowledgement
        self.lost = maximum + 1  # the smallest size this search round found lost
        self.due = now  # when probe_due has something to do
        self.outstanding = False  # a probe of ``probed`` is in flight
        self._raise = False  # CONFIRMING goes on to an upward search

    def next_timer(self) -> float:
        """Unix seconds when ``probe_due`` next has work (possibly past)."""
        return self.due

    def stepped(self, delta: float) -> None:
        """The wall clock jumped by ``delta`` seconds: keep the timer's real pace."""
        self.due += delta

    def probe_due(self, now: float) -> int | None:
        """The size of the probe to send at ``now``, or None. An outstanding
        probe whose PROBE_TIMER ran out counts as lost first; in ERROR each
        is the base size again, PROBE_TIMER after the last."""
        if now < self.due:
            return None
        if self.outstanding:
            self.outstanding = False
            self.probe_count += 1
            if self.probe_count >= MAX_PROBES:
                self._size_lost(now)
        elif self.state == SEARCH_COMPLETE:
            self._confirm(raise_after=True)
        if self.state == SEARCH_COMPLETE:
            return None
        self.outstanding = True
        self.due = now + PROBE_TIMER
        return self.probed

    def acknowledged(self, size: int, now: float) -> None:
        """The server acknowledged a probe of ``size`` bytes: both directions
        carry it. A late acknowledgement of an earlier size still raises
        ``confirmed``; only one of the probe in flight moves the search on
        (in BASE and ERROR, to SEARCHING)."""
        if size > self.confirmed:
            self.confirmed = size
            self.lost = max(self.lost, size + 1)
        if not self.outstanding or size != self.probed:
            return
        self.outstanding = False
        self.probe_count = 0
        self.due = now
        if self.state == CONFIRMING and not self._raise:
            self._complete(now)
        else:
            self.state = SEARCHING
            self._next_search_size(now)

    def suspect(self, now: float) -> None:
        """Data went unanswered for BLACK_HOLE_SILENCE: in SEARCH_COMPLETE,
        confirm the size at once (a lost confirmation falls back to the
        base); in any other state a probe is due anyway."""
        if self.state == SEARCH_COMPLETE:
            self._confirm(raise_after=False)
            self.due = now

    def heard(self, now: float) -> None:
        """An authentic datagram came from the server: after ERROR (the server
        unreachable, or the network not up yet), search again at once. The
        owner reports the acknowledgements in the same datagrams first."""
        if self.state == ERROR:
            self._start_over()
            self.due = now

    def _size_lost(self, now: float) -> None:
        """MAX_PROBES probes of ``probed`` went unacknowledged."""
        self.probe_count = 0
        if self.state == SEARCHING:
            self.lost = self.probed
            self._next_search_size(now)
        elif self.state == CONFIRMING:
            # A black hole: the size that got through does not any more.
            self.confirmed = self.probed = self.base
            self.state = BASE
            self.lost = self.maximum + 1
        else:  # BASE or ERROR: nothing gets through; keep the base and probe it again
            self.state = ERROR

    def _next_search_size(self, now: float) -> None:
        """Probe the maximum first, then the middle of what is left; done
        when that is less than SEARCH_RESOLUTION."""
        if self.lost - self.confirmed <= SEARCH_RESOLUTION or self.confirmed >= self.maximum:
            self._confirm(raise_after=False)
        elif self.lost > self.maximum:
            self.probed = self.maximum
        else:
            self.probed = (self.confirmed + self.lost) // 2

    def _confirm(self, raise_after: bool) -> None:
        self.state = CONFIRMING
        self.probed = self.confirmed
        self._raise = raise_after and self.confirmed < self.maximum
        self.lost = self.maximum + 1

    def _complete(self, now: float) -> None:
        self.state = SEARCH_COMPLETE
        self.due = now + PMTU_RAISE_TIMER

    def _start_over(self) -> None:
        self.state = BASE
        self.probed = self.confirmed = self.base
        self.probe_count = 0
        self.outstanding = False


# --- "too big" answers to inner senders ------------------------------------------------

ICMPV4, ICMPV6 = 1, 58
ICMPV4_UNREACHABLE, ICMPV4_FRAGMENTATION_NEEDED = 3, 4  # RFC 792; the MTU field is RFC 1191's
ICMPV6_PACKET_TOO_BIG = 2  # RFC 4443 section 3.2
IPV4_DF = 0x4000
IPV4_ERROR_LIMIT = 576  # RFC 1812 4.3.2.3: an ICMPv4 error quotes no more than fits in 576 bytes
TTL = 64  # Linux's default ip_default_ttl and hop_limit
# At most RATE answers a second after a burst of BURST, for the whole tunnel
# end (RFC 4443 2.4(f) asks for a limit; these are Linux's own defaults for
# its ICMP errors, net.ipv4.icmp_ratelimit, XRLIM_BURST_FACTOR 6, as icmp.py
# has them per source). One bucket, not one per sender: an answer lowers the
# sender's path MTU for every flow to that destination, so a few suffice.
RATE = 1.0
BURST = 6.0

_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")


def needs_answer(packet: bytes, mtu: int) -> bool:
    """True if ``packet`` (a whole IPv4 or IPv6 packet from TUN) exceeds the
    effective ``mtu`` and may not be fragmented on the way: IPv4 with DF set
    (without it a router would fragment it, RFC 791, so it is sent as it is),
    or IPv6 larger than both ``mtu`` and 1280 bytes (every IPv6 path must
    carry 1280, RFC 8200 section 5, and a Packet Too Big below it is ignored,
    RFC 8201 section 4: such packets are sent and may be lost)."""
    size = len(packet)
    if size <= mtu:
        return False
    if packet[0] >> 4 == 4:
        return bool(int.from_bytes(packet[6:8], "big") & IPV4_DF)
    return size > IPV6_MIN_MTU


def too_big(packet: bytes, mtu: int) -> bytes | None:
    """The ICMP answer to ``packet`` (too big, by ``needs_answer``) telling its
    sender the ``mtu``: ICMPv4 type 3 code 4 with the next-hop MTU (RFC 792,
    RFC 1191 section 4) or ICMPv6 Packet Too Big (RFC 4443 section 3.2),
    quoting as much of the packet as RFC 1812 4.3.2.3 and RFC 4443 2.4(c)
    allow. None for a packet never answered (``icmp.answerable``: an ICMP
    error, a non-first fragment, multicast ...).

    Its source is the packet's own destination: the address the packet was
    trying to reach, which routes through the tunnel (so the answer passes
    reverse-path filtering), and never this host's own address, which Linux
    drops as a martian when it is the sender itself."""
    if not answerable(packet):
        return None
    if packet[0] >> 4 == 4:
        return _v4_too_big(packet, mtu)
    return _v6_too_big(packet, mtu)


def _v4_too_big(packet: bytes, mtu: int) -> bytes:
    source, destination = packet[12:16], packet[16:20]
    quoted = packet[:IPV4_ERROR_LIMIT - 20 - 8]
    message = struct.pack("!BBHHH", ICMPV4_UNREACHABLE, ICMPV4_FRAGMENTATION_NEEDED, 0, 0, mtu) + quoted
    message = message[:2] + internet_checksum(message).to_bytes(2, "big") + message[4:]
    header = _IPV4_HEADER.pack(0x45, 0, 20 + len(message), 0, 0, TTL, ICMPV4, 0, destination, source)
    header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
    return header + message


def _v6_too_big(packet: bytes, mtu: int) -> bytes:
    source, destination = packet[8:24], packet[24:40]
    quoted = packet[:IPV6_MIN_MTU - 40 - 8]
    length = 8 + len(quoted)
    message = struct.pack("!BBHI", ICMPV6_PACKET_TOO_BIG, 0, 0, mtu) + quoted
    pseudo = destination + source + struct.pack("!I3xB", length, ICMPV6)  # RFC 8200 section 8.1
    message = message[:2] + internet_checksum(pseudo + message).to_bytes(2, "big") + message[4:]
    return _IPV6_HEADER.pack(6 << 28, length, ICMPV6, TTL, destination, source) + message


class TooBigAnswers:
    """Answers packets too big for the path, within RATE a second after a
    burst of BURST (a token bucket; a clock stepped back earns nothing)."""

    def __init__(self, now: float) -> None:
        self.tokens = BURST
        self.time = now

    def answer(self, packet: bytes, mtu: int, now: float) -> bytes | None:
        """``too_big(packet, mtu)`` if the rate allows it and the packet is one
        to answer, else None."""
        self.tokens = min(BURST, self.tokens + max(0.0, now - self.time) * RATE)
        self.time = now
        if self.tokens < 1:
            return None
        answer = too_big(packet, mtu)
        if answer is not None:
            self.tokens -= 1
        return answer
