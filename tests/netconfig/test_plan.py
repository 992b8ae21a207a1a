"""The OS-neutral half: applying and undoing a plan through a recording command runner."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from vpncrypt.netconfig import NetconfigError, NetworkPlan, TunnelSpec, apply, describe, plan, tear_down

SETUP = [["ip", "link", "set", "up"], ["ip", "route", "add"]]
TEARDOWN = [["ip", "rule", "delete", "1"], ["ip", "rule", "delete", "2"]]


class Runner:
    """Answers like a shell: ``failing`` commands exit 1; teardown commands
    succeed ``leftovers`` times each (copies a killed run left), then fail."""

    def __init__(self, failing=(), leftovers: int = 0) -> None:
        self.ran: list[list[str]] = []
        self.failing = [list(c) for c in failing]
        self.leftovers = {tuple(c): leftovers for c in TEARDOWN}

    def __call__(self, command: list[str]) -> subprocess.CompletedProcess:
        self.ran.append(command)
        code = 1 if command in self.failing else 0
        if tuple(command) in self.leftovers:
            code = 0 if self.leftovers[tuple(command)] > 0 else 1
            self.leftovers[tuple(command)] -= 1
        return subprocess.CompletedProcess(command, code, "", "RTNETLINK answers: File exists" if code else "")


def test_apply_clears_every_leftover_copy_then_sets_up_in_order():
    runner = Runner(leftovers=2)
    apply(NetworkPlan(SETUP, TEARDOWN), run=runner)
    assert runner.ran == [TEARDOWN[0]] * 3 + [TEARDOWN[1]] * 3 + SETUP


def test_a_failed_setup_command_is_named_with_its_error_and_stops_the_rest():
    runner = Runner(failing=[SETUP[0]])
    with pytest.raises(NetconfigError, match="^ip link set up: RTNETLINK answers: File exists$"):
        apply(NetworkPlan(SETUP, TEARDOWN), run=runner)
    assert SETUP[1] not in runner.ran


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


def test_describe_quotes_like_a_shell_and_marks_the_teardown():
    text = describe(NetworkPlan([["ip", "link", "set", "dev", "a b"]], [["ip", "rule", "delete"]]))
    assert text == "ip link set dev 'a b'\n# at exit:\nip rule delete"
