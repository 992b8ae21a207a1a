"""EventWatch: the log lines read off per-peer state once a second, each rate-limited."""

from __future__ import annotations

import logging

from vpncrypt.events import (
    AUTH_FAILURES_REPORTED, RATE_INTERVAL, SILENT_AFTER, UNHEARD_AFTER, EventWatch, RateLimiter, UnheardServer,
    duration,
)

from vpncrypt.core.wire import KIND_KEEPALIVE

from tests.builders import A_ADDR, A_EP, NOW, SERVER_ADDR, SERVER_EP, ipv4_packet, make_client, make_server, sender

T0 = 1_700_000_000.0


class Window:
    def __init__(self):
        self.newest_ts, self.newest_counter = 0, -1


class FakePeer:
    """What EventWatch reads of a Peer."""

    def __init__(self, client_id=1, name="laptop"):
        self.client_id, self.name = client_id, name
        self.window = Window()
        self.endpoint = None
        self.roams = self.auth_failures = self.time_drops = self.stale_drops = 0
        self.last_ts = 0  # the newest second this host sent it

    def heard(self, ts: float, endpoint="198.51.100.7:4000") -> None:
        """An authentic datagram stamped ``ts`` (the sender's clock) from ``endpoint``."""
        if self.endpoint is not None and endpoint != self.endpoint:
            self.roams += 1
        self.endpoint = endpoint
        self.window.newest_ts = int(ts)
        self.window.newest_counter += 1


def watch(**options) -> EventWatch:
    return EventWatch(lambda endpoint: endpoint, T0, **options)


def texts(lines):
    return [text for _, text in lines]


def test_first_datagram_roam_and_silence():
    events, peer = watch(), FakePeer()
    assert events.tick(T0 + 1, [peer]) == []  # configured, never heard: nothing to say
    assert events.heard_at(peer, T0 + 1) is None
    peer.heard(T0 + 1.5)
    assert events.heard_at(peer, T0 + 1.7) == T0 + 1.7  # heard since the last tick
    lines = events.tick(T0 + 2, [peer])
    assert lines == [(logging.INFO, "client 'laptop' (ID 1) heard for the first time since start, from 198.51.100.7:4000")]
    assert events.heard_at(peer, T0 + 5) == T0 + 2
    peer.heard(T0 + 3, "192.0.2.254:40001")
    assert texts(events.tick(T0 + 3, [peer])) == [
        "client 'laptop' (ID 1) roamed from 198.51.100.7:4000 to 192.0.2.254:40001"]
    assert events.tick(T0 + 3 + SILENT_AFTER - 1, [peer]) == []
    [(level, silent)] = events.tick(T0 + 3 + SILENT_AFTER, [peer])
    assert level == logging.WARNING and silent.startswith("client 'laptop' (ID 1) silent: no datagram for 1 min 15 s")
    assert events.tick(T0 + 200, [peer]) == []  # said once
    peer.heard(T0 + 300, "192.0.2.254:40001")
    assert texts(events.tick(T0 + 300, [peer])) == [
        "client 'laptop' (ID 1) heard again after 4 min 57 s of silence, from 192.0.2.254:40001"]


STALE_WHY = ("stamped at or before what this host accepted from it before it or this host restarted, which its"
             " clock has not reached yet (README, Clocks), or old datagrams replayed")


def refused(count: int) -> str:
    return (f"it sends, but its datagrams are refused as superseded or counter too old ({count} authenticated"
            f" meanwhile, one every 2 s at most): {STALE_WHY}")


