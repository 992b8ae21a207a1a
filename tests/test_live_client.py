"""The running client's log, from its tick: a real client core and server core
exchange datagrams in this process, each with its own fake clock; no socket,
no device, no root."""

from __future__ import annotations

import logging
import types

import pytest

from vpncrypt.client import LiveClient

from tests.builders import A_EP, NOW, SERVER_EP, make_client, make_server

UNHEARD = "the server 192.0.2.1:51820 is not heard"


def run_for(seconds: int, clock_offset: float, caplog) -> list[logging.LogRecord]:
    """Client a, whose clock is ``clock_offset`` s from the server's, sends
    what its timer sends (keepalives, path MTU probes) to a server core that
    answers what it can open; the client's tick runs once a second."""
    server, client = make_server(), make_client(mtu=1420, now=NOW + clock_offset)
    daemon = types.SimpleNamespace(transport=types.SimpleNamespace(send_errors=0), tun_refused=0)
    config = types.SimpleNamespace(time_window=128)
    live = LiveClient(config, client, daemon, name="a", interface="vpncrypt0", clock=lambda: NOW + clock_offset)
    with caplog.at_level(logging.INFO, logger="vpncrypt"):
        for tenth in range(seconds * 10):  # bounded: a tenth of a second a step
            now = NOW + tenth / 10
            client_now = now + clock_offset
            if client.next_timer() <= client_now:
                for datagram, endpoint in client.handle_timer(client_now):
                    assert endpoint == SERVER_EP
                    for answer, _ in server.datagrams_received([(datagram, A_EP)], now).to_network:
                        client.datagrams_received([(answer, SERVER_EP)], client_now)
            if tenth % 10 == 0:
                daemon.tick(client_now)
    return [record for record in caplog.records if record.name.startswith("vpncrypt")]


def test_a_client_whose_clock_is_too_far_off_says_why_it_hears_nothing_once(caplog):
    records = run_for(40, 600.0, caplog)
    unheard = [record for record in records if UNHEARD in record.getMessage()]
    assert len(unheard) == 1 and unheard[0].levelno == logging.WARNING
    assert unheard[0].getMessage() == (
        "the server 192.0.2.1:51820 is not heard: no authentic datagram from it since this client started, its path"
        " MTU probes unanswered for 10 s. The likely causes: it is down or out of reach (stopped, a firewall, a wrong"
        " address or port); this client's key or server_id is not the one the server has (the server's log then says"
        " datagrams failed authentication); this machine's clock is more than 511 s from the server's, too far for"
        " the server to tell it the time: check NTP; or this client ran ahead of the server's clock before it was"
        " restarted, and the server refuses its stamps until its clock passes those of that run (the server counts"
        " them as superseded or counter_too_old: README, Clocks)")
    # Before it, the path MTU search's own line, which says nothing of why.
    assert [r.getMessage().split(";")[0] for r in records[:1]] == [
        "path MTU: no probe of even 1232 bytes was answered by the server"]


@pytest.mark.parametrize("clock_offset", [0.0, 300.0])
def test_a_client_its_server_hears_says_nothing_of_the_kind(caplog, clock_offset):
    """In step, or within 511 s (a time answer tells it the server's time)."""
    records = run_for(40, clock_offset, caplog)
    assert not [record for record in records if UNHEARD in record.getMessage()]
    assert any("path MTU: datagrams of" in record.getMessage() for record in records)
