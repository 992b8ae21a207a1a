"""The kill switch in the Linux plan: its table first, deleted at exit; refused
where it cannot be (the end-to-end test, tests/netns/test_kill_switch.py,
runs the rules)."""

from __future__ import annotations

import ipaddress

import pytest

from vpncrypt.netconfig import NetconfigError, TunnelSpec, plan

ADDRESSES = (ipaddress.ip_interface("203.0.113.2/24"),)
FULL = (ipaddress.ip_network("0.0.0.0/0"),)


def spec(routes=FULL, interface="vc-0", fwmark=0x7663) -> TunnelSpec:
    return TunnelSpec(interface, ADDRESSES, 1420, routes, fwmark=fwmark, kill_switch=True)


def test_the_table_comes_before_everything_and_goes_at_exit():
    with_switch = plan(spec(), "linux")
    without = plan(TunnelSpec("vc-0", ADDRESSES, 1420, FULL, fwmark=0x7663), "linux")
    assert with_switch.setup == [[
        "nft", "add", "table", "inet", "vpncrypt_ks_vc_0",
        '{ chain output { type filter hook output priority 0; policy drop; oifname "lo" accept; '
        'oifname "vc-0" accept; meta mark 0x00007663 accept; '
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept; }; }",
    ]] + without.setup
    assert with_switch.teardown == without.teardown + [["nft", "delete", "table", "inet", "vpncrypt_ks_vc_0"]]


@pytest.mark.parametrize("platform", ["freebsd", "darwin"])
def test_other_systems_refuse_it_in_one_line(platform):
    full = TunnelSpec("vc0", ADDRESSES, 1420, FULL, server_address=ipaddress.ip_address("198.51.100.1"),
                      kill_switch=True)
    with pytest.raises(NetconfigError, match="^kill_switch is for Linux only so far"):
        plan(full, platform)


def test_a_split_tunnel_has_no_kill_switch():
    with pytest.raises(NetconfigError, match="^kill_switch goes with a full tunnel"):
        plan(spec(routes=(ipaddress.ip_network("192.0.2.0/24"),)), "linux")


def test_a_system_without_nft_still_starts_a_client_without_the_kill_switch():
    """The leftovers of a kill switch are cleared at start with nft; where nft
    is not installed there can be none, and the start goes on."""
    import subprocess

    from vpncrypt.netconfig import NetconfigError, apply

    ran = []

    def run(command):
        ran.append(command)
        if command[0] == "nft":
            raise NetconfigError("the 'nft' command is not installed")
        return subprocess.CompletedProcess(command, 0 if "add" in command or "set" in command else 1, "", "")

    network_plan = plan(TunnelSpec("vc-0", ADDRESSES, 1420, (), fwmark=0x7663), "linux")
    assert ["nft", "delete", "table", "inet", "vpncrypt_ks_vc_0"] in network_plan.leftovers
    apply(network_plan, run)
    assert ran[-1] == network_plan.setup[-1]