def test_a_silent_client_whose_datagrams_are_refused_for_their_stamps_is_said_to_be():
    """Found by an operator: "silent" sent them to the network when the client
    was sending all along, refused as superseded (its stamps behind what the
    server had accepted). Refusals before it was last heard are not news."""
    events, peer = watch(), FakePeer()
    peer.stale_drops = 4  # before it was heard: a restart's second or two
    peer.heard(T0)
    events.tick(T0, [peer])
    for second in range(1, int(SILENT_AFTER)):
        peer.stale_drops += 1 if second % 2 else 0
        assert events.tick(T0 + second, [peer]) == []
    [(level, line)] = events.tick(T0 + SILENT_AFTER, [peer])
    assert level == logging.WARNING
    assert line == ("client 'laptop' (ID 1) silent: no datagram accepted for 1 min 15 s (last from 198.51.100.7:4000);"
                    f" {refused(37)}")
    quiet = FakePeer(2, "quiet")  # heard, then nothing at all: the line as it was
    quiet.stale_drops = 4
    quiet.heard(T0 + 100)
    events.tick(T0 + 100, [quiet])
    [(_, line)] = events.tick(T0 + 100 + SILENT_AFTER, [quiet])
    assert line == "client 'quiet' (ID 2) silent: no datagram for 1 min 15 s (last from 198.51.100.7:4000)"


def test_a_client_restarted_behind_its_stamps_is_said_to_be_refused_not_silent():
    """The real server core: a client heard, then restarted with its clock 100 s
    behind its last run's stamps (after it ran ahead) and sending every second."""
    server = make_server()
    events = EventWatch(str, NOW, time_window=128)
    [first] = sender(now=NOW).seal(KIND_KEEPALIVE, [b""], NOW + 101)
    server.datagrams_received([(first, A_EP)], NOW + 1)
    events.tick(NOW + 1.5, server.peers.values())
    restarted = sender(now=NOW + 1.6)
    said = []
    for second in range(2, 80):
        [keepalive] = restarted.seal(KIND_KEEPALIVE, [b""], NOW + second)
        server.datagrams_received([(keepalive, A_EP)], NOW + second)
        said += texts(events.tick(NOW + second + 0.5, server.peers.values()))
    assert said == [f"client 'a' (ID 1) silent: no datagram accepted for 1 min 15 s (last from {A_EP}); {refused(38)}"]


def test_a_client_refused_for_its_stamps_since_the_start_is_named_once():
    """After a restart of the server a client is refused until its stamps pass
    its restart bound (core/restart.py): one line if that lasts, and nothing
    for a configured client that sends nothing."""
    events, stale, away = watch(), FakePeer(1, "refused"), FakePeer(2, "away")
    said = []
    for second in range(0, 200):
        said += texts(events.tick(T0 + second, [stale, away]))
        stale.stale_drops += 1
    assert said == [f"client 'refused' (ID 1) not heard since start: no datagram accepted for 1 min 15 s; {refused(75)}"]
    stale.heard(T0 + 200)
    assert texts(events.tick(T0 + 200, [stale, away])) == [
        "client 'refused' (ID 1) heard for the first time since start, from 198.51.100.7:4000"]


def test_roams_are_rate_limited_and_the_held_ones_counted():
    events, peer = watch(), FakePeer()
    peer.heard(T0)
    events.tick(T0, [peer])
    now = T0
    said = []
    for i in range(1, 4):  # a move every 20 s, each to a new place: three in the first minute, no flapping
        now = T0 + 20 * i
        peer.heard(now, f"192.0.2.{i}:1")
        said += texts(events.tick(now, [peer]))
    assert said == ["client 'laptop' (ID 1) roamed from 198.51.100.7:4000 to 192.0.2.1:1"]
    peer.heard(T0 + 90, "192.0.2.9:1")
    assert texts(events.tick(T0 + 90, [peer])) == [
        "client 'laptop' (ID 1) roamed from 192.0.2.3:1 to 192.0.2.9:1 (2 more moves since the last line)"]


def test_a_config_on_two_machines_is_named_once():
    events, peer = watch(), FakePeer()
    peer.heard(T0, "192.0.2.1:1")
    events.tick(T0, [peer])
    said = []
    for second in range(1, 40):  # both machines send every second; the server sees them alternate
        for endpoint in ("192.0.2.2:2", "192.0.2.1:1"):
            peer.heard(T0 + second, endpoint)
        if second % 2:
            peer.heard(T0 + second, "192.0.2.2:2")
        said += texts(events.tick(T0 + second, [peer]))
    flapping = [line for line in said if "two machines" in line]
    assert len(flapping) == 1 and "back and forth (seen at 192.0.2.1:1 and 192.0.2.2:2)" in flapping[0]
    assert len(said) == 1  # no roam lines besides


