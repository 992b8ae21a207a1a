"""Clocks stepped forward and back, at either end: traffic flows again as soon as
the clocks agree, and time drops are counted as time drops (issue 10)."""

from __future__ import annotations

import os

import pytest

from vpncrypt.core.wire import KIND_DATA

from tests.builders import A_ADDR, A_EP, NOW, SERVER_ADDR, SERVER_EP, ipv4_packet, make_client, make_server, sender


def up(client, server, client_clock, server_clock):
    """One packet client -> server; True if delivered."""
    datagrams = client.tun_packets_received([ipv4_packet(A_ADDR, SERVER_ADDR, b"up")], client_clock).to_network
    return bool(server.datagrams_received([(d, A_EP) for d, _ in datagrams], server_clock).to_tun)


def down(client, server, client_clock, server_clock):
    datagrams = server.tun_packets_received([ipv4_packet(SERVER_ADDR, A_ADDR, b"down")], server_clock).to_network
    return bool(client.datagrams_received([(d, SERVER_EP) for d, _ in datagrams], client_clock).to_tun)


def connected():
    server, client = make_server(), make_client()
    assert up(client, server, NOW + 1, NOW + 1) and down(client, server, NOW + 1, NOW + 1)
    return server, client


@pytest.mark.parametrize("step", [3600, 600, 100, 5, -5, -100, -600, -3600])
@pytest.mark.parametrize("direction", [up, down])
@pytest.mark.parametrize("stepped", ["client", "server"])
def test_a_clock_stepped_for_a_while_then_corrected_works_again_at_once(step, direction, stepped):
    server, client = connected()
    for second in range(2, 12):  # ten seconds with one clock off by ``step``
        now = NOW + second
        client_clock = now + step if stepped == "client" else now
        server_clock = now + step if stepped == "server" else now
        direction(client, server, client_clock, server_clock)
    # Corrected: the very next packet each way goes through.
    assert up(client, server, NOW + 12, NOW + 12) and down(client, server, NOW + 12, NOW + 12)
    assert up(client, server, NOW + 13, NOW + 13) and down(client, server, NOW + 13, NOW + 13)


@pytest.mark.parametrize("step", [120, 60, -60, -120])
def test_a_step_inside_the_window_loses_nothing(step):
    server, client = connected()
    for second in range(2, 40):
        now = NOW + second
        client_clock = now + step if second < 20 else now
        assert up(client, server, client_clock, now)


@pytest.mark.parametrize("step", [129, 300, 511, -200, -300, -511])
def test_steps_within_the_rebuildable_range_are_time_drops_not_authentication_failures(step):
    server, client = connected()
    assert not up(client, server, NOW + 2 + step, NOW + 2)
    assert server.drops["outside_time_window"] == 1 and server.drops["auth_failed"] == 0
    assert server.peers[1].time_drops == 1


@pytest.mark.parametrize("step", [-10, -60, -120])
def test_one_forged_datagram_after_the_server_clock_stepped_back_shuts_no_client_out(step):
    server, client = connected()
    [forged] = sender(key=os.urandom(64)).seal(KIND_DATA, [ipv4_packet(A_ADDR, SERVER_ADDR, b"forged")], NOW + 2)
    server.datagrams_received([(forged, ("198.51.100.9", 9))], NOW + 2 + step)
    assert server.drops["auth_failed"] == 1
    assert up(client, server, NOW + 3, NOW + 3 + step)
    assert server.drops["auth_failures_limited"] == 0
