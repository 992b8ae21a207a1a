"""An interface of the configured name that is not vpncrypt's own is never taken over.

A TUN device vpncrypt makes dies with its process, even after ``kill -9``, so an
existing interface of that name is someone else's: a persistent TUN device
(``ip tuntap add``), another VPN's, a dummy. The daemon must say so in one line
and leave it as it was, where it used to take a persistent TUN device over
(and leave its addresses on it, so that the next start failed) or fail with
"Invalid argument".
"""

from __future__ import annotations

import json

import pytest

from tests.netlab import Lab, build_vpn_lab, lab_namespaces

from .conftest import VENV_BIN

pytestmark = pytest.mark.netns


def interface_state(lab: Lab, ns: str) -> tuple[str, list]:
    shown = json.loads(lab.run(ns, ["ip", "-j", "-d", "address", "show", "dev", "vpncrypt0"]).stdout)[0]
    return shown.get("linkinfo", {}).get("info_kind", ""), shown.get("addr_info", [])


@pytest.mark.parametrize("make", [
    ["ip", "link", "add", "vpncrypt0", "type", "veth", "peer", "name", "vpncrypt0peer"],
    ["ip", "tuntap", "add", "dev", "vpncrypt0", "mode", "tun"],
], ids=["veth", "persistent-tun"])
def test_an_existing_interface_of_that_name_is_refused_and_left_alone(tmp_path, make):
    lab = Lab(tmp_path / "lab")
    try:
        vpn = build_vpn_lab(lab, VENV_BIN, clients=("a",))
        lab.run(vpn.server_ns, make)
        before = interface_state(lab, vpn.server_ns)
        command = [str(VENV_BIN / "vpncrypt-server"), "--config", str(vpn.configs / "server.toml")]
        done = lab.run(vpn.server_ns, command, check=False, env=vpn.env(), timeout=30)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert "an interface named vpncrypt0 exists already" in lines[-1], done.stderr
        assert "Traceback" not in done.stderr
        assert interface_state(lab, vpn.server_ns) == before  # no address added, nothing taken
        # Once it is gone, the server starts (the refusal was about that interface only).
        lab.run(vpn.server_ns, ["ip", "link", "delete", "vpncrypt0"])
        vpn.start_server()
        assert interface_state(lab, vpn.server_ns)[0] == "tun"
    finally:
        prefix = lab.prefix
        lab.close()
        assert lab_namespaces(prefix) == []


def test_a_dead_servers_interface_is_gone_so_a_restart_after_kill_9_works(tmp_path):
    """The other side of the rule above: vpncrypt's own device never outlives it."""
    lab = Lab(tmp_path / "lab")
    try:
        vpn = build_vpn_lab(lab, VENV_BIN, clients=("a",))
        first = vpn.start_server()
        lab.stop(first, sig=9)
        shown = lab.run(vpn.server_ns, ["ip", "link", "show", "vpncrypt0"], check=False)
        assert shown.returncode != 0, shown.stdout
        vpn.start_server()
    finally:
        prefix = lab.prefix
        lab.close()
        assert lab_namespaces(prefix) == []

