"""The Linux network plan: commands in, nothing run (the end-to-end tests run them)."""

from __future__ import annotations

import ipaddress

import pytest

from vpncrypt.netconfig import NetconfigError, TunnelSpec, describe, plan

ADDRESSES = (ipaddress.ip_interface("203.0.113.2/24"), ipaddress.ip_interface("2001:db8:7::2/64"))


def test_routes_without_a_default_route_need_no_teardown():
    network_plan = plan(TunnelSpec("vc0", ADDRESSES, 1420, (ipaddress.ip_network("192.0.2.0/24"),)), "linux")
    assert network_plan.teardown == []
    assert ["ip", "-4", "route", "replace", "192.0.2.0/24", "dev", "vc0"] in network_plan.setup
    assert "# at exit" not in describe(network_plan)


def test_a_default_route_needs_a_fwmark():
    with pytest.raises(NetconfigError, match="needs a fwmark"):
        plan(TunnelSpec("vc0", ADDRESSES, 1420, (ipaddress.ip_network("::/0"),)), "linux")


def test_every_rule_made_is_deleted_at_exit():
    network_plan = plan(TunnelSpec("vc0", ADDRESSES, 1420, (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")), fwmark=7), "linux")
    added = [command for command in network_plan.setup if command[2:4] == ["rule", "add"]]
    deleted = [command[:3] + ["add"] + command[4:] for command in network_plan.teardown]
    assert len(added) == 4 and deleted == added
    assert ["ip", "-6", "route", "replace", "::/0", "dev", "vc0", "table", "7"] in network_plan.setup
    # The tunnel's table is used only after the rule that keeps the main table's specific routes.
    suppress, tunnel_table = (next(c for c in added if c[1] == "-4" and word in c) for word in ("main", "not"))
    assert int(suppress[-1]) < int(tunnel_table[-1])
