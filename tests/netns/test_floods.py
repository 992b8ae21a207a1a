"""A flood of forgeries aimed at one client's ID, end to end (needs root): the server's
kernel refuses that ID's datagrams, another client's traffic goes on, and the flooded
client is heard again once the flood stops."""

from __future__ import annotations

import re
import time
import tomllib

import pytest

from tests.netlab import PORT, SERVER_UNDERLAY, TUNNEL_ADDRESS, Lab, VpnLab, build_vpn_lab, lab_namespaces
from vpncrypt.core.filtered import HOLD_MAX
from vpncrypt.core.wire import KIND_DATA

from .conftest import VENV_BIN, job

SERVER = TUNNEL_ADDRESS["server"]
FLOOD_RATE = 20_000  # datagrams a second: several times what the server's loop refuses cheaply on this machine
FLOOD_SECONDS = 4


@pytest.fixture
def vpn(tmp_path) -> VpnLab:
    lab = Lab(tmp_path / "lab")
    try:
        vpn = build_vpn_lab(lab, VENV_BIN)
        vpn.start_server()
        vpn.start_client("a")
        vpn.start_client("b")
        yield vpn
    finally:
        prefix = lab.prefix
        lab.close()
        assert lab_namespaces(prefix) == [], "namespaces left behind"


def answered(vpn: VpnLab, name: str, count: int, interval: float = 0.1) -> int:
    done = vpn.lab.run(vpn.client_ns[name], ["ping", "-q", "-c", str(count), "-i", str(interval), "-W", "1", SERVER],
                       check=False, timeout=count * interval + 10)
    found = re.search(r"(\d+) received", done.stdout)
    assert found, done.stdout + done.stderr
    return int(found.group(1))


def garbage_seen(status: dict) -> int:
    return status["drops"]["auth_failed"] + status["drops"]["auth_failures_limited"]


def test_a_flood_at_one_client_id_is_refused_in_the_kernel_and_costs_no_other_client(vpn):
    b_id = tomllib.loads((vpn.configs / "b.toml").read_text())["client"]["client_id"]
    assert answered(vpn, "a", 3) == 3 and answered(vpn, "b", 3) == 3
    before = vpn.server_status()
    assert before["kernel_filter"] == {"client_ids": [], "full": 0, "in_kernel": True}

    # The outsider, on the path but no client, forges b's ID with the current time.
    flood = job(vpn, vpn.outsider_ns, "garbage-flood", SERVER_UNDERLAY, str(PORT), hex(KIND_DATA), str(b_id),
                str(FLOOD_RATE), str(FLOOD_SECONDS), "200", str(FLOOD_RATE * FLOOD_SECONDS))
    time.sleep(1)
    during = vpn.server_status()
    a_answers = answered(vpn, "a", 20)  # client a, all through the flood
    sent = flood.result(timeout=FLOOD_SECONDS + 30)["sent"]
    after = vpn.server_status()

    assert during["kernel_filter"]["client_ids"] == [b_id] and during["kernel_filter"]["in_kernel"]
    assert a_answers >= 19
    # Most of the flood never reached the server's loop: the kernel dropped it, uncounted.
    assert sent >= FLOOD_RATE * FLOOD_SECONDS * 0.9
    assert garbage_seen(after) - garbage_seen(before) < sent / 4
    log = (vpn.lab.workdir / "server.log").read_text()
    assert re.search(rf"client 'b' \(ID {b_id}\): a flood of forgeries names it \(over 1024 a second refused"
                     rf" unopened; \d+ failed authentication since it was configured\): all its datagrams are"
                     rf" refused in the kernel for 1 s", log), log[-3000:]

    # Once the flood stops, b is let go within the longest hold and heard again.
    deadline = time.monotonic() + HOLD_MAX + 10
    while vpn.server_status()["kernel_filter"]["client_ids"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert vpn.server_status()["kernel_filter"]["client_ids"] == []
    assert answered(vpn, "b", 5) >= 4
    shown = vpn.vpncrypt("show", "server").stdout
    assert "flood filter: no client ID refused" in shown
