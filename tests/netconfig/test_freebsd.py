"""The FreeBSD network plan: golden command lists, each command held to its
man page's synopsis, and the plan run by the real apply() and sh against a
fake route(8) that answers as FreeBSD's does (no FreeBSD machine here)."""

from __future__ import annotations

import ipaddress

import pytest

from vpncrypt.netconfig import NetconfigError, NetworkPlan, RoutingConflict, TunnelSpec, apply, plan, tear_down

from . import fake_route
from .synopsis import Grammar, check

# FreeBSD 14: ifconfig(8) (sbin/ifconfig/ifconfig.c; af_inet6.c for the nd6
# keywords), route(8) (sbin/route/keywords; getopt "46nqdtv").
GRAMMAR = Grammar(
    ifconfig_keywords=frozenset({"alias", "-alias", "up", "down", "destroy"}),
    ifconfig_valued=frozenset({"mtu"}),
    ifconfig_inet6_keywords=frozenset({"-auto_linklocal", "auto_linklocal", "no_dad", "-no_dad",
                                       "ifdisabled", "-ifdisabled"}),
    route_options=frozenset({"-4", "-6", "-n", "-q", "-d", "-t", "-v"}),
    route_commands=frozenset({"add", "change", "delete", "get"}),
    route_flags=frozenset({"-host", "-net", "-interface", "-blackhole", "-reject", "-static", "-proto1"}),
)

ADDRESSES = (ipaddress.ip_interface("203.0.113.2/24"), ipaddress.ip_interface("2001:db8:7::2/64"))
SERVER = ipaddress.ip_address("198.51.100.1")
FULL = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
FIND_GATEWAY = 'gateway=$(route -n get -inet default 2>/dev/null | sed -n "s/^ *gateway: //p"); '


def unroute(family: str, server: str) -> list[str]:
    """The teardown of the server's host route: only if route get shows it with PROTO1, vpncrypt's flag."""
    owned = f'route -n get {family} -host {server} 2>/dev/null | grep -q "^ *flags: <.*PROTO1"'
    return ["sh", "-c", f"{owned} || exit 1; exec route -q -n delete {family} -host {server}"]


def spec(routes=(), server=None, addresses=ADDRESSES, interface="vc0") -> TunnelSpec:
    return TunnelSpec(interface, addresses, 1420, tuple(ipaddress.ip_network(r) for r in routes), server_address=server)


ADDRESS_SETUP = [
    ["ifconfig", "vc0", "mtu", "1420"],
    ["ifconfig", "vc0", "inet6", "-auto_linklocal", "no_dad"],
    ["ifconfig", "vc0", "inet", "203.0.113.2/24", "203.0.113.0", "alias"],
    ["ifconfig", "vc0", "inet6", "2001:db8:7::2/128", "alias"],
    ["ifconfig", "vc0", "inet6", "-ifdisabled"],
    ["ifconfig", "vc0", "up"],
    ["route", "-q", "-n", "add", "-inet", "203.0.113.0/24", "-interface", "vc0"],
    ["route", "-q", "-n", "add", "-inet6", "2001:db8:7::/64", "-interface", "vc0"],
]


def test_addresses_mtu_and_the_tunnel_networks():
    assert plan(spec(), "freebsd14") == NetworkPlan(ADDRESS_SETUP, [])


def test_routes_to_networks_go_through_the_interface_each_once():
    """A server's routes to networks behind clients, or a split tunnel: a route
    equal to a tunnel network is not added twice (route(8) would refuse)."""
    network_plan = plan(spec(routes=("192.0.2.0/24", "2001:db8:99::/48", "203.0.113.0/24")), "freebsd")
    assert network_plan == NetworkPlan(ADDRESS_SETUP + [
        ["route", "-q", "-n", "add", "-inet", "192.0.2.0/24", "-interface", "vc0"],
        ["route", "-q", "-n", "add", "-inet6", "2001:db8:99::/48", "-interface", "vc0"],
    ], [])


def test_full_tunnel_halves_and_the_server_route_outside_it():
    network_plan = plan(spec(routes=FULL, server=SERVER), "freebsd")
    assert network_plan == NetworkPlan(ADDRESS_SETUP + [
        ["sh", "-c", FIND_GATEWAY + 'case $gateway in *[.:]*) exec route -q -n add -inet -host 198.51.100.1 -proto1 '
                    '-gateway "$gateway";; esac; exec route -q -n add -inet -host 198.51.100.1 -proto1 127.0.0.1'
                    ' -blackhole'],
        ["route", "-q", "-n", "add", "-inet", "0.0.0.0/1", "-interface", "vc0"],
        ["route", "-q", "-n", "add", "-inet", "128.0.0.0/1", "-interface", "vc0"],
        ["route", "-q", "-n", "add", "-inet6", "::/1", "-interface", "vc0"],
        ["route", "-q", "-n", "add", "-inet6", "8000::/1", "-interface", "vc0"],
    ], [unroute("-inet", "198.51.100.1")])