def test_authentication_failures_in_numbers_are_named_and_a_trickle_is_not():
    events, peer = watch(), FakePeer(7, "phone")
    events.tick(T0, [peer])
    peer.auth_failures = AUTH_FAILURES_REPORTED - 1
    assert events.tick(T0 + 1, [peer]) == []
    assert events.tick(T0 + RATE_INTERVAL + 1, [peer]) == []  # a trickle, forgotten after a minute
    peer.auth_failures += AUTH_FAILURES_REPORTED - 1
    assert events.tick(T0 + RATE_INTERVAL + 2, [peer]) == []
    peer.auth_failures += 50
    [(level, line)] = events.tick(T0 + RATE_INTERVAL + 3, [peer])
    assert level == logging.WARNING
    assert line.startswith("client 'phone' (ID 7): 54 datagrams failed authentication in the last 2 s")
    assert "wrong key or server ID" in line and "a clock more than 511 s off" in line
    peer.auth_failures += 500  # an attacker forging for this ID: still one line a minute
    assert events.tick(T0 + RATE_INTERVAL + 30, [peer]) == []
    [(_, line)] = events.tick(T0 + 2 * RATE_INTERVAL + 3, [peer])
    assert "500 datagrams failed authentication in the last 1 min" in line


def test_time_window_drops_and_a_clock_ahead_are_named():
    events, peer = watch(time_window=128), FakePeer(3, "skewed")
    events.tick(T0, [peer])
    peer.time_drops = 12
    [(_, line)] = events.tick(T0 + 1, [peer])
    assert line.startswith("client 'skewed' (ID 3): 12 datagrams in the last 1 s were stamped more than 128 s")
    peer.heard(T0 + 1.5 + 42)  # in the window, 42 s ahead
    lines = texts(events.tick(T0 + 2, [peer]))
    assert lines == ["client 'skewed' (ID 3) heard for the first time since start, from 198.51.100.7:4000"]
    peer.heard(T0 + 2.5 + 42)  # its stamps move on with this host's clock: they are its clock
    assert texts(events.tick(T0 + 3, [peer])) == [
        "client 'skewed' (ID 3): its clock is about 42 s ahead of this host's"
        " (datagrams more than 128 s off are refused; check NTP)"]
    peer.heard(T0 + 3.5 + 43)
    assert events.tick(T0 + 4, [peer]) == []  # the same offset: said once
    peer.heard(T0 + 120 - 30)
    assert events.tick(T0 + 120, [peer]) == []  # one stamp behind: a floor, or a queue, as well as a clock
    peer.heard(T0 + 130 - 30)
    assert texts(events.tick(T0 + 130, [peer])) == [
        "client 'skewed' (ID 3): its clock is about 29 s behind this host's"
        " (datagrams more than 128 s off are refused; check NTP)"]
    peer.heard(T0 + 200)  # put right: a jump, so it is the stamps that are seen in step
    assert texts(events.tick(T0 + 200, [peer])) == [
        "client 'skewed' (ID 3): its stamps are in step again (its clock was put right, or it stamps at the newest"
        " second it heard)"]


def test_stamps_that_stay_on_one_second_are_named_as_stamps_not_as_its_clock():
    """Found by an operator: a client whose clock was right was said to be
    60 s ahead. It stamped at the newest second it had heard (docs/PROTOCOL.md
    4), which stays put while the clocks move on; only stamps that move with
    a clock tell of one."""
    events, peer = watch(), FakePeer()
    events.tick(T0, [peer])
    said = []
    for second in range(1, 70):
        peer.heard(T0 + 60 if second < 61 else T0 + second)  # a datagram a second, at one stamp until the clock gets there
        said += texts(events.tick(T0 + second, [peer]))
    assert not any("its clock is" in line for line in said)
    assert said[1:] == [
        "client 'laptop' (ID 1): its stamps are about 55 s ahead of this host's clock but stay on one second (for"
        " 5 s): it stamps at the newest second it sent or heard, not by its clock, which may be right, as it does once"
        " a clock that ran ahead was put back (README, Clocks); they rejoin this host's clock when it gets there",
        "client 'laptop' (ID 1): its stamps are in step again"]


