"""Inner packets: the prefix table that says which peer owns an address."""

from __future__ import annotations

import ipaddress

from vpncrypt.core.inner import REMEMBERED_ADDRESSES, PrefixTable


def test_prefix_table_answers_stay_right_when_remembered():
    table: PrefixTable[str] = PrefixTable()
    table.add(ipaddress.ip_network("203.0.113.0/24"), "tunnel")
    inside, outside = ipaddress.ip_address("203.0.113.77").packed, ipaddress.ip_address("198.51.100.1").packed
    assert [table.lookup(inside), table.lookup(outside)] * 2 == ["tunnel", None] * 2
    table.add(ipaddress.ip_network("203.0.113.64/26"), "narrower")  # a longer match now wins
    table.add(ipaddress.ip_network("198.51.100.0/24"), "other")
    assert [table.lookup(inside), table.lookup(outside)] == ["narrower", "other"]
    for host in range(2 * REMEMBERED_ADDRESSES):
        address = ipaddress.ip_address(int(ipaddress.ip_address("203.0.113.0")) + host % 256).packed
        assert table.lookup(address) == ("narrower" if 64 <= host % 256 < 128 else "tunnel")
        assert table.lookup((host).to_bytes(16, "big")) is None
    assert len(table._remembered) <= REMEMBERED_ADDRESSES  # bounded, whatever is looked up
