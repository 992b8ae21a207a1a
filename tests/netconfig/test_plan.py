"""The OS-neutral half: applying and undoing a plan through a recording command runner."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from vpncrypt.netconfig import (Check, NetconfigError, NetworkPlan, RoutingConflict, TunnelSpec, apply, describe,
                                loop_route, plan, tear_down)

SETUP = [["ip", "link", "set", "up"], ["ip", "route", "add"]]
TEARDOWN = [["ip", "rule", "delete", "1"], ["ip", "rule", "delete", "2"]]


class Runner:
    """Answers like a shell: ``failing`` commands exit 1; teardown commands
    succeed ``leftovers`` times each (copies a killed run left), then fail."""

    def __init__(self, failing=(), leftovers: int = 0,
                 error: str = "RTNETLINK answers: Operation not permitted") -> None:
        self.ran: list[list[str]] = []
        self.error = error
        self.failing = [list(c) for c in failing]
        self.leftovers = {tuple(c): leftovers for c in TEARDOWN}

    def __call__(self, command: list[str]) -> subprocess.CompletedProcess:
        self.ran.append(command)
        code = 1 if command in self.failing else 0
        if tuple(command) in self.leftovers:
            code = 0 if self.leftovers[tuple(command)] > 0 else 1
            self.leftovers[tuple(command)] -= 1
        return subprocess.CompletedProcess(command, code, "shown", self.error if code else "")


def test_apply_clears_every_leftover_copy_then_sets_up_in_order():
    runner = Runner(leftovers=2)
    apply(NetworkPlan(SETUP, TEARDOWN), run=runner)
    assert runner.ran == [TEARDOWN[0]] * 3 + [TEARDOWN[1]] * 3 + SETUP


def test_a_failed_setup_command_is_named_with_its_error_and_stops_the_rest():
    runner = Runner(failing=[SETUP[0]])
    with pytest.raises(NetconfigError, match="^ip link set up: RTNETLINK answers: Operation not permitted$") as failed:
        apply(NetworkPlan(SETUP, TEARDOWN), run=runner)
    assert SETUP[1] not in runner.ran and not isinstance(failed.value, RoutingConflict)


def test_a_setup_command_that_finds_its_route_there_is_a_conflict_for_the_operator():
    """EEXIST, in the words of ip, FreeBSD's and macOS's route: someone else's
    route or address, which vpncrypt never replaces (exit status 2)."""
    runner = Runner(failing=[SETUP[1]], error="RTNETLINK answers: File exists")
    with pytest.raises(RoutingConflict, match="^ip route add: RTNETLINK answers: File exists \\(vpncrypt replaces"
                                              " nothing it did not make: remove that route or address, or leave it"
                                              " out of the config\\)$"):
        apply(NetworkPlan(SETUP, TEARDOWN), run=runner)


def test_a_check_that_refuses_stops_the_start_before_anything_changes():
    seen = []
    refuse = Check(["ip", "rule", "show"], lambda shown: seen.append(shown) or "table 7 is someone else's")
    runner = Runner(leftovers=1)
    with pytest.raises(RoutingConflict, match="^table 7 is someone else's$"):
        apply(NetworkPlan(SETUP, TEARDOWN, checks=[refuse]), run=runner)
    assert runner.ran == [["ip", "rule", "show"]] and seen == ["shown"]
    runner = Runner(leftovers=1)
    apply(NetworkPlan(SETUP, TEARDOWN, checks=[Check(["ip", "rule", "show"], lambda shown: None)]), run=runner)
    assert runner.ran == [["ip", "rule", "show"]] + [TEARDOWN[0]] * 2 + [TEARDOWN[1]] * 2 + SETUP
    runner = Runner(failing=[["ip", "rule", "show"]])
    with pytest.raises(NetconfigError, match="^ip rule show: RTNETLINK answers: Operation not permitted$"):
        apply(NetworkPlan(SETUP, TEARDOWN, checks=[refuse]), run=runner)


def test_tear_down_runs_each_command_once_and_ignores_failures():
    runner = Runner(leftovers=0)
    tear_down(NetworkPlan(SETUP, TEARDOWN), run=runner)
    assert runner.ran == TEARDOWN


def test_a_platform_without_a_module_is_refused_with_a_clear_error():
    spec = TunnelSpec("vc0", (ipaddress.ip_interface("203.0.113.2/24"),), 1420)
    with pytest.raises(NetconfigError, match="no network configuration for plan9"):
        plan(spec, "plan9")


def test_full_tunnel_is_any_route_of_prefix_length_zero():
    address = (ipaddress.ip_interface("203.0.113.2/24"),)
    assert not TunnelSpec("vc0", address, 1420, (ipaddress.ip_network("192.0.2.0/24"),)).full_tunnel
    assert TunnelSpec("vc0", address, 1420, (ipaddress.ip_network("::/0"),)).full_tunnel


def test_describe_quotes_like_a_shell_and_marks_the_checks_and_the_teardown():
    text = describe(NetworkPlan([["ip", "link", "set", "dev", "a b"]], [["ip", "rule", "delete"]],
                                checks=[Check(["ip", "-j", "rule", "show"], lambda _: None)]))
    assert text == "# checked first: ip -j rule show\nip link set dev 'a b'\n# at exit:\nip rule delete"


def spec(*routes: str, addresses=("203.0.113.2/24", "2001:db8:7::2/64"), server="192.0.2.1") -> TunnelSpec:
    return TunnelSpec("vc0", tuple(map(ipaddress.ip_interface, addresses)), 1420,
                      tuple(map(ipaddress.ip_network, routes)), ipaddress.ip_address(server), 7)


@pytest.mark.parametrize("platform", ["linux", "freebsd", "darwin"])
@pytest.mark.parametrize("tunnel, route", [
    (spec("192.0.2.0/24"), "192.0.2.0/24"),  # issue 13's case
    (spec("192.0.2.1/32"), "192.0.2.1/32"),
    (spec(addresses=("192.0.2.7/24",)), "192.0.2.0/24"),  # the tunnel's own network
    (spec("2001:db8:1::/48", server="2001:db8:1::1"), "2001:db8:1::/48"),
])
def test_a_route_over_the_servers_address_is_refused_on_every_platform(platform, tunnel, route):
    with pytest.raises(RoutingConflict, match=f"^route {route} covers the server's address {tunnel.server_address}:"
                                              " the tunnel's own datagrams would loop; route only the networks"
                                              " beside the server, or everything"):  # no default route there yet
        plan(tunnel, platform)


@pytest.mark.parametrize("platform", ["linux", "freebsd", "darwin"])
def test_a_route_over_the_server_beside_a_default_route_is_named_as_redundant(platform):
    with pytest.raises(RoutingConflict, match="^route 192.0.2.0/30 covers the server's address 192.0.2.1: the"
                                              " tunnel's own datagrams would loop; leave it out: 0.0.0.0/0 already"
                                              " takes it into the tunnel, and keeps the server out$"):
        plan(spec("0.0.0.0/0", "192.0.2.0/30"), platform)
    with pytest.raises(RoutingConflict, match="route only the networks beside the server, or everything"):
        plan(spec("::/0", "192.0.2.0/30"), platform)  # the default route of the other family


@pytest.mark.parametrize("platform", ["linux", "freebsd", "darwin"])
def test_routes_beside_the_server_and_a_default_route_are_taken(platform):
    plan(spec("192.0.2.0/32", "192.0.2.2/31", "192.0.2.128/25", "2001:db8:1::/48", "0.0.0.0/0"), platform)
    plan(spec("192.0.2.0/24", "0.0.0.0/0", server="2001:db8:9::1"), platform)


def test_a_server_that_moves_under_a_default_route_loops_where_only_its_first_address_is_kept_out():
    tunnel = spec("0.0.0.0/0", "198.51.100.0/24")
    moved = ipaddress.ip_address("192.0.2.77")
    assert loop_route(tunnel, moved) is None  # Linux: the marked socket keeps the whole default route out
    assert loop_route(tunnel, moved, default_kept_out=False) == ipaddress.ip_network("0.0.0.0/0")  # the BSDs
    assert loop_route(tunnel, tunnel.server_address, default_kept_out=False) is None  # its host route
    assert loop_route(tunnel, ipaddress.ip_address("198.51.100.9")) == ipaddress.ip_network("198.51.100.0/24")
    assert loop_route(tunnel, ipaddress.ip_address("2001:db8::1")) is None  # no IPv6 route at all
