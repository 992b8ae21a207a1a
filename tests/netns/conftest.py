"""End-to-end fixtures: real namespaces, real TUN devices, the installed commands.

They need root. Where the suite runs without it, every test here is skipped
with a loud reason; CI runs as root, so there they always run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.netlab import Job, Lab, VpnLab, build_vpn_lab, lab_namespaces

VENV_BIN = Path(sys.executable).parent
NOT_ROOT = "END-TO-END TESTS SKIPPED: they need root (namespaces, TUN). Run the suite as root."


def pytest_collection_modifyitems(items):
    if os.geteuid() == 0:
        return
    warnings.warn(NOT_ROOT)
    for item in items:
        if "netns" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=NOT_ROOT))


@pytest.fixture(params=[True, False], ids=["offload", "no-offload"])
def vpn(tmp_path, request) -> VpnLab:
    """The standard lab, once with TUN offloads on and once with them off."""
    lab = Lab(tmp_path / "lab")
    try:
        vpn = build_vpn_lab(lab, VENV_BIN, offload=request.param)
        vpn.start_server()
        vpn.start_client("a")
        vpn.start_client("b")
        yield vpn
    finally:
        logs = {p.name: p.read_text()[-3000:] for p in lab.workdir.glob("*.log")}
        prefix = lab.prefix
        lab.close()
        assert lab_namespaces(prefix) == [], "namespaces left behind"
        (tmp_path / "logs.json").write_text(json.dumps(logs))


def job(vpn: VpnLab, ns: str, *args: str) -> Job:
    return Job(vpn.lab, ns, *args)


# An end restarted after a kill refuses the other's datagrams stamped up to
# about 2 s (at most 3) after the last it heard: its restart bound for a peer
# that was sending runs ahead of that peer's clock (docs/PROTOCOL.md 6.1, rules
# 3 and 5), and path MTU probes keep the peer recent; after a clean stop, up to
# the last second it heard (rule 6). Tests start a client again after it.
RESTART_REFUSAL_SECONDS = 3.0


def ping(vpn: VpnLab, ns: str, address: str, count: int = 3, *extra: str) -> subprocess.CompletedProcess:
    return vpn.lab.run(ns, ["ping", *extra, "-c", str(count), "-i", "0.2", "-W", "2", address], check=False)
