"""Events worth a log line, read off the core's per-peer state once a second.

Nothing here runs per packet: ``EventWatch.tick`` compares what each peer
shows now (when it was last heard, its endpoint, its counters) with what it
showed a second ago, and says what changed in words an operator can act on.
Every line is rate-limited per client and kind (``RATE_INTERVAL``), and the
lines that an outsider could provoke (forged datagrams failing
authentication, datagrams outside the time window) need a client ID from the
config, so the log rate is bounded by the config, never by an attacker.

The watch also keeps, per peer, the server's own time it was last heard
(``heard_at``): ``vpncrypt show`` reports "last datagram 12 seconds ago" from
it, by the server's clock and to the second.

Pure: time comes in as ``now``, lines go out as a list; the daemon logs them.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .core.receive import TIME_ANSWER_INTERVAL
from .core.wire import MAX_TIME_WINDOW

RATE_INTERVAL = 60.0  # at most one line per client and kind in this many seconds
# Silent: no datagram for three keepalive intervals (25 s by default). A
# client with keepalives off goes silent whenever it is idle.
SILENT_AFTER = 75.0
FLAP_WINDOW = 30.0  # seconds over which endpoint changes are counted ...
FLAP_MOVES = 3  # ... and this many, with a return to a place, mean a client alternates between places
AUTH_FAILURES_REPORTED = 5  # failed authentications for one client ID within RATE_INTERVAL
TIME_DROPS_REPORTED = 3  # datagrams outside the time window for one client ID within RATE_INTERVAL
CLOCK_OFF = 10  # seconds of clock offset worth a line
# A peer stamps by its clock, or at a floor above it (docs/PROTOCOL.md 4): stamps
# ahead of this host's clock that stay on one second for this long while new
# datagrams come are the floor's. A clock leaves a second within one, give or
# take the path's delay.
PINNED_AFTER = 5.0
STAMP_SLACK = 2  # seconds: stamps that rise by the time elapsed here, give or take this, follow a clock
SEND_ERRORS_REPORTED = 1
# A client's path MTU search probes its server every second while it hears
# nothing (core/pmtu.py ERROR): this long of that and it says why that may be.
# Longer than the second or two a restarted server refuses answers (docs/PROTOCOL.md 6.1).
UNHEARD_AFTER = 10.0

Formatter = Callable[[Any], "str | None"]
Line = tuple[int, str]  # (logging level, message)
INFO, WARNING = logging.INFO, logging.WARNING


def duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '2 h 5 min', '3 days': for silences and ages (at least '1 s')."""
    seconds = max(int(seconds), 1)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s" if seconds % 60 else f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days" if seconds >= 2 * 86400 else "1 day"