def test_a_clock_ahead_or_behind_is_named_once_its_stamps_move_with_it():
    """A stamp may be a floor above its sender's clock (one ahead), the last
    second it heard while it idles (one behind, falling further), or have
    waited in a queue: the line waits for the next stamp to move on with this
    host's clock."""
    events, behind, ahead = watch(), FakePeer(1, "slow"), FakePeer(2, "fast")
    behind.heard(T0 - 30)
    ahead.heard(T0 + 30)
    lines = texts(events.tick(T0 + 0.5, [behind, ahead]))
    assert not [line for line in lines if "clock" in line]
    ahead.heard(T0 + 30)  # the same second, within a second: nothing known yet
    assert events.tick(T0 + 1, [behind, ahead]) == []
    behind.heard(T0 - 20)
    ahead.heard(T0 + 40)  # ten seconds on, ten seconds later
    assert texts(events.tick(T0 + 10.5, [behind, ahead])) == [
        "client 'slow' (ID 1): its clock is about 29 s behind this host's (datagrams more than 128 s off are refused;"
        " check NTP)",
        "client 'fast' (ID 2): its clock is about 30 s ahead of this host's (datagrams more than 128 s off are"
        " refused; check NTP)"]
    jumpy = FakePeer(3, "jumpy")
    jumpy.heard(T0 + 30)
    events.tick(T0 + 11, [jumpy])
    jumpy.heard(T0 + 100)  # a jump no clock makes in 2 s (a floor moved): nothing said of it
    assert events.tick(T0 + 13, [jumpy]) == []


def test_an_idle_client_behind_is_named_by_its_clock_not_by_the_second_it_last_heard():
    """Found by a new user: a client 60 s behind stamps at the last second it
    heard from the server while it idles (its keepalives 25 s apart), which
    falls behind by as long as it idles: "about 25 s behind" was logged of a
    clock 60 s behind. Then a server held up 50 s reads a queued keepalive:
    a stamp behind again, and no clock of it. Only stamps that move on with
    the server's clock name one."""
    events, peer = watch(), FakePeer()
    said = []
    for at, stamp in ((0, 0), (25, 0), (50, 0), (75, 15), (100, 40), (125, 65)):  # its clock reaches the floor at 60
        peer.heard(T0 + stamp)
        said += texts(events.tick(T0 + at + 0.5, [peer]))
    assert [line for line in said if "clock" in line] == [
        "client 'laptop' (ID 1): its clock is about 59 s behind this host's (datagrams more than 128 s off are"
        " refused; check NTP)"]
    held, late = watch(), FakePeer(2, "queued")
    held.tick(T0, [late])
    late.heard(T0)
    held.tick(T0 + 0.5, [late])
    late.heard(T0 + 31)  # sent at T0 + 31, read when the server runs again at T0 + 50
    assert [line for line in texts(held.tick(T0 + 50, [late])) if "clock" in line] == []


def test_a_client_behind_pinging_now_and_then_is_not_named_by_the_answers_it_stamps_at():
    """Found by a new user: a client 60 s behind, pinging every 19 s, stamps
    each ping at the second of the answer to the last one (the newest it
    heard), which rises with the server's clock, 19 s behind it: 'about 18 s
    behind' was logged. A stamp behind at or below the newest second the
    server sent it may be that floor; above it, it is the clock."""
    events, peer = watch(), FakePeer()
    said = []
    for at in range(0, 200, 19):
        peer.heard(T0 + at - 19 if at else T0 - 60)  # stamped at the last answer
        peer.last_ts = int(T0 + at)  # the server answers at once
        said += texts(events.tick(T0 + at + 0.5, [peer]))
    assert [line for line in said if "clock" in line] == []
    for at in range(200, 300, 10):  # no answers: it stamps by its clock once that passes the last one
        peer.heard(max(T0 + at - 60, peer.last_ts))
        said += texts(events.tick(T0 + at + 0.5, [peer]))
    assert [line for line in said if "clock" in line] == [
        "client 'laptop' (ID 1): its clock is about 59 s behind this host's (datagrams more than 128 s off are"
        " refused; check NTP)"]


