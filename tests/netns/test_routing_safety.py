"""Routing safety and routing loops (issues 12 and 13), end to end in namespaces:
the client's routes and rules next to other people's, and a route that covers
the server's own address."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.netlab import (
    ROUTER_UNDERLAY, SERVER_UNDERLAY, TUNNEL_ADDRESS, Lab, VpnLab, build_vpn_lab, lab_namespaces, wait_for,
)

from .conftest import RESTART_REFUSAL_SECONDS, VENV_BIN, ping

PROTOCOL = "118"  # vpncrypt's, on every rule and route it makes (netconfig.linux.PROTOCOL)
# The rules wg-quick makes, at the priorities the kernel gives them on a fresh system: vpncrypt's own.
WG_QUICK = [["table", "main", "suppress_prefixlength", "0", "priority", "32764"],
            ["not", "fwmark", "51820", "table", "51820", "priority", "32765"]]
FULL_TUNNEL = 'routes = ["0.0.0.0/0", "::/0"]'
REFUSAL_SECONDS = 20  # a refused start ends at once; a start that is not refused is killed then


@pytest.fixture
def vpn(tmp_path) -> VpnLab:
    """The standard lab with the server running and client a configured, not started."""
    lab = Lab(tmp_path / "lab")
    try:
        vpn = build_vpn_lab(lab, VENV_BIN, clients=("a",))
        vpn.start_server()
        yield vpn
    finally:
        prefix = lab.prefix
        lab.close()
        assert lab_namespaces(prefix) == [], "namespaces left behind"


def configure(vpn: VpnLab, *lines: str) -> None:
    """Client a's config with ``lines`` in its [client] table instead of its routes."""
    path = vpn.configs / "a.toml"
    text = path.read_text()
    assert "routes = []" in text
    path.write_text(text.replace("routes = []", "\n".join(lines), 1))


def client_once(vpn: VpnLab, *extra: str):
    """vpncrypt-client for client a in its namespace, expected to exit by itself."""
    command = [str(VENV_BIN / "vpncrypt-client"), "--config", str(vpn.configs / "a.toml"), *extra]
    return vpn.lab.run(vpn.client_ns["a"], command, check=False, timeout=REFUSAL_SECONDS, env=vpn.env())


