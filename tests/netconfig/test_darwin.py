"""The macOS network plan: golden command lists, each command held to its man
page's synopsis, and the plan run by the real apply() and sh against a fake
route(8) that answers as macOS's does, exit status 0 even when the kernel
refused (no Mac here)."""

from __future__ import annotations

import ipaddress
import re
import shlex

import pytest

from vpncrypt.netconfig import NetconfigError, NetworkPlan, RoutingConflict, TunnelSpec, apply, plan, tear_down

from . import fake_route
from .synopsis import Grammar, check

# macOS 14: ifconfig(8) and route(8) of network_cmds (route.tproj/keywords.h;
# getopt "nqdtv").
GRAMMAR = Grammar(
    ifconfig_keywords=frozenset({"alias", "-alias", "up", "down"}),
    ifconfig_valued=frozenset({"mtu"}),
    ifconfig_inet6_keywords=frozenset(),
    route_options=frozenset({"-n", "-q", "-d", "-t", "-v"}),
    route_commands=frozenset({"add", "change", "delete", "get"}),
    route_flags=frozenset({"-host", "-net", "-interface", "-blackhole", "-reject", "-static", "-proto1"}),
)

ADDRESSES = (ipaddress.ip_interface("203.0.113.2/24"), ipaddress.ip_interface("2001:db8:7::2/64"))
SERVER = ipaddress.ip_address("198.51.100.1")
FULL = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
CHECKED = '! route "$@" 2>&1 >/dev/null | grep . >&2'


def spec(routes=(), server=None, interface="utun7") -> TunnelSpec:
    return TunnelSpec(interface, ADDRESSES, 1420, tuple(ipaddress.ip_network(r) for r in routes), server_address=server)


def route(*arguments: str) -> list[str]:
    return ["sh", "-c", CHECKED, "route", "-q", "-n", *arguments]


ADDRESS_SETUP = [
    ["ifconfig", "utun7", "mtu", "1420"],
    ["ifconfig", "utun7", "inet", "203.0.113.2/24", "203.0.113.2", "alias"],
    ["ifconfig", "utun7", "inet6", "2001:db8:7::2/128", "alias"],
    ["ifconfig", "utun7", "up"],
    route("add", "-inet", "203.0.113.0/24", "-interface", "utun7"),
    route("add", "-inet6", "2001:db8:7::/64", "-interface", "utun7"),
]


def test_addresses_mtu_and_the_tunnel_networks():
    assert plan(spec(), "darwin") == NetworkPlan(ADDRESS_SETUP, [])


def test_routes_to_networks_go_through_the_interface_each_once():
    network_plan = plan(spec(routes=("192.0.2.0/24", "203.0.113.0/24", "2001:db8:99::/48")), "darwin")
    assert network_plan == NetworkPlan(ADDRESS_SETUP + [
        route("add", "-inet", "192.0.2.0/24", "-interface", "utun7"),
        route("add", "-inet6", "2001:db8:99::/48", "-interface", "utun7"),
    ], [])


def unroute(family: str, server: str) -> list[str]:
    """The teardown of the server's host route: only if route get shows it with PROTO1, vpncrypt's flag."""
    owned = f'route -n get {family} -host {server} 2>/dev/null | grep -q "^ *flags: <.*PROTO1"'
    return ["sh", "-c", f"{owned} || exit 1; ! route -q -n delete {family} -host {server} 2>&1 >/dev/null | grep . >&2"]


def test_full_tunnel_halves_and_the_server_route_outside_it():
    network_plan = plan(spec(routes=FULL, server=SERVER), "darwin")
    add = "route -q -n add -inet -host 198.51.100.1 -proto1"
    assert network_plan == NetworkPlan(ADDRESS_SETUP + [
        ["sh", "-c", 'gateway=$(route -n get -inet default 2>/dev/null | sed -n "s/^ *gateway: //p"); '
                    f'case $gateway in *[.:]*) ! {add} -gateway "$gateway" 2>&1 >/dev/null | grep . >&2;; '
                    f'*) ! {add} 127.0.0.1 -blackhole 2>&1 >/dev/null | grep . >&2;; esac'],
        route("add", "-inet", "0.0.0.0/1", "-interface", "utun7"),
        route("add", "-inet", "128.0.0.0/1", "-interface", "utun7"),
        route("add", "-inet6", "::/1", "-interface", "utun7"),
        route("add", "-inet6", "8000::/1", "-interface", "utun7"),
    ], [unroute("-inet", "198.51.100.1")])


@pytest.mark.parametrize("configured, planned", [("utun7", "utun7"), ("utun", "utun?"), ("vpncrypt0", "utun?")])
def test_the_plan_names_the_device_the_kernel_gave_or_shows_that_it_will(configured, planned):
    """The daemon plans again with the opened device's name (utunN); before that, utun?."""
    network_plan = plan(spec(interface=configured), "darwin")
    assert network_plan.setup[0] == ["ifconfig", planned, "mtu", "1420"]
    assert {c[1] for c in network_plan.setup if c[0] == "ifconfig"} == {planned}


def test_only_the_servers_family_gets_a_route_outside_the_tunnel():
    network_plan = plan(spec(routes=("::/0",), server=SERVER), "darwin")
    assert network_plan.teardown == [] and "-host" not in str(network_plan.setup)
    network_plan = plan(spec(routes=("::/0",), server=ipaddress.ip_address("2001:db8:1::1")), "darwin")
    assert network_plan.teardown == [unroute("-inet6", "2001:db8:1::1")]


