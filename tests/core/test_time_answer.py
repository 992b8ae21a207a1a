"""Any client clock within 511 s works: the server answers an authentic datagram
outside the window with its time, and the client stamps in server time from then on."""

from __future__ import annotations

import pytest

from vpncrypt.core.client import ANSWER_WAIT
from vpncrypt.core.receive import TIME_ANSWER_INTERVAL
from vpncrypt.core.wire import HEADER, KIND_TIME_ANSWER, TIMESTAMP_BITS

from tests.builders import (
    A_ADDR, A_EP, NOW, SERVER_ADDR, SERVER_EP, ipv4_packet, make_client, make_server, keepalives, spec_vectors,
)

ELSEWHERE = ("198.51.100.9", 7777)


def answers_in(datagrams):
    return [(d, e) for d, e in datagrams if HEADER.unpack_from(d)[0] >> TIMESTAMP_BITS == KIND_TIME_ANSWER]


@pytest.mark.parametrize("offset", [-500, -200, 200, 500])
def test_a_client_whose_clock_is_off_is_heard_after_one_answer(offset):
    server, client = make_server(), make_client(now=NOW + offset)
    first = keepalives(client.handle_timer(NOW + 1 + offset))  # the keepalive at start, stamped by the wrong clock
    out = server.datagrams_received([(d, A_EP) for d, _ in first], NOW + 1)
    [(answer, to)] = answers_in(out.to_network)
    assert to == A_EP and len(answer) == 32 and server.peers[1].endpoint is None  # answered, not accepted
    assert server.drops["outside_time_window"] == 1 and server.peers[1].clock_offset == pytest.approx(offset, abs=1)
    assert server.peers[1].status()["clock_offset_at"] == NOW + 1  # when, by the server's clock
    client.datagrams_received([(answer, SERVER_EP)], NOW + 1.01 + offset)
    assert client.clock_offset == pytest.approx(-offset, abs=0.05)
    status = client.status()  # its offset, alone: not a server's per-peer fields beside it
    assert status["clock_offset"] == client.clock_offset
    assert not {"clock_offset", "clock_offset_at", "stale_drops"} & set(status["server"])
    # From now on both ways work.
    up = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR, b"up")], NOW + 2 + offset).to_network
    assert server.datagrams_received([(d, A_EP) for d, _ in up], NOW + 2).to_tun
    down = server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR, b"down")], NOW + 2).to_network
    assert client.datagrams_received([(d, SERVER_EP) for d, _ in down], NOW + 2 + offset).to_tun


def test_answers_are_rate_limited_per_client_and_garbage_earns_none():
    server, client = make_server(), make_client(now=NOW + 300)
    batch = [(d, A_EP) for d, _ in client.tun_packets_received(
        [ipv4_packet(A_ADDR, SERVER_ADDR, bytes([i])) for i in range(5)], NOW + 301).to_network]
    assert len(answers_in(server.datagrams_received(batch, NOW + 1).to_network)) == 1
    more = [(d, A_EP) for d, _ in client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 302).to_network]
    assert answers_in(server.datagrams_received(more, NOW + 1 + TIME_ANSWER_INTERVAL / 2).to_network) == []
    assert len(answers_in(server.datagrams_received(more, NOW + 1 + TIME_ANSWER_INTERVAL).to_network)) == 1
    # A forged datagram outside the window: authenticated once, never answered.
    forged = bytearray(more[0][0])
    forged[-1] ^= 1
    out = server.datagrams_received([(bytes(forged), ELSEWHERE)], NOW + 10)
    assert answers_in(out.to_network) == [] and server.drops["auth_failed"] == 1