def refused_with(done, line: str, alone: bool = True) -> None:
    """Exit status 2 and ``line`` last on stderr, with no traceback; ``alone``:
    nothing else (refused before the device was opened, which logs)."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    said = done.stderr.strip().splitlines()
    assert said[-1] == f"vpncrypt-client: error: {line}" and "Traceback" not in done.stderr, done.stderr
    assert len(said) == 1 or not alone, done.stderr


def rules(vpn: VpnLab) -> list[dict]:
    """Client a's namespace's policy rules, both families, as ``ip -j -N rule show`` gives them."""
    found = []
    for family in ("-4", "-6"):
        shown = vpn.lab.run(vpn.client_ns["a"], ["ip", "-j", "-N", family, "rule", "show"]).stdout
        found += [dict(rule, family=family) for rule in json.loads(shown or "[]")]
    return found


def ours(vpn: VpnLab) -> list[dict]:
    return [rule for rule in rules(vpn) if rule.get("protocol") == PROTOCOL]


def interface_counters(vpn: VpnLab, ns: str, interface: str) -> dict:
    shown = json.loads(vpn.lab.run(ns, ["ip", "-j", "-s", "link", "show", interface]).stdout)
    return shown[0]["stats64"]


def count_udp_to_the_server(vpn: VpnLab) -> None:
    """An nftables counter in client a's namespace of every UDP datagram it sends to the server's port."""
    vpn.lab.run(vpn.client_ns["a"], ["nft", "-f", "-"], input=(
        "table inet vcloop {\n  counter to_server {}\n"
        "  chain out { type filter hook output priority 0; udp dport 51820 counter name to_server; }\n}\n"))


def udp_to_the_server(vpn: VpnLab) -> int:
    shown = json.loads(vpn.lab.run(vpn.client_ns["a"], ["nft", "-j", "list", "counter", "inet", "vcloop",
                                                        "to_server"]).stdout)
    return next(item["counter"]["packets"] for item in shown["nftables"] if "counter" in item)


def test_a_route_over_the_servers_address_is_refused_and_sends_nothing(vpn):
    """Issue 13's case: routes = ["192.0.2.0/24"] with the server at 192.0.2.1 used to
    send each datagram round client a's own TUN device, and the tunnel was dead. Now
    the start and the dry run stop with one line, before any datagram or route."""
    configure(vpn, 'routes = ["192.0.2.0/24"]')
    count_udp_to_the_server(vpn)
    routes_before = vpn.lab.run(vpn.client_ns["a"], ["ip", "-4", "route", "show", "table", "all"]).stdout
    line = ("route 192.0.2.0/24 covers the server's address 192.0.2.1: the tunnel's own datagrams would loop;"
            " route only the networks beside the server, or everything (0.0.0.0/0, which keeps the server out)")
    refused_with(client_once(vpn, "--dry-run"), line)
    refused_with(client_once(vpn), line)
    assert udp_to_the_server(vpn) == 0
    assert vpn.lab.run(vpn.client_ns["a"], ["ip", "link", "show", "vpncrypt0"], check=False).returncode != 0
    assert vpn.lab.run(vpn.client_ns["a"], ["ip", "-4", "route", "show", "table", "all"]).stdout == routes_before


def test_the_networks_beside_the_server_go_through_the_tunnel_without_a_loop(vpn):
    """What the refusal tells the operator to do: route 192.0.2.0/24 but the server's
    address. The tunnel works, and each ping crosses the TUN device once each way:
    the datagrams to the server leave by the underlay, never back into the tunnel."""
    beside = ["192.0.2.0/32", "192.0.2.2/31", "192.0.2.4/30", "192.0.2.8/29", "192.0.2.16/28", "192.0.2.32/27",
              "192.0.2.64/26", "192.0.2.128/25"]
    configure(vpn, "routes = [" + ", ".join(f'"{network}"' for network in beside) + "]")
    count_udp_to_the_server(vpn)
    vpn.start_client("a")
    a = vpn.client_ns["a"]
    assert wait_for(lambda: "192.0.2.128/25 dev vpncrypt0" in vpn.lab.run(a, ["ip", "route"]).stdout)
    before, sent_before = interface_counters(vpn, a, "vpncrypt0"), udp_to_the_server(vpn)
    assert ping(vpn, a, TUNNEL_ADDRESS["server"], 5).returncode == 0
    assert ping(vpn, a, SERVER_UNDERLAY, 5).returncode == 0  # by the underlay, as before
    after, sent = interface_counters(vpn, a, "vpncrypt0"), udp_to_the_server(vpn) - sent_before
    into_tunnel = after["tx"]["packets"] - before["tx"]["packets"]
    # 5 echo requests through the tunnel, and a few more at most (a keepalive, the
    # kernel's MLD reports for the tunnel's IPv6 address); a loop makes 29 rounds of each.
    assert 5 <= into_tunnel <= 12 and 5 <= sent <= 12, (into_tunnel, sent)
    assert vpn.lab.stop(vpn.processes["client-a"]) == 0


def restart(vpn: VpnLab) -> None:
    """Client a again, as test_vpn.start_client_again does: the router's NAT forgets
    the old socket's mapping, and a restarted client refuses the server's
    datagrams for RESTART_REFUSAL_SECONDS."""
    vpn.snat(ROUTER_UNDERLAY, 40000)
    time.sleep(RESTART_REFUSAL_SECONDS)
    vpn.start_client("a")


def test_another_vpns_rules_survive_start_stop_and_kill_9(vpn):
    """Issue 12: the start-up cleanup deleted another VPN's rule at the same priority.
    wg-quick's two rules stay through a start, a stop, a kill -9 and the next start,
    and the full tunnel works beside them."""
    a = vpn.client_ns["a"]
    for family in ("-4", "-6"):
        for words in WG_QUICK:
            vpn.lab.run(a, ["ip", family, "rule", "add", *words])
    theirs = rules(vpn)
    configure(vpn, FULL_TUNNEL)
    vpn.start_client("a")
    assert wait_for(lambda: len(ours(vpn)) == 4)  # the device is up before the rules are
    assert ping(vpn, a, TUNNEL_ADDRESS["server"]).returncode == 0
    assert vpn.lab.stop(vpn.processes["client-a"]) == 0
    assert rules(vpn) == theirs
    restart(vpn)
    assert wait_for(lambda: len(ours(vpn)) == 4)
    vpn.lab.stop(vpn.processes["client-a"], signal.SIGKILL)
    assert len(ours(vpn)) == 4  # left behind by the killed client
    restart(vpn)
    assert wait_for(lambda: len(ours(vpn)) == 4)
    assert ping(vpn, a, TUNNEL_ADDRESS["server"]).returncode == 0
    assert [rule for rule in rules(vpn) if rule.get("protocol") != PROTOCOL] == theirs
    assert vpn.lab.stop(vpn.processes["client-a"]) == 0
    assert rules(vpn) == theirs


def test_a_table_or_mark_in_another_rule_is_refused_and_nothing_changes(vpn):
    a = vpn.client_ns["a"]
    vpn.lab.run(a, ["ip", "-6", "rule", "add", "fwmark", "0x1", "table", "30307", "priority", "100"])
    before = rules(vpn)
    configure(vpn, FULL_TUNNEL)
    refused_with(client_once(vpn), "fwmark 30307: routing rule 100 (not vpncrypt's) already uses table 30307"
                                   " (see: ip rule show); give this client another fwmark (it numbers its table too)",
                 alone=False)
    assert rules(vpn) == before


def test_fwmark_254_is_refused_and_the_main_table_keeps_its_default_route(vpn):
    a = vpn.client_ns["a"]
    main_before = vpn.lab.run(a, ["ip", "route", "show", "table", "main"]).stdout
    configure(vpn, FULL_TUNNEL, "fwmark = 254")
    line = (f"{vpn.configs / 'a.toml'}: [client] fwmark: 254 numbers the system's routing table 'main' (253, 254"
            " and 255 are reserved; ip-rule(8)), which a full tunnel's default route would take over; pick another,"
            " such as 30307 (the default)")
    refused_with(client_once(vpn, "--dry-run"), line)
    refused_with(client_once(vpn), line)
    assert vpn.lab.run(a, ["ip", "route", "show", "table", "main"]).stdout == main_before
    assert "default via" in main_before and ours(vpn) == []


def test_an_existing_route_to_a_tunnel_route_is_not_clobbered(vpn):
    """`route replace` took such a route over, and it was gone after exit."""
    a = vpn.client_ns["a"]
    vpn.lab.run(a, ["ip", "route", "add", "192.0.2.128/25", "via", "198.51.100.1"])
    configure(vpn, 'routes = ["192.0.2.128/25"]')
    refused_with(client_once(vpn), "ip -4 route add 192.0.2.128/25 dev vpncrypt0 proto 118: RTNETLINK answers:"
                                   " File exists (vpncrypt replaces nothing it did not make: remove that route or"
                                   " address, or leave it out of the config)", alone=False)
    assert "192.0.2.128/25 via 198.51.100.1" in vpn.lab.run(a, ["ip", "route"]).stdout
    assert vpn.lab.run(a, ["ip", "link", "show", "vpncrypt0"], check=False).returncode != 0


def test_a_server_name_that_moves_under_a_tunnel_route_is_not_followed(vpn):
    """The server's name comes to resolve to 192.0.2.130, which client a's route
    192.0.2.128/25 takes into the tunnel: following it would send every datagram
    round a's own device. The client stays at 192.0.2.1, says so once, and the
    tunnel keeps working. The name is made with a hosts file for client a's
    namespace alone (``ip netns exec`` mounts /etc/netns/NS/hosts), as in
    test_vpn.test_a_server_given_by_name_is_followed_to_its_new_address."""
    a = vpn.client_ns["a"]
    hosts = Path("/etc/netns") / a / "hosts"
    made_etc_netns = not hosts.parent.parent.exists()
    hosts.parent.mkdir(parents=True)
    try:
        hosts.write_text(f"{SERVER_UNDERLAY} vpn.example\n")
        configure(vpn, 'routes = ["192.0.2.128/25"]\nresolve_interval = 1')
        path = vpn.configs / "a.toml"
        path.write_text(path.read_text().replace(f'server = "{SERVER_UNDERLAY}:', 'server = "vpn.example:'))
        vpn.start_client("a")
        assert ping(vpn, a, TUNNEL_ADDRESS["server"]).returncode == 0
        moved = "192.0.2.130"  # the server answers there too: only the route makes it wrong
        vpn.lab.run(vpn.server_ns, ["ip", "address", "add", f"{moved}/24", "dev", vpn.server_underlay_interface])
        with hosts.open("w") as file:  # the same file: the mount shows what is written to it
            file.write(f"{moved} vpn.example\n")
        log = vpn.lab.workdir / "client-a.log"
        warning = (f"server 'vpn.example' now resolves to {moved}; staying at {SERVER_UNDERLAY}:51820: route"
                   f" 192.0.2.128/25 covers the server's address {moved}: the tunnel's own datagrams would loop;")
        assert wait_for(lambda: warning in log.read_text(), 5)
        assert ping(vpn, a, TUNNEL_ADDRESS["server"], 10).returncode == 0  # 2 s: two more lookups
        assert log.read_text().count("now resolves to") == 1 and "is now at" not in log.read_text()
        assert vpn.lab.stop(vpn.processes["client-a"]) == 0
    finally:
        hosts.unlink(missing_ok=True)
        hosts.parent.rmdir()
        if made_etc_netns:
            hosts.parent.parent.rmdir()
