"""A server config of 65,536 clients loads in about a second (bench/scale_bench.py
measures it): overlaps found by sorting, not pair by pair; keygen's [[client]]
tables read without tomllib when they have its form; the next free address
found in one pass. Each fast way is held to the slow one it replaces."""

from __future__ import annotations

import ipaddress
import os
import random
import re
import sys
import tomllib
from pathlib import Path

import pytest

from vpncrypt.cli.keygen import free_address
from vpncrypt.config import ConfigError, _check_overlaps, load_server_config, parse_toml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import scale_bench  # noqa: E402


def random_network(rng: random.Random) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if rng.random() < 0.5:
        return ipaddress.ip_network((0x0A000000 + rng.randrange(256), rng.randint(24, 32)), strict=False)
    return ipaddress.ip_network((0x20010DB8 << 96) + rng.randrange(256), strict=False).supernet(rng.randint(0, 8))


def overlapping_pairs(owners) -> set:
    return {(i, j) for i, (a, _) in enumerate(owners) for j, (b, _) in enumerate(owners[:i])
            if a.version == b.version and a.overlaps(b)}


def test_overlaps_are_found_exactly_when_two_networks_share_an_address():
    rng = random.Random(7)
    for _ in range(2000):
        owners = [(random_network(rng), f"client {k}") for k in range(rng.randint(1, 8))]
        pairs = overlapping_pairs(owners)
        if not pairs:
            _check_overlaps(Path("s.toml"), owners)
            continue
        with pytest.raises(ConfigError, match="overlaps") as caught:
            _check_overlaps(Path("s.toml"), owners)
        later, earlier = re.search(r"of client (\d+) overlaps \S+ of client (\d+)$", str(caught.value)).groups()
        assert (int(later), int(earlier)) in pairs  # a real pair, the later one named first


PLAIN = """[server]
server_id = 9  # a comment
tunnel = [
    "203.0.113.1/24",
]

# the first client
[[client]]
name = "a #1"
client_id = 3
addresses = ["203.0.113.2/32", "2001:db8::2/128",]

[[ client ]]   # the second
name = "b"
client_id = 0
addresses = []
[retired]
client_ids = [1]
"""


@pytest.mark.parametrize("text", [
    PLAIN,
    PLAIN.replace('name = "b"', 'name = "b\\u00e9"'),  # an escape: tomllib reads it
    PLAIN.replace('client_id = 0', 'client_id = 0x10'),
    PLAIN.replace('name = "b"', "name = 'b'"),
    PLAIN.replace('addresses = []', 'addresses = [\n  "203.0.113.9/32",\n]'),
    PLAIN.replace('[retired]', '[client.extra]\nx = 1\n[retired]'),
    PLAIN.replace('client_id = 0', 'client_id = 0\nkey = "old"'),
    PLAIN + '[[client]]\nname = "c"\n',
])
def test_the_fast_reading_gives_what_tomllib_gives(text):
    try:
        expected = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        with pytest.raises(tomllib.TOMLDecodeError, match=str(error).replace("(", r"\(").replace(")", r"\)")):
            parse_toml(text)
        return
    assert parse_toml(text) == expected


@pytest.mark.parametrize("broken", [
    PLAIN.replace('client_id = 0', 'client_id = 0\nclient_id = 1'),  # a key twice
    PLAIN.replace('[[ client ]]', '[[client]'),
    PLAIN.replace('name = "b"', 'name = "b'),
    PLAIN.replace('[retired]', '[server]'),
])
def test_a_broken_file_gets_tomllibs_own_error(broken):
    with pytest.raises(tomllib.TOMLDecodeError) as expected:
        tomllib.loads(broken)
    with pytest.raises(tomllib.TOMLDecodeError) as got:
        parse_toml(broken)
    assert str(got.value) == str(expected.value)


def reference_free_address(network, taken):
    for host in network.hosts():
        if not any(host in used for used in taken):
            return host
    return None


def test_the_next_free_address_is_the_lowest_host_no_one_has():
    rng = random.Random(3)
    for _ in range(1500):
        network = rng.choice([ipaddress.ip_network(f"203.0.113.0/{rng.randint(26, 31)}"),
                              ipaddress.ip_network(f"2001:db8::/{rng.randint(122, 127)}")])
        taken = [ipaddress.ip_network((int(network.network_address) + rng.randrange(network.num_addresses),
                                       rng.randint(network.prefixlen - 1, network.max_prefixlen)), strict=False)
                 for _ in range(rng.randint(0, 10))]
        expected = reference_free_address(network, taken)
        if expected is None:
            with pytest.raises(ConfigError, match="no free address"):
                free_address(network, taken)
        else:
            assert free_address(network, taken) == expected


def test_65536_clients_load_and_their_overlaps_are_found(tmp_path):
    """How long it takes is bench/scale_bench.py's (the goal: under 2 s), not a
    test's; a pairwise check (about an hour) would run this suite out of time."""
    directory = tmp_path / "etc"
    directory.mkdir(mode=0o700)
    keys = [os.urandom(64) for _ in range(65536)]
    server = scale_bench.write_server_files(directory, 65536, keys)
    config = load_server_config(server)
    assert len(config.clients) == 65536 and config.clients[-1].key == keys[65535]
    assert str(config.clients[-1].addresses[0]) == "2001:db8:8::1:1/128"
    text = server.read_text()
    server.write_text(text.replace('"2001:db8:8::1:1/128"', '"2001:db8:8::2/128"'))  # the last client takes the first's
    with pytest.raises(ConfigError, match="address 2001:db8:8::2/128 of client 'c65535' overlaps 2001:db8:8::2/128 of client 'c0'"):
        load_server_config(server)
