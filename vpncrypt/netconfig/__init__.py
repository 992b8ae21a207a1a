"""Addresses, MTU and routes of the tunnel interface, per OS, apart from the device itself.

``plan(...)`` returns the commands, so ``--dry-run`` can print exactly what
would be done; ``apply(plan)`` runs them and ``tear_down(plan)`` undoes what
outlives the device (policy rules for a default route).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


class NetconfigError(Exception):
    """A configuration command failed; the message carries the command and its error."""


@dataclass(frozen=True)
class NetworkPlan:
    """``setup`` runs in order, each command must succeed. ``teardown`` runs at
    exit, and also before ``setup`` to clear what a killed run left behind; its
    commands may fail (nothing to undo)."""

    setup: list[list[str]]
    teardown: list[list[str]] = field(default_factory=list)


def backend():
    if sys.platform.startswith("linux"):
        from . import linux

        return linux
    raise NetconfigError(f"no network configuration backend for {sys.platform} yet (Linux is supported)")
