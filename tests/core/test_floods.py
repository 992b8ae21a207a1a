"""Garbage stays cheap: refused before the cipher where the header says enough,
never cached, and a flood aimed at one client ID costs that client only."""

from __future__ import annotations

import os

from vpncrypt.core.peer import FAILURE_BURST, FAILURE_RATE, CipherBudget
from vpncrypt.core.wire import KIND_DATA, encode_header

from tests.builders import (
    A_ADDR, A_EP, B_EP, KEY_B, NOW, SERVER_ADDR, ipv4_packet, make_server, seal_from_a, sender,
)


def garbage(client_id: int, now: float, size: int = 100, counter: int = 1) -> bytes:
    """A datagram naming a real client and the current time, with a random body."""
    return encode_header(KIND_DATA, int(now), client_id, counter) + os.urandom(size)


def test_a_datagram_longer_than_the_mtu_is_refused_before_any_cipher_work():
    server = make_server(mtu=1420, cipher_budget=CipherBudget())
    [fits] = seal_from_a([ipv4_packet(A_ADDR, SERVER_ADDR, b"x" * (1420 - 20))])
    [too_long] = seal_from_a([ipv4_packet(A_ADDR, SERVER_ADDR, b"x" * (1421 - 20))])
    assert server.datagrams_received([(too_long, A_EP)], NOW + 5).to_tun == []
    assert server.drops["bad_length"] == 1 and server.cipher_budget.live == []
    assert server.datagrams_received([(fits, A_EP)], NOW + 5).to_tun


def test_garbage_never_makes_or_keeps_a_cipher_context():
    server = make_server(cipher_budget=CipherBudget(limit=2))
    [real] = seal_from_a([ipv4_packet(A_ADDR, SERVER_ADDR)])
    server.datagrams_received([(real, A_EP)], NOW + 5)
    kept = list(server.cipher_budget.live)
    flood = [(garbage(2, NOW + 5, counter=c), B_EP) for c in range(1, 40)]
    server.datagrams_received(flood, NOW + 5)
    assert server.cipher_budget.live == kept and server.peers[2].contexts == {}
    assert server.drops["auth_failed"] == 39 and server.peers[2].auth_failures == 39


def test_a_flood_at_one_client_id_costs_that_client_and_no_other():
    server = make_server()
    b = sender(client_id=2, key=KEY_B)
    flood = [(garbage(2, NOW + 5, counter=c), B_EP) for c in range(1, 1000)]
    server.datagrams_received(flood, NOW + 5)
    assert server.drops["auth_failed"] == FAILURE_BURST
    assert server.drops["auth_failures_limited"] == 999 - FAILURE_BURST
    # Client b's own datagram, in the same second, is refused unopened too ...
    [b_real] = b.seal(KIND_DATA, [ipv4_packet("203.0.113.3", SERVER_ADDR)], NOW + 5)
    assert server.datagrams_received([(b_real, B_EP)], NOW + 5).to_tun == []
    # ... while client a is not touched at all.
    [a_real] = seal_from_a([ipv4_packet(A_ADDR, SERVER_ADDR)])
    assert server.datagrams_received([(a_real, A_EP)], NOW + 5).to_tun
    # Once the flood stops, b is heard again within a second.
    [b_later] = b.seal(KIND_DATA, [ipv4_packet("203.0.113.3", SERVER_ADDR)], NOW + 5 + 1 / FAILURE_RATE)
    assert server.datagrams_received([(b_later, B_EP)], NOW + 5 + 1 / FAILURE_RATE).to_tun
