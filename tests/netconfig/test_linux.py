"""The Linux network plan: its commands, and what they do to a namespace's rules
and routes when run through a fake ``ip`` (fake_ip.py; the end-to-end tests,
tests/netns/test_routing_safety.py, run them for real)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from vpncrypt.netconfig import NetconfigError, RoutingConflict, TunnelSpec, apply, describe, plan, tear_down
from vpncrypt.netconfig.linux import PROTOCOL, foreign_rule

from .fake_ip import FakeIp

ADDRESSES = (ipaddress.ip_interface("203.0.113.2/24"), ipaddress.ip_interface("2001:db8:7::2/64"))
FULL = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
SERVER = ipaddress.ip_address("192.0.2.1")
MARK = 30307


def full_tunnel(interface: str = "vc0", fwmark: int = MARK):
    return plan(TunnelSpec(interface, ADDRESSES, 1420, FULL, SERVER, fwmark), "linux")


def test_routes_without_a_default_route_need_no_teardown():
    network_plan = plan(TunnelSpec("vc0", ADDRESSES, 1420, (ipaddress.ip_network("198.51.100.0/24"),)), "linux")
    assert network_plan.teardown == [] and network_plan.checks == []
    assert ["ip", "-4", "route", "add", "198.51.100.0/24", "dev", "vc0", "proto", PROTOCOL] in network_plan.setup
    assert "# at exit" not in describe(network_plan)


def test_a_route_to_a_tunnel_network_is_left_to_the_kernel():
    """The address's prefix route is there already: adding it again would be
    'File exists', now that routes are added and never replaced."""
    routes = (ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8:7::/64"))
    network_plan = plan(TunnelSpec("vc0", ADDRESSES, 1420, routes), "linux")
    assert not [command for command in network_plan.setup if "route" in command]


def test_nothing_is_replaced_and_everything_made_is_tagged():
    network_plan = full_tunnel()
    made = [command for command in network_plan.setup if command[2:4] in (["route", "add"], ["rule", "add"])]
    assert len(made) == 6
    for command in made:
        assert command[-2:] == (["proto", PROTOCOL] if command[2] == "route" else ["protocol", PROTOCOL])
    assert not [command for command in network_plan.setup if "replace" in command]


def test_a_default_route_needs_a_fwmark():
    with pytest.raises(NetconfigError, match="needs a fwmark"):
        plan(TunnelSpec("vc0", ADDRESSES, 1420, (ipaddress.ip_network("::/0"),), SERVER), "linux")


def test_every_rule_made_is_deleted_at_exit():
    network_plan = full_tunnel(fwmark=7)
    added = [command for command in network_plan.setup if command[2:4] == ["rule", "add"]]
    deleted = [command[:3] + ["add"] + command[4:] for command in network_plan.teardown]
    assert len(added) == 4 and deleted == added
    assert ["ip", "-6", "route", "add", "::/0", "dev", "vc0", "table", "7", "proto", PROTOCOL] in network_plan.setup
    # The tunnel's table is used only after the rule that keeps the main table's specific routes.
    suppress, tunnel_table = (next(c for c in added if c[1] == "-4" and word in c) for word in ("main", "not"))
    assert int(suppress[suppress.index("priority") + 1]) < int(tunnel_table[tunnel_table.index("priority") + 1])


def vpncrypt_rules(ip: FakeIp) -> list[dict]:
    return [rule for family in ("-4", "-6") for rule in ip.rules[family] if rule["protocol"] == int(PROTOCOL)]


# wg-quick's rules, at the priorities the kernel gives them on a fresh system: the same as ours.
WG_QUICK = ["table main suppress_prefixlength 0 priority 32764", "not fwmark 51820 table 51820 priority 32765"]


def test_another_vpns_rules_at_the_same_priorities_survive_start_stop_and_kill_9():
    ip = FakeIp()
    for family in ("-4", "-6"):
        for words in WG_QUICK:
            ip.add_rule(family, words)
    theirs = {family: list(ip.rules[family]) for family in ("-4", "-6")}
    network_plan = full_tunnel()
    apply(network_plan, run=ip)
    assert len(vpncrypt_rules(ip)) == 4
    tear_down(network_plan, run=ip)  # a stop
    ip.device_gone("vc0")
    assert ip.rules == theirs and ip.routes == {}
    apply(network_plan, run=ip)
    ip.device_gone("vc0")  # kill -9: the rules stay, the routes go
    apply(network_plan, run=ip)  # the next start clears its own leftovers, and only those
    assert len(vpncrypt_rules(ip)) == 4
    tear_down(network_plan, run=ip)
    assert ip.rules == theirs


def test_a_rule_not_made_by_vpncrypt_that_uses_its_table_or_mark_is_refused_before_anything_changes():
    for family, words, what in (("-4", f"fwmark 0x1 table {MARK} priority 100", "table"),
                                ("-6", f"fwmark {hex(MARK)} table 51820 priority 32000", "mark")):
        ip = FakeIp()
        ip.add_rule(family, words)
        before = json.dumps(ip.rules)
        with pytest.raises(RoutingConflict, match=f"^fwmark {MARK}: routing rule [0-9]+ \\(not vpncrypt's\\) already"
                                                  f" uses {what} {MARK} .*give this client another fwmark"):
            apply(full_tunnel(), run=ip)
        assert json.dumps(ip.rules) == before and ip.routes == {}
        assert not [c for c in ip.ran if c[2:4] == ["rule", "delete"] or c[2:4] == ["route", "add"]]


def test_a_default_route_already_in_the_table_is_someone_elses_and_stops_the_start():
    ip = FakeIp()
    ip.add_route("-4", "0.0.0.0/0", "eth0", table=MARK)
    with pytest.raises(RoutingConflict, match="^ip -4 route add 0.0.0.0/0 dev vc0 table 30307 proto 118:"
                                              " RTNETLINK answers: File exists \\(vpncrypt replaces nothing"):
        apply(full_tunnel(), run=ip)
    assert ip.routes[("-4", MARK, "0.0.0.0/0")]["dev"] == "eth0"


def test_an_existing_route_to_a_tunnel_route_is_not_clobbered():
    ip = FakeIp()
    ip.add_route("-4", "198.51.100.0/24", "eth0")
    network_plan = plan(TunnelSpec("vc0", ADDRESSES, 1420, (ipaddress.ip_network("198.51.100.0/24"),)), "linux")
    with pytest.raises(RoutingConflict, match="route add 198.51.100.0/24 dev vc0 proto 118: RTNETLINK answers"):
        apply(network_plan, run=ip)
    assert ip.routes == {("-4", 254, "198.51.100.0/24"): {"dev": "eth0", "proto": "4"}}


# What `ip -j -N -4 rule show` printed in a namespace with a tagged rule of ours and wg-quick's beside it.
SHOWN = [{"priority": 0, "src": "all", "table": "255", "protocol": "2"},
         {"priority": 32764, "src": "all", "table": "254", "suppress_prefixlen": 0, "protocol": "0"},
         {"priority": 32764, "src": "all", "table": "254", "suppress_prefixlen": 0, "protocol": "118"},
         {"priority": 32765, "not": None, "src": "all", "fwmark": "0x7663", "table": "30307", "protocol": "118"},
         {"priority": 32766, "src": "all", "table": "254", "protocol": "2"},
         {"priority": 32767, "src": "all", "table": "253", "protocol": "2"}]


def test_only_rules_of_others_count():
    assert foreign_rule(json.dumps(SHOWN), MARK) is None
    theirs = [dict(rule, protocol="0") if rule["priority"] == 32765 else rule for rule in SHOWN]
    assert "routing rule 32765 (not vpncrypt's) already uses mark 30307" in foreign_rule(json.dumps(theirs), MARK)
    assert foreign_rule(json.dumps(theirs), MARK + 1) is None
    assert foreign_rule("", MARK) is None  # a family with no rules at all
    assert foreign_rule("<html>", MARK).startswith("cannot read the routing rules")
