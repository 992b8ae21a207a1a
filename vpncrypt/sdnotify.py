"""Telling systemd how the daemon is doing (sd_notify(3)), without libsystemd.

A unit of ``Type=notify`` gives the daemon a datagram socket in
``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace) and waits
for ``READY=1`` before ``systemctl start`` returns; ``RELOADING=1``,
``STOPPING=1`` and ``STATUS=...`` say what it does next, and with
``WatchdogSec=`` it expects ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC``
microseconds or restarts it. Outside systemd there is no socket and every
message is dropped. A message that cannot be sent is dropped too: systemd
going away must not stop the VPN.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping

log = logging.getLogger("vpncrypt")


class Notifier:
    """Sends state lines to systemd over ``sock`` (connected, or to ``address``)."""

    def __init__(self, sock: socket.socket | None = None, address: str | bytes | None = None,
                 watchdog_interval: float | None = None) -> None:
        self.sock, self.address = sock, address
        self.watchdog_interval = watchdog_interval  # seconds systemd waits for WATCHDOG=1, or None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "Notifier":
        """The notifier systemd set up for this process, or one that sends nothing."""
        address: str | None = environ.get("NOTIFY_SOCKET") or None
        watchdog = watchdog_interval(environ)
        if address is None:
            return cls(watchdog_interval=watchdog)
        if address.startswith("@"):  # the abstract namespace: a leading NUL byte
            address = "\0" + address[1:]
        elif not address.startswith("/"):  # vsock:... and the like: not for a VPN on this host
            log.warning("NOTIFY_SOCKET=%r is not a path or an abstract socket: not telling systemd", address)
            return cls(watchdog_interval=watchdog)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        return cls(sock, address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, **fields: object) -> bool:
        """One datagram of ``KEY=value`` lines; True if it was sent."""
        if self.sock is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self.address is None:
                self.sock.send(message)
            else:
                self.sock.sendto(message, self.address)
        except OSError as error:
            log.debug("cannot notify systemd: %s", error.strerror)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def reloading(self) -> bool:
        # MONOTONIC_USEC: systemd 253 and newer match it with the reload it asked for.
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
                         STATUS="reloading the config")

    def stopping(self) -> bool:
        return self.send(STOPPING=1, STATUS="stopping: removing the tunnel")

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds within which systemd wants WATCHDOG=1 (``WatchdogSec=``), or None
    if it watches no process, or another one (``$WATCHDOG_PID``)."""
    try:
        microseconds = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if microseconds <= 0 or (pid and pid != str(os.getpid())):
        return None
    return microseconds / 1e6