def test_a_client_put_right_after_its_clock_ran_ahead_is_not_said_to_be_ahead():
    """The real cores: a client's clock 100 s ahead for 10 s, then put right.
    The server and the client stamp at the newest second each heard until the
    server's clock gets there, and the line says that of its stamps."""
    server, client = make_server(), make_client()
    events = EventWatch(str, NOW, time_window=128)
    said = []
    for second in range(1, 130):
        client_clock = NOW + second + (100 if second <= 10 else 0)
        up = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR, b"up")], client_clock).to_network
        assert server.datagrams_received([(d, A_EP) for d, _ in up], NOW + second).to_tun  # never refused
        down = server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR, b"down")], NOW + second).to_network
        client.datagrams_received([(d, SERVER_EP) for d, _ in down], client_clock)
        said += [(second, line) for line in texts(events.tick(NOW + second + 0.5, server.peers.values()))
                 if "clock" in line or "stamps" in line]
    assert not any("its clock is" in line for second, line in said if second > 10)
    assert [second for second, _ in said] == [2, 62, 122]  # a minute apart at least
    assert said[0][1] == ("client 'a' (ID 1): its clock is about 100 s ahead of this host's (datagrams more than 128 s"
                          " off are refused; check NTP)")
    # Held by the minute between two clock lines, then said of its stamps, which never moved after the step.
    assert said[1][1].startswith("client 'a' (ID 1): its stamps are about 48 s ahead of this host's clock but stay"
                                 " on one second (for 52 s)")
    assert said[2][1] == "client 'a' (ID 1): its stamps are in step again"


def test_a_clock_measured_by_a_time_answer_is_named_once_and_again_when_it_moves():
    """A client told the server's time stamps in it: only ``clock_offset``
    (core/server.py, _time_answers) shows how far off its own clock is."""
    events, peer = watch(time_window=128), FakePeer(3, "skewed")
    peer.clock_offset = None
    events.tick(T0, [peer])
    peer.clock_offset = 299.6  # answered; its next datagrams are stamped in step
    peer.heard(T0 + 1)
    lines = events.tick(T0 + 1, [peer])
    assert lines[1] == (logging.WARNING, "client 'skewed' (ID 3): its clock is about 300 s ahead of this host's"
                                         " (measured by a time answer; it stamps in this host's time now: check NTP)")
    for second in range(2, 200):  # in step by its stamps, the same offset: said once
        peer.heard(T0 + second)
        assert events.tick(T0 + second, [peer]) == []
    peer.clock_offset = 305.0  # a few seconds of drift: not news
    assert events.tick(T0 + 200, [peer]) == []
    peer.clock_offset = -42.2  # stepped back, answered again
    assert texts(events.tick(T0 + 201, [peer])) == [
        "client 'skewed' (ID 3): its clock is about 42 s behind this host's (measured by a time answer; it stamps"
        " in this host's time now: check NTP)"]
    peer.clock_offset = -120.0  # within a minute of the last clock line: held, then said
    assert events.tick(T0 + 230, [peer]) == []
    assert texts(events.tick(T0 + 201 + RATE_INTERVAL, [peer]))[0].startswith(
        "client 'skewed' (ID 3): its clock is about 120 s behind")
    peer.clock_offset = 1.0
    peer.heard(T0 + 400)
    assert texts(events.tick(T0 + 400, [peer])) == [
        "client 'skewed' (ID 3): its clock is in step again (measured by a time answer)"]
    peer.heard(T0 + 460)
    assert events.tick(T0 + 460, [peer]) == []