def test_an_answer_replayed_late_tampered_or_for_another_datagram_changes_nothing():
    server, client = make_server(), make_client(now=NOW + 300)
    out = server.datagrams_received([(d, A_EP) for d, _ in client.handle_timer(NOW + 301)], NOW + 1)
    [(answer, _)] = answers_in(out.to_network)
    tampered = bytearray(answer)
    tampered[-1] ^= 1
    client.datagrams_received([(bytes(tampered), SERVER_EP)], NOW + 301)
    client.datagrams_received([(answer, SERVER_EP)], NOW + 301 + 6)  # echoes a datagram sent 6 s ago
    other_counter = answer[:4] + ((int.from_bytes(answer[4:8], "big") + 7) % 2**32).to_bytes(4, "big") + answer[8:]
    client.datagrams_received([(other_counter, SERVER_EP)], NOW + 301)
    assert client.clock_offset == 0.0 and client.drops["unexpected_time_answer"] == 3
    # The genuine one, in time, is taken.
    client.datagrams_received([(answer, SERVER_EP)], NOW + 301.5)
    assert client.clock_offset == pytest.approx(-300.5, abs=0.01)


def test_the_time_answer_vector_of_the_spec_is_opened_by_the_client():
    [vector] = [v for v in spec_vectors() if v["kind"] == "0x24"]
    from vpncrypt.core.client import ClientCore

    ts, counter, client_id = int(vector["timestamp"]), int(vector["counter"]), int(vector["client_id"])
    client = ClientCore(client_id, bytes.fromhex(vector["root_key"]), key_epoch=int(vector["root_epoch"]),
                        server_id=int(vector["server_id"]), server_endpoint=SERVER_EP, routes=[], now=ts - 1)
    client.server.counter = counter - 1  # so the keepalive below carries the vector's counter ...
    [(keepalive, _)] = keepalives(client.handle_timer(ts))  # ... and its timestamp
    assert HEADER.unpack_from(keepalive)[2] == counter
    client.datagrams_received([(bytes.fromhex(vector["datagram"]), SERVER_EP)], ts)
    assert client.clock_offset == pytest.approx(300.25, abs=1e-6)


def test_answers_keep_their_pace_through_a_step_of_the_server_clock():
    """The server's clock was 300 s ahead, answered a client, then NTP stepped it
    back: the client, stamping in the old server time, is answered again at once
    (the limit of one answer per TIME_ANSWER_INTERVAL is real time), not after 300 s."""
    server, client = make_server(now=NOW - 400), make_client(now=NOW - 300)  # a server up before, never heard from a
    first = keepalives(client.handle_timer(NOW - 299))
    [(answer, _)] = answers_in(server.datagrams_received([(d, A_EP) for d, _ in first], NOW + 1).to_network)
    client.datagrams_received([(answer, SERVER_EP)], NOW - 298.99)
    assert client.clock_offset == pytest.approx(300, abs=0.05)
    server.clock_stepped(-300)
    up = [(d, A_EP) for d, _ in client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW - 297).to_network]
    [(answer, _)] = answers_in(server.datagrams_received(up, NOW - 297).to_network)
    client.datagrams_received([(answer, SERVER_EP)], NOW - 296.99)
    assert client.clock_offset == pytest.approx(0, abs=0.05)
    up = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR, b"heard")], NOW - 296).to_network
    assert server.datagrams_received([(d, A_EP) for d, _ in up], NOW - 296).to_tun


def test_a_server_clock_stepped_back_past_stamps_it_accepted_refuses_them_until_it_passes_them():
    """docs/PROTOCOL.md 7.1: what a server accepted in the time it had before a
    step back stays accepted, so the client's stamps below it are refused (never
    a stamp twice, section 6) until the clock passes them: up to the step."""
    server, client = make_server(now=NOW - 400), make_client(now=NOW - 300)
    first = keepalives(client.handle_timer(NOW - 299))
    [(answer, _)] = answers_in(server.datagrams_received([(d, A_EP) for d, _ in first], NOW + 1).to_network)
    client.datagrams_received([(answer, SERVER_EP)], NOW - 298.99)
    up = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW - 298).to_network
    assert server.datagrams_received([(d, A_EP) for d, _ in up], NOW + 2).to_tun  # accepted at NOW + 2
    server.clock_stepped(-300)
    up = [(d, A_EP) for d, _ in client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW - 296).to_network]
    [(answer, _)] = answers_in(server.datagrams_received(up, NOW - 296).to_network)
    client.datagrams_received([(answer, SERVER_EP)], NOW - 295.99)
    for now in (NOW - 290, NOW - 5):  # the stamp accepted was NOW + 2
        up = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], now).to_network
        assert not server.datagrams_received([(d, A_EP) for d, _ in up], now).to_tun, now
        assert server.drops["superseded"] > 0
    up = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR, b"heard")], NOW + 3).to_network
    assert server.datagrams_received([(d, A_EP) for d, _ in up], NOW + 3).to_tun