def test_an_ipv6_server_is_routed_by_the_ipv6_gateway():
    network_plan = plan(spec(routes=("::/0",), server=ipaddress.ip_address("2001:db8:1::1")), "freebsd")
    assert network_plan.setup[len(ADDRESS_SETUP):] == [
        ["sh", "-c", 'gateway=$(route -n get -inet6 default 2>/dev/null | sed -n "s/^ *gateway: //p"); '
                    'case $gateway in *[.:]*) exec route -q -n add -inet6 -host 2001:db8:1::1 -proto1 -gateway'
                    ' "$gateway";; esac; exec route -q -n add -inet6 -host 2001:db8:1::1 -proto1 ::1 -blackhole'],
        ["route", "-q", "-n", "add", "-inet6", "::/1", "-interface", "vc0"],
        ["route", "-q", "-n", "add", "-inet6", "8000::/1", "-interface", "vc0"],
    ]
    assert network_plan.teardown == [unroute("-inet6", "2001:db8:1::1")]


def test_a_server_outside_the_tunneled_family_needs_no_route():
    """Only ::/0 goes into the tunnel: the IPv4 server is reached as before."""
    network_plan = plan(spec(routes=("::/0",), server=SERVER), "freebsd")
    assert network_plan.teardown == [] and not any(c[0] == "sh" for c in network_plan.setup)


def test_a_full_tunnel_without_the_server_address_is_refused():
    with pytest.raises(NetconfigError, match="needs the server's address"):
        plan(spec(routes=("0.0.0.0/0",)), "freebsd")


@pytest.mark.parametrize("address, destination", [
    ("203.0.113.1/24", "203.0.113.0"),  # the network's address, which no host has
    ("203.0.113.0/24", "203.0.113.255"),  # ... unless it is ours
    ("198.51.100.6/31", "198.51.100.7"),
    ("198.51.100.7/32", "198.51.100.7"),  # nothing else to take; and no network to route
])
def test_the_point_to_point_destination_is_never_our_own_address_but_for_a_host(address, destination):
    network_plan = plan(spec(addresses=(ipaddress.ip_interface(address),)), "freebsd")
    assert ["ifconfig", "vc0", "inet", address, destination, "alias"] in network_plan.setup
    routed = [c[5] for c in network_plan.setup if c[0] == "route"]
    assert routed == ([] if address.endswith("/32") else [str(ipaddress.ip_interface(address).network)])


PLANS = [
    spec(), spec(routes=("192.0.2.0/24", "2001:db8:99::/48")), spec(routes=FULL, server=SERVER),
    spec(routes=FULL, server=ipaddress.ip_address("2001:db8:1::1")),
    spec(addresses=(ipaddress.ip_interface("203.0.113.0/24"),), routes=("0.0.0.0/0",),
         server=ipaddress.ip_address("198.51.100.0")),  # an address ending in .0: -host
]


@pytest.mark.parametrize("tunnel", PLANS)
def test_every_command_is_in_the_man_pages_grammar(tunnel):
    network_plan = plan(tunnel, "freebsd")
    for command in network_plan.setup + network_plan.teardown:
        check(command, GRAMMAR)


def test_the_grammar_check_catches_what_a_golden_list_would_repeat():
    for wrong in (
        ["route", "-q", "-n", "add", "-inet", "0.0.0.0/1", "-iface", "vc0"],  # no such keyword
        ["route", "-q", "-n", "add", "-inet6", "0.0.0.0/1", "-interface", "vc0"],  # wrong family
        ["route", "-q", "-n", "add", "-inet", "-host", "198.51.100.0/24", "-gateway", "192.0.2.1"],  # a prefix
        ["route", "-q", "-n", "add", "-inet", "-host", "198.51.100.1"],  # no gateway
        ["ifconfig", "vc0", "inet", "203.0.113.2/24", "203.0.113.0", "alais"],
        ["ifconfig", "vc0", "inet", "-ifdisabled"],  # an inet6 keyword
        ["ifconfig", "vc0", "mtu"],
        ["sh", "-c", "gateway=$(route -n get -inet default; exec route add -inet -host 198.51.100.1 -gw x"],
        ["sh", "-c", "exec route -q -n add -inet -host 198.51.100.1 -gateway"],
    ):
        with pytest.raises(AssertionError):
            check(wrong, GRAMMAR)


