"""The least a Python program can do to carry a tunnel, unencrypted: a
reference for the added round-trip time of bench/vpn_bench.py, not a VPN.

Run (as ``vpn_bench.py --only rtt --peers python-relay,...`` does, inside a
namespace): python bench/python_relay.py DEVICE ADDRESS/PREFIX ADDRESS6/PREFIX PEER PORT [--seal]

It creates the TUN device DEVICE (no offloads) with the two tunnel
addresses and, on uvloop as vpncrypt's daemons, copies each packet read from
the device into one UDP datagram to PEER:PORT, and each datagram received on
PORT back to the device: a read, a write and an epoll wait a wake-up, the
system calls vpncrypt makes for a lone packet, and no other work. What
vpncrypt adds above it is the work of its own Python around the compiled
cipher (bench/RESULTS.md, "what the rest is").

With ``--seal`` (peer python-relay-siv) each packet is also sealed with
vpncrypt's compiled AES-SIV (vpncrypt/_siv.c) behind an 8-byte counter, its
associated data, and opened at the other end (24 bytes of overhead, as
vpncrypt's): one compiled cipher call a packet and still no other work, the
round-trip time a design that does each wake-up's work in one compiled call
would approach. The key is a constant: a reference, not a VPN.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

import uvloop
from cryptography.exceptions import InvalidTag

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vpncrypt._siv import AesSiv  # noqa: E402
from vpncrypt.tun.linux import LinuxTun  # noqa: E402

MTU = 1420  # bench/vpn_bench.py's
READ_SIZE = 65536


def main() -> None:
    device, address, address6, peer, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    seal = sys.argv[6:] == ["--seal"]
    tun = LinuxTun.open(device, offload=False)
    subprocess.run(["ip", "address", "add", address, "dev", device], check=True)
    subprocess.run(["ip", "address", "add", address6, "dev", device, "nodad"], check=True)
    subprocess.run(["ip", "link", "set", device, "mtu", str(MTU), "up"], check=True)
    fd = tun.fileno()
    os.set_blocking(fd, False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.setblocking(False)
    destination = (peer, port)

    if not seal:
        def device_readable() -> None:
            try:
                sock.sendto(os.read(fd, READ_SIZE), destination)
            except BlockingIOError:
                pass

        def socket_readable() -> None:
            try:
                os.write(fd, sock.recv(READ_SIZE))
            except BlockingIOError:
                pass
    else:
        cipher = AesSiv(bytes(range(64)))
        counter = itertools.count()

        def device_readable() -> None:
            try:
                packet = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            header = next(counter).to_bytes(8, "big")
            sock.sendto(header + cipher.encrypt(packet, [header]), destination)

        def socket_readable() -> None:
            try:
                datagram = sock.recv(READ_SIZE)
                os.write(fd, cipher.decrypt(datagram[8:], [datagram[:8]]))
            except (BlockingIOError, InvalidTag):
                pass

    loop = uvloop.new_event_loop()
    loop.add_reader(fd, device_readable)
    loop.add_reader(sock.fileno(), socket_readable)
    loop.run_forever()


if __name__ == "__main__":
    main()
