"""A TUN device made of a datagram socket pair, for tests that have no root.

The test holds the other end (``peer``): what it sends, the daemon reads as
packets from the "kernel"; what the daemon writes, the test receives. It has no
offloads, so partial checksums are finished on the way out, as on a real device
without them.
"""

from __future__ import annotations

import socket

from . import finished


class MemoryTun:
    def __init__(self, name: str = "memtun0") -> None:
        self.name = name
        self._own, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for end in (self._own, self.peer):
            end.setblocking(False)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def fileno(self) -> int:
        return self._own.fileno()

    def read_batch(self, limit: int) -> list[bytes]:
        packets = []
        while len(packets) < limit:
            try:
                packets.append(self._own.recv(65536))
            except BlockingIOError:
                break
        return packets

    def write_batch(self, packets: list[bytes]) -> int:
        refused = 0
        for packet in packets:
            try:
                self._own.send(finished(packet))
            except OSError:
                refused += 1
        return refused

    def close(self) -> None:
        self._own.close()
        self.peer.close()