def test_a_full_tunnel_without_the_server_address_is_refused():
    with pytest.raises(NetconfigError, match="needs the server's address"):
        plan(spec(routes=("::/0",)), "darwin")


PLANS = [spec(), spec(interface="vpncrypt0"), spec(routes=("192.0.2.0/24",)), spec(routes=FULL, server=SERVER),
         spec(routes=FULL, server=ipaddress.ip_address("2001:db8:1::1"))]


@pytest.mark.parametrize("tunnel", PLANS)
def test_every_command_is_in_the_man_pages_grammar(tunnel):
    network_plan = plan(tunnel, "darwin")
    for command in network_plan.setup + network_plan.teardown:
        check(command, GRAMMAR)


def test_the_grammar_check_reads_the_route_inside_the_checking_wrapper():
    with pytest.raises(AssertionError, match="-interfce"):
        check(["sh", "-c", CHECKED, "route", "-q", "-n", "add", "-inet", "0.0.0.0/1", "-interfce", "utun7"], GRAMMAR)
    with pytest.raises(AssertionError, match="nothing for"):
        check(["sh", "-c", CHECKED, "route"], GRAMMAR)


# The plan run for real (sh, sed, grep, apply()) against route(8) as macOS's answers.

@pytest.fixture
def kernel(tmp_path, monkeypatch):
    def make(default: dict[int, str]):
        table = fake_route.install(tmp_path, "darwin", default)
        monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
        return table
    return make


def host_route(table, server):
    found = [r for r in fake_route.routes(table) if r["destination"] == str(ipaddress.ip_network(server))]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.mark.parametrize("default, gateway, blackhole", [
    ({4: "198.51.100.254"}, "198.51.100.254", False),
    ({}, "127.0.0.1", True),
    ({4: "link#4"}, "127.0.0.1", True),  # wg-quick skips link# gateways too
])
def test_the_server_route_takes_the_default_gateway_found_when_it_runs(kernel, default, gateway, blackhole):
    table = kernel(default)
    apply(plan(spec(routes=FULL, server=SERVER), "darwin"))
    route_found = host_route(table, SERVER)
    assert route_found is not None and (route_found["gateway"], route_found["blackhole"]) == (gateway, blackhole)


def test_a_host_route_to_the_server_that_vpncrypt_did_not_make_is_never_deleted(kernel):
    """The operator's own route to the server: the start stops at it ("File exists",
    though route(8) exits 0) and leaves it, and a teardown does too."""
    table = kernel({4: "198.51.100.254"})
    fake_route.held(table, "198.51.100.1/32", "en1")
    network_plan = plan(spec(routes=FULL, server=SERVER), "darwin")
    with pytest.raises(RoutingConflict, match="add -inet -host 198.51.100.1 -proto1 .*File exists"):
        apply(network_plan)
    tear_down(network_plan, every_copy=True)
    assert host_route(table, SERVER)["gateway"] == "en1"
    assert not [c for c in fake_route.calls(table) if "delete" in c]


def test_a_refusal_stops_the_setup_although_route_exits_0(kernel):
    """Another VPN holds 0.0.0.0/1: macOS's route(8) says so and exits 0."""
    table = kernel({4: "198.51.100.254"})
    fake_route.held(table, "0.0.0.0/1", "utun3")
    refused = shlex.join(route("add", "-inet", "0.0.0.0/1", "-interface", "utun7"))
    exists = f"^{re.escape(refused)}: route: writing to routing socket: File exists \\(vpncrypt replaces nothing"
    with pytest.raises(RoutingConflict, match=exists):
        apply(plan(spec(routes=("0.0.0.0/0",), server=SERVER), "darwin"))


def test_after_kill_9_the_next_start_clears_the_server_route_once_and_exit_removes_it(kernel):
    table = kernel({4: "198.51.100.254"})
    network_plan = plan(spec(routes=FULL, server=SERVER), "darwin")
    apply(network_plan)
    deletes = [c for c in fake_route.calls(table) if c[2] == "delete"]
    assert deletes == []  # nothing of vpncrypt's to clear: route get shows only the default route
    fake_route.device_gone(table, "utun7")
    apply(network_plan)
    deletes = [c for c in fake_route.calls(table) if c[2] == "delete"]
    assert len(deletes) == 1  # the leftover cleared, then nothing more of vpncrypt's: not 16 "successes"
    assert host_route(table, SERVER)["gateway"] == "198.51.100.254"
    tear_down(network_plan)
    fake_route.device_gone(table, "utun7")
    assert fake_route.routes(table) == []


@pytest.mark.parametrize("action", ["add", "delete"])
def test_a_reload_routes_a_network_behind_a_client_as_the_plan_does(action):
    """The server's reload adds and deletes routes with route(8) here, never ip."""
    from vpncrypt.netconfig import route_command

    command = route_command(action, ipaddress.ip_network("192.0.2.0/24"), "utun7", "darwin")
    through = ["-interface", "utun7"] if action == "add" else []
    assert command == ["sh", "-c", CHECKED, "route", "-q", "-n", action, "-inet", "192.0.2.0/24", *through]
    check(command, GRAMMAR)
