"""UDP segmentation offload against the kernel's own behaviour: a TUN device in a
namespace of its own, no VPN (needs root)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.netlab import Lab, lab_namespaces
from tests.tun.offload_paths import PATHS, compiled_module
from vpncrypt.tun.linux import OFFLOAD_CHOICES

ROOT = Path(__file__).resolve().parents[2]
WITH_UDP, TCP_ONLY = (flags for flags, _ in OFFLOAD_CHOICES)


@pytest.fixture
def namespace(tmp_path):
    lab = Lab(tmp_path / "lab")
    try:
        yield lab, lab.namespace("tun")
    finally:
        prefix = lab.prefix
        lab.close()
        assert lab_namespaces(prefix) == [], "namespaces left behind"


def probe(lab: Lab, ns: str, mode: str, family: str, path: str = "compiled") -> dict:
    """The probe's JSON; ``path``: the offload functions its device runs (tests/tun/offload_paths.py)."""
    if path == "compiled":
        compiled_module()  # a failure where it did not build (a skip with VPNCRYPT_PURE_PYTHON=1)
    result = lab.run(ns, ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "tests.netns.tun_probe", mode, family,
                          path])
    return json.loads(result.stdout.strip().splitlines()[-1])


def without_ip_id(packet_hex: str) -> bytes:
    """The packet with the IPv4 ID and header checksum zeroed: each send draws a new first ID."""
    packet = bytearray(bytes.fromhex(packet_hex))
    if packet[0] >> 4 == 4:
        packet[4:6] = packet[10:12] = b"\0\0"
    return bytes(packet)


def ip_ids(packets: list[str]) -> list[int]:
    return [int.from_bytes(bytes.fromhex(p)[4:6], "big") for p in packets]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("family", ["4", "6"])
def test_udp_super_packets_are_cut_as_the_kernel_cuts_them(namespace, family, path):
    lab, ns = namespace
    ours = probe(lab, ns, "split", family, path)
    kernels = probe(lab, ns, "kernel-split", family)
    assert ours["segmentation"] == WITH_UDP, "this kernel did not take UDP segmentation offload (Linux >= 6.2)"
    assert kernels["segmentation"] == 0
    # The kernel handed over one super-packet and vpncrypt cut it: every datagram
    # still has its checksum partial. With the offloads off the kernel cut it.
    assert ours["partial"] == [True] * 11
    assert kernels["partial"] == [False] * 11
    assert [without_ip_id(p) for p in ours["packets"]] == [without_ip_id(p) for p in kernels["packets"]]
    if family == "4":
        for ids in (ip_ids(ours["packets"]), ip_ids(kernels["packets"])):
            assert ids == [(ids[0] + i) & 0xFFFF for i in range(11)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("family", ["4", "6"])
def test_merged_udp_writes_reach_a_socket_as_the_same_datagrams(namespace, family, path):
    """Writes counted by the kernel (the device's rx_packets), whichever code makes them."""
    lab, ns = namespace
    result = probe(lab, ns, "merge", family, path)
    assert result["offload"].startswith(path if path == "compiled" else "pure Python")
    assert result["refused"] == 0
    assert result["writes"] == 4  # 20 with a short tail, 3 with a shorter one, then 64 and 2: merged
    assert result["received"] == result["sent"]


@pytest.mark.parametrize("path", PATHS)
def test_a_kernel_without_udp_offload_gets_datagrams_one_by_one(namespace, path):
    lab, ns = namespace
    result = probe(lab, ns, "merge-refused", "4", path)
    assert result["segmentation"] == TCP_ONLY  # checksums and TCP still taken
    assert result["refused"] == 0
    assert result["writes"] == len(result["sent"])
    assert result["received"] == result["sent"]


def before_forwarding(packet_hex: str, hops: int) -> bytes:
    """The packet as it was ``hops`` routers earlier: TTL or hop limit that much
    higher, and the IPv4 header checksum, which forwarding changes, zeroed."""
    packet = bytearray(bytes.fromhex(packet_hex))
    if packet[0] >> 4 == 4:
        packet[8] += hops
        packet[10:12] = b"\0\0"
    else:
        packet[7] += hops
    return bytes(packet)


@pytest.mark.parametrize("family", ["4", "6"])
def test_tcp_super_packets_are_cut_as_the_kernel_cuts_them(namespace, family):
    """One super-packet, two cuts: the kernel's, forwarding it out of a device
    without offloads, and vpncrypt's (split)."""
    lab, ns = namespace
    result = probe(lab, ns, "tcp-forward", family)
    assert len(result["ours"]) == 21
    ours = [before_forwarding(p, 0) for p in result["ours"]]
    assert [before_forwarding(p, 1) for p in result["kernels"]] == ours