class RateLimiter:
    """At most one event per key each ``interval`` seconds; counts what it held back."""

    def __init__(self, interval: float = RATE_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[Any, float] = {}
        self.held: collections.Counter = collections.Counter()

    def allow(self, key: Any, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self.held[key] += 1
            return False
        self._last[key] = now
        return True

    def take_held(self, key: Any) -> int:
        """How many events of ``key`` were held back since the last one allowed."""
        return self.held.pop(key, 0)

    def forget(self, keep: Callable[[Any], bool]) -> None:
        for key in [k for k in self._last if not keep(k)]:
            del self._last[key]
            self.held.pop(key, None)


@dataclass
class _Seen:
    """What one peer showed at the last tick."""

    client_id: int
    since: str  # "since start", "since it was added" ...: for its first line
    endpoint: Any
    roams: int
    auth_since: float  # when auth_failures was last reported (or a trickle forgotten)
    time_since: float  # the same for time_drops
    made_at: float  # the tick that first saw the peer: its silence before it is heard counts from there
    auth_base: int = 0  # a new peer's counters start at 0
    time_base: int = 0
    stale_base: int = 0  # stale_drops when it was last heard (0: since the peer was made)
    heard: tuple[int, int] | None = None  # (newest timestamp, newest counter) accepted, None before any
    heard_at: float | None = None  # the server's time at the tick that first saw ``heard``
    stamp_since: float | None = None  # this host's time at the tick that first saw heard[0], the newest stamp
    silent: bool = False
    clock_reported: int | None = None  # the offset last logged, None while in step
    clock_named: bool = True  # whether that line named its clock (else its stamps, at a floor)
    answered_reported: int | None = None  # the time-answered offset last logged, None before any
    moves: collections.deque = field(default_factory=collections.deque)  # (time, count, from, to)


def _heard(peer: Any) -> tuple[int, int] | None:
    window = peer.window
    return (window.newest_ts, window.newest_counter) if window.newest_counter >= 0 else None


class EventWatch:
    """Per-peer state between ticks, and the lines the differences make.

    ``format_endpoint`` turns an endpoint into text; ``time_window`` is the
    daemon's, for the wording of clock lines. Peers are read through their
    public attributes (``client_id``, ``name``, ``endpoint``, ``window``,
    ``roams``, ``auth_failures``, ``time_drops``, ``stale_drops``,
    ``last_ts``); ``who``
    names one in a line (default: "client 'laptop' (ID 7)"); ``silent_after`` is infinite where
    the other end need not speak (a server does not answer keepalives);
    ``told_offset`` (a client's) gives the offset a time answer told this
    end (seconds, the server's clock minus this host's; 0.0 before any), so
    that a clock line says the tunnel works in the server's time rather
    than that datagrams are refused."""

    def __init__(self, format_endpoint: Formatter, now: float, *, time_window: int = 128,
                 silent_after: float = SILENT_AFTER, who: Callable[[Any], str] | None = None,
                 told_offset: Callable[[], float] = lambda: 0.0) -> None:
        self.format_endpoint = format_endpoint
        self.told_offset = told_offset
        self.who = who or (lambda peer: f"client {peer.name!r} (ID {peer.client_id})")
        self.time_window = time_window
        self.silent_after = silent_after
        self.limiter = RateLimiter()
        self._seen: dict[Any, _Seen] = {}  # by Peer object: a re-keyed client is a new one
        self._ticked = False
        self._send_errors: int | None = None
        self._send_errors_since = now
        self._tun_refused: int | None = None
        self._tun_refused_since = now

    def heard_at(self, peer: Any, now: float) -> float | None:
        """When ``peer``'s newest datagram came, by this end's clock (Unix
        seconds, to the tick): ``now`` if it came after the last tick."""
        heard = _heard(peer)
        if heard is None:
            return None
        seen = self._seen.get(peer)
        if seen is None or seen.heard != heard:
            return now
        return seen.heard_at

    def tick(self, now: float, peers: Iterable[Any], *, send_errors: int = 0, tun_refused: int = 0) -> list[Line]:
        """Compare each peer with the last tick; return the log lines due."""
        lines: list[Line] = []
        current: dict[Any, _Seen] = {}
        ids_before = {seen.client_id for seen in self._seen.values()}
        for peer in peers:
            seen = self._seen.get(peer)
            if seen is None:
                # New at this tick: at start, or added or changed by a reload.
                if not self._ticked:
                    since = "since start"
                elif peer.client_id in ids_before:
                    since = "since its key or addresses changed"
                else:
                    since = "since it was added"
                seen = _Seen(peer.client_id, since, peer.endpoint, peer.roams, now, now, now)
            current[peer] = seen
            self._check(peer, seen, now, lines)
        self._seen = current
        self._ticked = True
        self.limiter.forget(lambda key: key[0] is None or key[0] in current)
        lines += self._server_errors(now, send_errors, tun_refused)
        return lines

    def _allow(self, peer: Any, kind: str, now: float) -> bool:
        return self.limiter.allow((peer, kind), now)

    def _check(self, peer: Any, seen: _Seen, now: float, lines: list[Line]) -> None:
        who = self.who(peer)
        show = self.format_endpoint
        heard = _heard(peer)
        if heard is not None and heard != seen.heard:
            if seen.heard is None:
                if self._allow(peer, "first", now):
                    lines.append((INFO, f"{who} heard for the first time {seen.since}, from {show(peer.endpoint)}"))
            elif seen.silent and self._allow(peer, "back", now):
                lines.append((INFO, f"{who} heard again after {duration(now - (seen.heard_at or now))} of silence,"
                             f" from {show(peer.endpoint)}"))
            seen.silent = False
            before, since = (seen.heard[0], seen.stamp_since) if seen.heard is not None else (None, None)
            if heard[0] != before:
                seen.stamp_since = now
            seen.heard = heard
            seen.heard_at = now
            seen.stale_base = peer.stale_drops
            self._check_clock(peer, who, seen, heard[0], before, since, now, lines)
        elif not seen.silent:
            self._check_silence(peer, who, seen, now, lines)
        self._check_answered_clock(peer, who, seen, now, lines)
        self._check_moves(peer, who, seen, now, lines)
        self._check_failures(peer, who, seen, now, lines)

    def _check_silence(self, peer: Any, who: str, seen: _Seen, now: float, lines: list[Line]) -> None:
        """Nothing accepted for ``silent_after`` seconds, once: since it was
        last heard, or, for a peer never heard, since the tick that first saw
        it if its datagrams were refused meanwhile for their stamps
        (``stale_drops``: authentic ones refused as superseded or
        counter_too_old, one authenticated every TIME_ANSWER_INTERVAL at most;
        forgeries do not count); a configured client that sends nothing is no
        news. The refusals since it was last heard are named: it sends, and
        its stamps, not the network, are why it is not heard (a restart of
        either end: docs/PROTOCOL.md 6 and 6.1)."""
        refused = peer.stale_drops - seen.stale_base
        last = seen.heard_at if seen.heard_at is not None else seen.made_at
        if now - last < self.silent_after or seen.heard_at is None and not refused:
            return
        seen.silent = True
        if not self._allow(peer, "silent", now):
            return
        if seen.heard_at is None:
            what = f"{who} not heard {seen.since}: no datagram accepted for {duration(now - last)}"
        elif refused:
            what = (f"{who} silent: no datagram accepted for {duration(now - last)}"
                    f" (last from {self.format_endpoint(peer.endpoint)})")
        else:
            lines.append((WARNING, f"{who} silent: no datagram for {duration(now - last)}"
                          f" (last from {self.format_endpoint(peer.endpoint)})"))
            return
        lines.append((WARNING, f"{what}; it sends, but its datagrams are refused as superseded or counter too old"
                      f" ({refused} authenticated meanwhile, one every {TIME_ANSWER_INTERVAL:g} s at most): stamped at"
                      " or before what this host accepted from it before it or this host restarted, which its clock"
                      " has not reached yet (README, Clocks), or old datagrams replayed"))

    def _check_clock(self, peer: Any, who: str, seen: _Seen, newest_ts: int, before: int | None,
                     since: float | None, now: float, lines: list[Line]) -> None:
        """The newest timestamp against this host's clock: it was stamped at
        most a second before this tick saw it, and rounded down, so +1 centres
        it. ``before`` is the newest timestamp the tick before this one saw
        (None before any), first seen at ``since`` (this host's Unix seconds).

        A stamp is the sender's clock or a floor above it (docs/PROTOCOL.md 4:
        never older than its last, nor than the newest it heard, within its
        time window), and it may have waited in a queue (a server held up).
        A floor stays on one second while this host's clock moves on: a client
        whose clock is behind stamps at the last second it heard from this
        host, which falls behind the longer it is idle, and rises with this
        host's clock as its answers come (``peer.last_ts``, the newest second
        this host sent it). So a stamp names the sender's clock only once the
        stamps rise with this host's clock (from one tick that saw a new one to
        the next), and, behind, only above the newest second this host sent
        it. Stamps ahead that stay on one second for PINNED_AFTER seconds
        while new datagrams come are a floor: its clock may be right (it
        stamps at what it sent or heard before a clock was put back), and the
        line says so. Anything else (a single datagram, stamps behind on one second) says
        nothing. A clock a time answer told this end (``told_offset``, a
        client's) is that clock's word."""
        offset = int(newest_ts - now + 1)
        rising = (before is not None and since is not None and newest_ts > before
                  and abs(newest_ts - before - (now - since)) <= STAMP_SLACK
                  and (offset > 0 or newest_ts > peer.last_ts))
        if abs(offset) >= CLOCK_OFF:
            told = abs(offset - self.told_offset()) < CLOCK_OFF
            if told or rising:
                named = True
            elif offset > 0 and newest_ts == before and since is not None and now - since >= PINNED_AFTER:
                named = False
            else:
                return
            reported = seen.clock_reported
            if (reported is None or named != seen.clock_named or named and abs(offset - reported) >= CLOCK_OFF) \
                    and self._allow(peer, "clock", now):
                seen.clock_reported, seen.clock_named = offset, named
                if not named:
                    lines.append((WARNING, f"{who}: its stamps are about {offset} s ahead of this host's clock but"
                                  f" stay on one second (for {duration(now - since)}): it stamps at the newest second"
                                  " it sent or heard, not by its clock, which may be right, as it does once a clock"
                                  " that ran ahead was put back (README, Clocks); they rejoin this host's clock when"
                                  " it gets there"))
                    return
                if told:
                    why = "it told this host its time, which this host stamps in now: check NTP"
                else:
                    why = f"datagrams more than {self.time_window} s off are refused; check NTP"
                side = "ahead of" if offset > 0 else "behind"
                lines.append((WARNING, f"{who}: its clock is about {abs(offset)} s {side} this host's ({why})"))
        elif seen.clock_reported is not None and abs(offset) < CLOCK_OFF // 2:
            if self._allow(peer, "clock", now):
                seen.clock_reported = None
                if seen.clock_named and not rising:  # it answers a line that named the clock
                    lines.append((INFO, f"{who}: its stamps are in step again (its clock was put right, or it stamps"
                                  " at the newest second it heard)"))
                else:
                    what = "its clock is" if seen.clock_named else "its stamps are"
                    lines.append((INFO, f"{who}: {what} in step again"))

    def _check_answered_clock(self, peer: Any, who: str, seen: _Seen, now: float, lines: list[Line]) -> None:
        """The offset a time answer measured (``peer.clock_offset``: its stamp
        minus this host's clock, seconds; None before any answer, and on a
        client's peer, whose core keeps it elsewhere). A client told the time
        stamps in this host's time afterwards, so ``_check_clock`` cannot see
        its clock: this says it when an offset of CLOCK_OFF or more is first
        measured or moves by CLOCK_OFF, and when a later answer finds it in
        step, within the clock lines' rate limit.

        The answered datagram was refused for its stamp, which tells of its
        clock: one behind what was accepted before (superseded, counter too
        old) left the floor it stamped at, which never goes back, so it was
        stamped by its clock (docs/PROTOCOL.md 4); one outside the time window
        behind puts its clock at least that far behind; one outside it ahead
        is its clock, or a floor no more than the client's own time window
        above it (so its clock is ahead too, if by less, where both ends keep
        the same ``time_window``)."""
        offset = getattr(peer, "clock_offset", None)
        if offset is None:
            return
        rounded = round(offset)
        if abs(rounded) >= CLOCK_OFF:
            reported = seen.answered_reported
            if (reported is None or abs(rounded - reported) >= CLOCK_OFF) and self._allow(peer, "clock", now):
                seen.answered_reported = rounded
                seen.clock_reported = None  # its stamps are in step now: no "in step again" for them
                side = "ahead of" if rounded > 0 else "behind"
                lines.append((WARNING, f"{who}: its clock is about {abs(rounded)} s {side} this host's (measured"
                              " by a time answer; it stamps in this host's time now: check NTP)"))
        elif seen.answered_reported is not None and abs(rounded) < CLOCK_OFF // 2:
            if self._allow(peer, "clock", now):
                seen.answered_reported = None
                lines.append((INFO, f"{who}: its clock is in step again (measured by a time answer)"))

    def _check_moves(self, peer: Any, who: str, seen: _Seen, now: float, lines: list[Line]) -> None:
        show = self.format_endpoint
        moved = peer.roams - seen.roams
        old_endpoint = seen.endpoint
        seen.roams = peer.roams
        seen.endpoint = peer.endpoint
        if moved > 0:
            seen.moves.append((now, moved, show(old_endpoint), show(peer.endpoint)))
        while seen.moves and now - seen.moves[0][0] > FLAP_WINDOW:
            seen.moves.popleft()
        if moved <= 0:
            return
        recent = sum(count for _, count, _, _ in seen.moves)
        left = [before for _, _, before, _ in seen.moves]
        # Back where it was: within a second (two moves or more between ticks), or later.
        returned = any(count > 1 or after in left[:i] for i, (_, count, _, after) in enumerate(seen.moves))
        if recent >= FLAP_MOVES and returned:
            if self._allow(peer, "flap", now):
                places = []
                for _, _, before, after in seen.moves:
                    for place in (before, after):
                        if place is not None and place not in places:
                            places.append(place)
                # Seen once a second only: the other place may never have been caught.
                seen_at = " and ".join(places[:3])
                lines.append((WARNING, f"{who} moved {recent} times in {FLAP_WINDOW:.0f} s, back and forth"
                              f" (seen at {seen_at}): is its config in use on two machines at once? Each takes"
                              " the other's place, and most of their traffic is lost"))
            return
        if old_endpoint is not None and show(old_endpoint) != show(peer.endpoint) and self._allow(peer, "roam", now):
            held = self.limiter.take_held((peer, "roam"))
            more = f" ({held} more moves since the last line)" if held else ""
            lines.append((INFO, f"{who} roamed from {show(old_endpoint)} to {show(peer.endpoint)}{more}"))

    def _check_failures(self, peer: Any, who: str, seen: _Seen, now: float, lines: list[Line]) -> None:
        failed = peer.auth_failures - seen.auth_base
        if failed >= AUTH_FAILURES_REPORTED and self._allow(peer, "auth", now):
            lines.append((WARNING, f"{who}: {failed} datagrams failed authentication in the last"
                         f" {duration(now - seen.auth_since)} (a wrong key or server ID in its config is"
                         " the usual cause, a clock more than 511 s off another, as are forged datagrams)"))
            seen.auth_base, seen.auth_since = peer.auth_failures, now
        elif failed < AUTH_FAILURES_REPORTED and now - seen.auth_since >= RATE_INTERVAL:
            seen.auth_base, seen.auth_since = peer.auth_failures, now  # a trickle: forget it
        late = peer.time_drops - seen.time_base
        if late >= TIME_DROPS_REPORTED and self._allow(peer, "time", now):
            lines.append((WARNING, f"{who}: {late} datagrams in the last {duration(now - seen.time_since)}"
                          f" were stamped more than {self.time_window} s from this host's clock and refused"
                          " (a clock is off: check NTP; or they are old datagrams replayed)"))
            seen.time_base, seen.time_since = peer.time_drops, now
        elif late < TIME_DROPS_REPORTED and now - seen.time_since >= RATE_INTERVAL:
            seen.time_base, seen.time_since = peer.time_drops, now

    def _server_errors(self, now: float, send_errors: int, tun_refused: int) -> list[Line]:
        lines: list[Line] = []
        if self._send_errors is None:
            self._send_errors = send_errors
        if send_errors - self._send_errors >= SEND_ERRORS_REPORTED and self.limiter.allow((None, "send"), now):
            lines.append((WARNING, f"{send_errors - self._send_errors} datagrams could not be sent in the last"
                         f" {duration(now - self._send_errors_since)}: the kernel refused them"
                         " (full socket buffer, no route, or a firewall)"))
            self._send_errors, self._send_errors_since = send_errors, now
        if self._tun_refused is None:
            self._tun_refused = tun_refused
        if tun_refused - self._tun_refused >= 1 and self.limiter.allow((None, "tun"), now):
            lines.append((WARNING, f"{tun_refused - self._tun_refused} packets could not be written to the TUN"
                          f" device in the last {duration(now - self._tun_refused_since)}"
                          " (its queue was full, or it is down)"))
            self._tun_refused, self._tun_refused_since = tun_refused, now
        return lines


class UnheardServer:
    """A client's one line when its server does not answer it at all.

    A server cannot open the datagrams of a client whose key or server ID is
    not its own, or whose clock is more than MAX_TIME_WINDOW (511) s from its
    own (no time answer can be earned then: docs/PROTOCOL.md 7.1), so such a
    client hears nothing, as it does from a server that is down. ``tick``
    reads, once a second, whether an authentic datagram came (the server
    peer's replay window moved) and whether the path MTU search is in ERROR
    (its base probe, sent every second with no traffic needed, goes
    unanswered: the client is sending); after UNHEARD_AFTER seconds of
    that with nothing heard it returns one warning naming the likely causes,
    and once the server is heard again, one line saying so. Warnings come at
    most once a RATE_INTERVAL, whatever the server does."""

    def __init__(self, format_endpoint: Formatter, now: float) -> None:
        self.format_endpoint = format_endpoint
        self.limiter = RateLimiter()
        self._heard: tuple[int, int] | None = None
        self._heard_at: float | None = None  # the tick that last saw a new datagram; None before any
        self._started = now
        self._probing_since: float | None = None  # when the unanswered probing was first seen
        self._reported = False

    def tick(self, now: float, server: Any, probing_unanswered: bool) -> list[Line]:
        """``server`` the client's peer for its server (``window``,
        ``endpoint``); ``probing_unanswered`` whether the path MTU search is
        in ERROR. ``now`` in Unix seconds, as the daemon's tick gives it."""
        heard = _heard(server)
        if heard is not None and heard != self._heard:
            lines = []
            if self._reported:
                again = "is heard again, after" if self._heard_at is not None else "is heard, after"
                lines.append((INFO, f"the server {self.format_endpoint(server.endpoint)} {again}"
                              f" {duration(now - (self._heard_at or self._started))} without an authentic datagram"))
            self._heard, self._heard_at = heard, now
            self._probing_since, self._reported = None, False
            return lines
        if not probing_unanswered:
            self._probing_since = None
            return []
        if self._probing_since is None:
            self._probing_since = now
        if self._reported or now - self._probing_since < UNHEARD_AFTER or not self.limiter.allow("unheard", now):
            return []
        self._reported = True
        since = ("since this client started" if self._heard_at is None
                 else f"for {duration(now - self._heard_at)}")
        return [(WARNING, f"the server {self.format_endpoint(server.endpoint)} is not heard: no authentic datagram"
                 f" from it {since}, its path MTU probes unanswered for {duration(now - self._probing_since)}."
                 " The likely causes: it is down or out of reach (stopped, a firewall, a wrong address or port);"
                 " this client's key or server_id is not the one the server has (the server's log then says"
                 " datagrams failed authentication); this machine's clock is more than"
                 f" {MAX_TIME_WINDOW} s from the server's, too far for the server to tell it the time: check NTP;"
                 " or this client ran ahead of the server's clock before it was restarted, and the server refuses"
                 " its stamps until its clock passes those of that run (the server counts them as superseded or"
                 " counter_too_old: README, Clocks)")]