def test_what_a_client_counts_of_an_answer_and_what_an_authentic_one_changes():
    """docs/PROTOCOL.md 7.1: the length is checked first (bad_length), then the
    client ID and the echoed send (unexpected_time_answer, never unknown_client).
    An authentic answer sets the offset from the client's own clock, replacing
    the last one, moves a floor the client's start gave to its start in the
    server's time, and is not heard: the replay window does not see it."""
    server, client = make_server(), make_client(now=NOW + 300)
    first = keepalives(client.handle_timer(NOW + 301))
    [(answer, _)] = answers_in(server.datagrams_received([(d, A_EP) for d, _ in first], NOW + 1).to_network)
    other_id = answer[:2] + (2).to_bytes(2, "big") + answer[4:]  # client 2 is the server's too
    for wrong in (answer[:-1], answer + b"\0", other_id):
        client.datagrams_received([(wrong, SERVER_EP)], NOW + 301)
    assert (client.drops["bad_length"], client.drops["unexpected_time_answer"], client.drops["unknown_client"]) == (
        2, 1, 0)
    window = client.server.window
    heard = (window.newest_ts, window.newest_counter)
    client.datagrams_received([(answer, SERVER_EP)], NOW + 301.25)
    assert client.clock_offset == pytest.approx(-300.25, abs=0.01)
    assert (window.newest_ts, window.newest_counter) == heard
    assert window.floor == int(NOW) + 0  # started at NOW + 300, which was NOW - 0.25 in the server's time
    # The server's clock now reads 200 s later than before (more than the time
    # window): the new answer replaces the offset (measured from this host's
    # clock), it does not add to it.
    up = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR)], NOW + 302).to_network
    [(answer, _)] = answers_in(server.datagrams_received([(d, A_EP) for d, _ in up], NOW + 202).to_network)
    client.datagrams_received([(answer, SERVER_EP)], NOW + 302)
    assert client.clock_offset == pytest.approx(-100, abs=0.01)
    assert (window.newest_ts, window.newest_counter) == heard
    assert window.floor == int(NOW) + 201  # NOW + 300 - 100, plus one


def test_the_floor_a_start_gave_moves_to_the_start_itself_in_the_server_time_not_its_second():
    """docs/PROTOCOL.md 7.1: floor(start + offset) + 1. A client that started
    half a second into a second, told it is 300.3 s ahead, started 0.2 s into
    the server's second: it must refuse that whole second, as its own start's
    floor did (rounding the start down first gave one second less)."""
    server, client = make_server(), make_client(now=NOW + 300.5)
    first = keepalives(client.handle_timer(NOW + 300.5))
    [(answer, _)] = answers_in(server.datagrams_received([(d, A_EP) for d, _ in first], NOW + 0.2).to_network)
    client.datagrams_received([(answer, SERVER_EP)], NOW + 300.5)
    assert client.clock_offset == pytest.approx(-300.3, abs=0.01)
    assert client.server.window.floor == int(NOW) + 1


def test_a_recorded_answer_is_refused_after_a_step_back_as_before_it():
    """A client remembers its sends ANSWER_WAIT seconds of real time: a step
    of its clock back must not make a recorded answer good for that much longer."""
    server, client = make_server(), make_client(now=NOW + 300)
    first = keepalives(client.handle_timer(NOW + 301))
    [(answer, _)] = answers_in(server.datagrams_received([(d, A_EP) for d, _ in first], NOW + 1).to_network)
    client.clock_stepped(-200)
    client.datagrams_received([(answer, SERVER_EP)], NOW + 101 + ANSWER_WAIT + 1)  # replayed 6 s later
    assert client.drops["unexpected_time_answer"] == 1 and client.clock_offset == 0