def test_a_small_offset_a_time_answer_measured_is_no_news():
    """A restarted client stamping a second behind its predecessor earns a time
    answer too (core/receive.py): an offset under CLOCK_OFF is not worth a line."""
    events, peer = watch(), FakePeer()
    peer.clock_offset = -3.0
    peer.heard(T0)
    assert texts(events.tick(T0, [peer])) == ["client 'laptop' (ID 1) heard for the first time since start,"
                                              " from 198.51.100.7:4000"]


def test_send_errors_and_tun_refusals_are_summed_into_one_line_a_minute():
    events, peer = watch(), FakePeer()
    assert events.tick(T0, [peer], send_errors=5) == []  # before start: not news
    assert texts(events.tick(T0 + 1, [peer], send_errors=8)) == [
        "3 datagrams could not be sent in the last 1 s: the kernel refused them"
        " (full socket buffer, no route, or a firewall)"]
    assert events.tick(T0 + 2, [peer], send_errors=100) == []
    assert texts(events.tick(T0 + 61, [peer], send_errors=100))[0].startswith(
        "92 datagrams could not be sent in the last 1 min")
    assert texts(events.tick(T0 + 62, [peer], tun_refused=4, send_errors=100))[0].startswith(
        "4 packets could not be written to the TUN device")


def test_a_client_changed_by_a_reload_starts_again_and_a_removed_one_is_forgotten():
    events, old = watch(), FakePeer(1, "a")
    other = FakePeer(2, "b")
    old.heard(T0)
    other.heard(T0)
    events.tick(T0, [old, other])
    rekeyed, added = FakePeer(1, "a"), FakePeer(3, "c")
    rekeyed.heard(T0 + 5)
    added.heard(T0 + 5)
    assert texts(events.tick(T0 + 5, [rekeyed, other, added])) == [
        "client 'a' (ID 1) heard for the first time since its key or addresses changed, from 198.51.100.7:4000",
        "client 'c' (ID 3) heard for the first time since it was added, from 198.51.100.7:4000",
    ]
    events.tick(T0 + 6, [other])
    assert list(events._seen) == [other]


def test_the_peers_own_name_is_used_as_given():
    events = watch(who=lambda peer: "the server", silent_after=float("inf"))
    peer = FakePeer(1, "server")
    peer.heard(T0)
    assert texts(events.tick(T0, [peer])) == ["the server heard for the first time since start, from 198.51.100.7:4000"]
    assert events.tick(T0 + 10_000, [peer]) == []  # never silent


def test_rate_limiter_and_durations():
    limiter = RateLimiter(60)
    assert limiter.allow("k", 0) and not limiter.allow("k", 59) and not limiter.allow("k", 30)
    assert limiter.take_held("k") == 2 and limiter.take_held("k") == 0
    assert limiter.allow("k", 60) and limiter.allow("other", 60)
    assert [duration(s) for s in (0.2, 5, 60, 75, 3600, 3725, 86400, 200000)] == [
        "1 s", "5 s", "1 min", "1 min 15 s", "1 h 0 min", "1 h 2 min", "1 day", "2 days"]


def test_moving_on_to_new_places_is_roaming_not_flapping():
    events, peer = watch(), FakePeer()
    peer.heard(T0, "192.0.2.1:1")
    events.tick(T0, [peer])
    said = []
    for i in range(2, 8):  # a new place every 2 s (a train), never back
        peer.heard(T0 + 2 * i, f"192.0.2.{i}:1")
        said += texts(events.tick(T0 + 2 * i, [peer]))
    assert not any("two machines" in line for line in said)
    peer.heard(T0 + 20, "192.0.2.3:1")  # back to a place it was at: now it alternates
    assert "two machines" in texts(events.tick(T0 + 20, [peer]))[0]


