"""Addresses, MTU and routes of the tunnel interface, per OS, apart from the device itself.

``plan(...)`` returns the commands, so ``--dry-run`` can print exactly what
would be done; ``apply(commands)`` runs them.
"""

from __future__ import annotations

import sys


class NetconfigError(Exception):
    """A configuration command failed; the message carries the command and its error."""


def backend():
    if sys.platform.startswith("linux"):
        from . import linux

        return linux
    raise NetconfigError(f"no network configuration backend for {sys.platform} yet (Linux is supported)")
