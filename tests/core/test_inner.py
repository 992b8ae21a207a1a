"""Inner packets: the prefix table that says which peer owns an address."""

from __future__ import annotations

import ipaddress

from vpncrypt.core.inner import REMEMBERED_ADDRESSES, PartialChecksumPacket, PrefixTable


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


# --- partial checksums: what counts as a whole TCP/UDP segment -----------------------

def test_the_checksum_covers_the_segment_up_to_the_ip_length_not_padding_after_it():
    """Issue 10: bytes after the IP total length (link padding) are not summed."""
    from tests.builders import make_partial, tcp_checksum, tcp_packet
    from vpncrypt.core.inner import complete_checksum

    for v6 in (False, True):
        packet = tcp_packet(1000, b"payload!", v6=v6)
        finished = complete_checksum(make_partial(packet))
        field = (20 if not v6 else 40) + 16
        assert int.from_bytes(finished[field:field + 2], "big") == tcp_checksum(packet)
        padded = complete_checksum(PartialChecksumPacket(bytes(make_partial(packet)) + b"\x01\x02\x03"))
        assert padded[:len(packet)] == finished and padded[len(packet):] == b"\x01\x02\x03"


def test_fragments_short_headers_and_lying_lengths_have_no_checksum_location():
    from tests.builders import tcp_packet
    from vpncrypt.core.inner import checksum_location

    packet = bytearray(tcp_packet(1000, b"x" * 40))
    assert checksum_location(bytes(packet)) == (20, 16)
    for offset, value in ((6, b"\x20\x00"), (6, b"\x00\x05")):  # more fragments; a fragment offset
        fragment = bytearray(packet)
        fragment[offset:offset + 2] = value
        assert checksum_location(bytes(fragment)) is None
    short = bytearray(packet)
    short[0] = 0x44  # IHL 4: a header shorter than 20 bytes
    assert checksum_location(bytes(short)) is None
    longer = bytearray(packet)
    longer[2:4] = (len(packet) + 1).to_bytes(2, "big")  # claims more than is there
    assert checksum_location(bytes(longer)) is None
    assert checksum_location(bytes(packet[:30])) is None