def test_a_client_told_the_servers_time_does_not_say_its_datagrams_are_refused():
    """The client's clock 300 s ahead: a time answer told it the server's
    time, so the tunnel works and the line says so; before the answer, or
    for an offset the answer does not explain, it says they are refused."""
    told = [0.0]
    events, peer = watch(time_window=128, told_offset=lambda: told[0]), FakePeer()
    events.tick(T0, [peer])
    told[0] = -300.0
    peer.heard(T0 + 0.5 - 300)
    assert texts(events.tick(T0 + 1, [peer]))[1] == (
        "client 'laptop' (ID 1): its clock is about 300 s behind this host's"
        " (it told this host its time, which this host stamps in now: check NTP)")
    told[0] = 0.0
    peer.heard(T0 + 100 - 200)
    assert events.tick(T0 + 100, [peer]) == []  # one stamp behind that no answer explains: nothing known yet
    peer.heard(T0 + 110 - 200)
    assert texts(events.tick(T0 + 110, [peer])) == [
        "client 'laptop' (ID 1): its clock is about 199 s behind this host's"
        " (datagrams more than 128 s off are refused; check NTP)"]


def test_a_client_says_once_why_its_server_may_not_hear_it_and_when_it_does_again():
    unheard, server = UnheardServer(lambda endpoint: endpoint, T0), FakePeer(name="server")
    server.endpoint = "192.0.2.1:51820"
    assert unheard.tick(T0 + 1, server, False) == []  # not probing (yet): nothing to say
    assert all(unheard.tick(T0 + t, server, True) == [] for t in range(2, 2 + int(UNHEARD_AFTER)))
    [(level, line)] = unheard.tick(T0 + 2 + UNHEARD_AFTER, server, True)
    assert level == logging.WARNING
    assert line.startswith("the server 192.0.2.1:51820 is not heard: no authentic datagram from it since this"
                           " client started, its path MTU probes unanswered for 10 s. The likely causes: it is down")
    assert "more than 511 s from the server's, too far for the server to tell it the time: check NTP;" in line
    assert line.endswith("the server refuses its stamps until its clock passes those of that run (the server counts"
                         " them as superseded or counter_too_old: README, Clocks)")
    assert all(unheard.tick(T0 + t, server, True) == [] for t in range(13, 300))  # once, however long it lasts
    server.heard(T0 + 300, "192.0.2.1:51820")
    assert texts(unheard.tick(T0 + 300, server, False)) == [
        "the server 192.0.2.1:51820 is heard, after 5 min without an authentic datagram"]  # never before: not again
    # Heard, then not: the line says for how long; a short spell of probing says nothing.
    assert unheard.tick(T0 + 301, server, True) == [] and unheard.tick(T0 + 305, server, False) == []
    assert unheard.tick(T0 + 306, server, True) == []
    assert unheard.tick(T0 + 306 + UNHEARD_AFTER - 1, server, True) == []
    assert texts(unheard.tick(T0 + 306 + UNHEARD_AFTER, server, True))[0].startswith(
        "the server 192.0.2.1:51820 is not heard: no authentic datagram from it for 16 s, its path MTU probes"
        " unanswered for 10 s.")
    # Heard and lost again at once: at most one warning a RATE_INTERVAL.
    server.heard(T0 + 320, "192.0.2.1:51820")
    assert texts(unheard.tick(T0 + 320, server, False)) == [
        "the server 192.0.2.1:51820 is heard again, after 20 s without an authentic datagram"]
    assert all(unheard.tick(T0 + t, server, True) == [] for t in range(321, 316 + int(RATE_INTERVAL)))
    assert len(unheard.tick(T0 + 316 + RATE_INTERVAL, server, True)) == 1


def test_a_server_heard_without_a_warning_first_is_no_news():
    unheard, server = UnheardServer(lambda endpoint: endpoint, T0), FakePeer(name="server")
    assert unheard.tick(T0 + 1, server, True) == []
    server.heard(T0 + 2, "192.0.2.1:51820")
    assert unheard.tick(T0 + 2, server, False) == [] and unheard.tick(T0 + 2 + UNHEARD_AFTER, server, True) == []
