"""A TUN device alone with the kernel, no VPN: run as root inside a namespace that
test_tun_offload.py made, ``python -m tests.netns.tun_probe MODE FAMILY [PATH]``,
PATH the offload functions the device runs: "compiled" (the default) or "pure"
(vpncrypt/tun/offload.py).

  split         the kernel hands a UDP_SEGMENT super-packet to the device (USO);
                vpncrypt cuts it (the TUN offloads on)
  kernel-split  the same send with the offloads off: the kernel cuts it itself
  merge         vpncrypt writes datagrams merged into GSO_UDP_L4 packets; a socket
                on this host receives what the kernel made of them
  merge-refused the same with a kernel that refuses UDP segmentation offload (an
                older one, played by failing the ioctl): no merged UDP writes
  tcp-forward   a TCP super-packet written to a device with offloads is forwarded out
                of a second device without them, so the kernel cuts it itself;
                vpncrypt cuts the same super-packet

Prints one JSON line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

from vpncrypt.core.inner import PartialChecksumPacket, complete_checksum
from vpncrypt.tun import linux, offload
from vpncrypt.tun.linux import TUN_F_USO4, TUNSETOFFLOAD, LinuxTun
from vpncrypt.tun.offload import GSO_ECN, VNET_HEADER, coalesce, split

from ..builders import ACK, CWR, FIN, PSH, datagrams, flow

NAME = "vcprobe0"
LOCAL = {"4": "203.0.113.1", "6": "2001:db8:7::1"}  # B4 / B6 of test_offload
FAR = {"4": "203.0.113.9", "6": "2001:db8:7::9"}
PORT = 9000
SOL_UDP, UDP_SEGMENT = 17, 103


def configure() -> None:
    """Addresses on the device; no automatic IPv6 flow labels, which differ per socket."""
    for command in (["sysctl", "-q", "net.ipv6.auto_flowlabels=0"],
                    ["ip", "address", "add", "203.0.113.1/24", "dev", NAME],
                    ["ip", "-6", "address", "add", "2001:db8:7::1/64", "dev", NAME, "nodad"],
                    ["ip", "link", "set", NAME, "up"]):
        subprocess.run(command, check=True)


def udp_to_port(packet: bytes) -> bool:
    ip_len = 20 if packet[0] >> 4 == 4 else 40
    protocol = packet[9] if ip_len == 20 else packet[6]
    return protocol == 17 and int.from_bytes(packet[ip_len + 2:ip_len + 4], "big") == PORT


def read_split(tun: LinuxTun, family: str, expected: int) -> dict:
    sock = socket.socket(socket.AF_INET if family == "4" else socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind((LOCAL[family], 4433))  # the same source port in both runs
    sock.connect((FAR[family], PORT))
    payloads = [bytes([index]) * (1000 if index < 10 else 300) for index in range(expected)]
    sock.sendmsg([b"".join(payloads)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 1000))])
    found: list[bytes] = []
    deadline = time.monotonic() + 3
    while len(found) < expected and time.monotonic() < deadline:
        select.select([tun], [], [], 0.2)
        found += [packet for packet in tun.read_batch(64) if udp_to_port(packet)]
    return {
        "segmentation": tun.segmentation,
        "partial": [type(packet) is PartialChecksumPacket for packet in found],
        "packets": [(complete_checksum(packet) if type(packet) is PartialChecksumPacket else packet).hex()
                    for packet in found],
    }


def write_merged(tun: LinuxTun, family: str) -> dict:
    sock = socket.socket(socket.AF_INET if family == "4" else socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind((LOCAL[family], 443))
    sock.settimeout(1)
    v6 = family == "6"
    # A run with a short tail, a run of smaller ones with a tail, then 64 + 2 tiny ones.
    packets = (datagrams(20, last=77, v6=v6) + datagrams(3, size=500, v6=v6) + datagrams(1, size=9, v6=v6)
               + datagrams(66, size=20, v6=v6))
    before = rx_packets()
    refused = tun.write_batch(packets)
    writes = rx_packets() - before
    received = []
    try:
        while len(received) < len(packets):
            received.append(sock.recv(65536).hex())
    except socket.timeout:
        pass
    ip_len = 40 if v6 else 20
    return {
        "segmentation": tun.segmentation, "writes": writes, "refused": refused, "offload": offload.in_use(),
        "sent": [packet[ip_len + 8:].hex() for packet in packets], "received": received,
    }


def forward_tcp(tun: LinuxTun, family: str) -> dict:
    """Both cuts of one super-packet of 20 segments and a short one, with PSH, FIN and CWR."""
    plain = LinuxTun.open("vcprobe1", offload=False)
    try:
        for command in (["sysctl", "-q", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                         "net.ipv4.conf.all.rp_filter=0", f"net.ipv4.conf.{NAME}.rp_filter=0"],
                        ["ip", "address", "add", "198.51.100.1/24", "dev", "vcprobe1"],
                        ["ip", "-6", "address", "add", "2001:db8:8::1/64", "dev", "vcprobe1", "nodad"],
                        ["ip", "link", "set", "vcprobe1", "up"]):
            subprocess.run(command, check=True)
        v6 = family == "6"
        [plan] = coalesce(flow(20, last=500, v6=v6, to="2001:db8:8::2" if v6 else "198.51.100.2"))
        flags, gso_type, *rest = VNET_HEADER.unpack(plan[0])
        header = bytearray(plan[1])
        header[(40 if v6 else 20) + 13] = ACK | PSH | FIN | CWR
        vnet = VNET_HEADER.pack(flags, gso_type | GSO_ECN, *rest)
        os.writev(tun.fileno(), [vnet, header, *plan[2:]])
        super_packet = b"".join(bytes(part) for part in [header, *plan[2:]])
        ours = [complete_checksum(segment).hex() for segment in split(super_packet, gso_type | GSO_ECN, rest[1])]
        kernels: list[bytes] = []
        deadline = time.monotonic() + 3
        while len(kernels) < len(ours) and time.monotonic() < deadline:
            select.select([plain], [], [], 0.2)
            kernels += [packet for packet in plain.read_batch(64) if (packet[9] if not v6 else packet[6]) == 6]
        return {"ours": ours, "kernels": [packet.hex() for packet in kernels]}
    finally:
        plain.close()


def rx_packets() -> int:
    """The packets the kernel took from the device: one a write, a merged one included."""
    return int(open(f"/sys/class/net/{NAME}/statistics/rx_packets").read())


def refuse_udp_offload() -> None:
    ioctl = fcntl.ioctl

    def older_kernel(fd, request, arg=0, *rest):
        if request == TUNSETOFFLOAD and arg & TUN_F_USO4:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return ioctl(fd, request, arg, *rest)

    linux.fcntl.ioctl = older_kernel  # type: ignore[attr-defined]


def main(mode: str, family: str, path: str = "compiled") -> None:
    offload.choose(path == "pure", "the probe's argument")
    if mode == "merge-refused":
        refuse_udp_offload()
    tun = LinuxTun.open(NAME, offload=mode != "kernel-split")
    try:
        configure()
        if mode == "tcp-forward":
            result = forward_tcp(tun, family)
        elif mode.startswith("merge"):
            result = write_merged(tun, family)
        else:
            result = read_split(tun, family, 11)
    finally:
        tun.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
