"""ICMP destination unreachable from the server, end to end (issue 13; needs root).

A TCP connect through the tunnel to an address the server cannot deliver to
must fail with EHOSTUNREACH ("No route to host"), the errno Linux gives for
the server's ICMP answer; without one it would run into its timeout
(ETIMEDOUT, or the socket timeout here), whatever the wait.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.netlab import TUNNEL_ADDRESS, TUNNEL_ADDRESS6, Lab, build_vpn_lab, lab_namespaces

from .conftest import VENV_BIN

CONNECT_TIMEOUT = 20.0  # seconds: far longer than an answer takes, so an answer is no race

# Prints the errno name a connect ended with ("connected" if it got through).
CONNECT = """
import errno, json, socket, sys
address = sys.argv[1]
family = socket.AF_INET6 if ":" in address else socket.AF_INET
with socket.socket(family, socket.SOCK_STREAM) as s:
    s.settimeout(float(sys.argv[2]))
    try:
        s.connect((address, 9))
        print(json.dumps("connected"))
    except socket.timeout:
        print(json.dumps("timeout"))
    except OSError as error:
        print(json.dumps(errno.errorcode.get(error.errno, str(error.errno))))
"""


def connect_error(lab: Lab, ns: str, address: str) -> str:
    result = lab.run(ns, [sys.executable, "-c", CONNECT, address, str(CONNECT_TIMEOUT)],
                     timeout=CONNECT_TIMEOUT + 10)
    return json.loads(result.stdout)


@pytest.fixture(params=[True, False], ids=["offload", "no-offload"])
def lab_with_one_client(tmp_path, request):
    """The standard lab with client a running; client b is configured but never connects."""
    lab = Lab(tmp_path / "lab")
    try:
        vpn = build_vpn_lab(lab, VENV_BIN, offload=request.param)
        vpn.start_server()
        vpn.start_client("a")
        yield vpn
    finally:
        prefix = lab.prefix
        lab.close()
        assert lab_namespaces(prefix) == [], "namespaces left behind"


@pytest.mark.parametrize("address", ["203.0.113.99", "2001:db8:7::99"], ids=["ipv4", "ipv6"])
def test_a_connect_to_a_tunnel_address_nobody_owns_fails_at_once(lab_with_one_client, address):
    vpn = lab_with_one_client
    assert connect_error(vpn.lab, vpn.client_ns["a"], address) == "EHOSTUNREACH"
    status = vpn.server_status()
    assert status["drops"]["no_route"] >= 1 and status["icmp_sent"] >= 1


@pytest.mark.parametrize("address", [TUNNEL_ADDRESS["b"], TUNNEL_ADDRESS6["b"]], ids=["ipv4", "ipv6"])
def test_a_connect_to_a_client_never_heard_from_fails_at_once(lab_with_one_client, address):
    vpn = lab_with_one_client
    assert connect_error(vpn.lab, vpn.client_ns["a"], address) == "EHOSTUNREACH"
    status = vpn.server_status()
    assert status["drops"]["no_endpoint"] >= 1 and status["icmp_sent"] >= 1


@pytest.mark.parametrize("address", ["203.0.113.99", TUNNEL_ADDRESS6["b"]], ids=["ipv4", "ipv6"])
def test_a_connect_from_the_server_itself_fails_at_once(lab_with_one_client, address):
    vpn = lab_with_one_client
    assert connect_error(vpn.lab, vpn.server_ns, address) == "EHOSTUNREACH"