# The plan run for real (sh, sed, apply()) against route(8) as FreeBSD's answers.

@pytest.fixture
def kernel(tmp_path, monkeypatch):
    def make(default: dict[int, str]):
        table = fake_route.install(tmp_path, "freebsd", default)
        monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
        return table
    return make


def host_route(table, server):
    found = [r for r in fake_route.routes(table) if r["destination"] == str(ipaddress.ip_network(server))]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.mark.parametrize("server, default, gateway, blackhole", [
    (SERVER, {4: "192.0.2.254"}, "192.0.2.254", False),
    (SERVER, {}, "127.0.0.1", True),  # no default route: nowhere rather than into the tunnel
    (SERVER, {4: "link#2"}, "127.0.0.1", True),  # an interface, not an address
    (ipaddress.ip_address("2001:db8:1::1"), {6: "fe80::1%em0"}, "fe80::1%em0", False),  # the scope kept
    (ipaddress.ip_address("2001:db8:1::1"), {4: "192.0.2.254"}, "::1", True),
])
def test_the_server_route_takes_the_default_gateway_found_when_it_runs(kernel, server, default, gateway, blackhole):
    table = kernel(default)
    apply(plan(spec(routes=FULL, server=server), "freebsd"))
    route = host_route(table, server)
    assert route is not None and (route["gateway"], route["blackhole"]) == (gateway, blackhole)
    halves = {r["destination"] for r in fake_route.routes(table) if r["interface"] == "vc0"}
    assert {"0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"} <= halves


def test_after_kill_9_the_next_start_clears_the_server_route_and_exit_removes_it(kernel):
    table = kernel({4: "192.0.2.254"})
    network_plan = plan(spec(routes=FULL, server=SERVER), "freebsd")
    apply(network_plan)
    fake_route.device_gone(table, "vc0")  # killed: the interface went, the host route stayed
    assert host_route(table, SERVER) is not None
    apply(network_plan)  # would fail with "File exists" if the teardown missed it
    assert host_route(table, SERVER)["gateway"] == "192.0.2.254"
    tear_down(network_plan)
    fake_route.device_gone(table, "vc0")
    assert fake_route.routes(table) == []


def test_a_host_route_to_the_server_that_vpncrypt_did_not_make_is_never_deleted(kernel):
    """The operator's own route to the server: the start stops at it ("File exists")
    and leaves it, and a teardown (a stop, or the clearing at the next start) does too."""
    table = kernel({4: "192.0.2.254"})
    fake_route.held(table, "198.51.100.1/32", "em1")
    network_plan = plan(spec(routes=FULL, server=SERVER), "freebsd")
    with pytest.raises(RoutingConflict, match="add -inet -host 198.51.100.1 -proto1 .*File exists"):
        apply(network_plan)
    tear_down(network_plan, every_copy=True)
    assert host_route(table, SERVER)["gateway"] == "em1"
    assert not [c for c in fake_route.calls(table) if "delete" in c]


def test_a_route_the_kernel_refuses_stops_the_setup_with_its_error(kernel):
    table = kernel({4: "192.0.2.254"})
    network_plan = plan(spec(routes=("192.0.2.0/24",)), "freebsd")
    apply(network_plan)
    error = ("^route -q -n add -inet 203.0.113.0/24 -interface vc0: route: writing to routing socket: File exists"
             r" \(vpncrypt replaces nothing it did not make")
    with pytest.raises(RoutingConflict, match=error):
        apply(network_plan)  # the interface's routes are still there: nothing took them away


@pytest.mark.parametrize("action", ["add", "delete"])
def test_a_reload_routes_a_network_behind_a_client_as_the_plan_does(action):
    """The server's reload adds and deletes routes with route(8) here, never ip."""
    from vpncrypt.netconfig import route_command

    for network, family in (("192.0.2.0/24", "-inet"), ("2001:db8:99::/48", "-inet6")):
        command = route_command(action, ipaddress.ip_network(network), "vc0", "freebsd14")
        through = ["-interface", "vc0"] if action == "add" else []
        assert command == ["route", "-q", "-n", action, family, network, *through]
        check(command, GRAMMAR)
