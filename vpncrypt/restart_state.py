"""The restart bounds on disk: read at start, replaced atomically and synced when the core asks.

One small JSON file per daemon (``{"version": 1, "bounds": {"CLIENT_ID": UNIX_SECONDS}}``)
in the state directory (``/var/lib/vpncrypt`` by default). It holds no key
material. Each save writes a temporary file, fsyncs it, renames it over the
old one and fsyncs the directory, so a crash leaves the old table or the new
one, never a torn one; the core relies on a bound only after that.
Losing the file is safe but weaker: see core/restart.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

from .core.restart import KEEP_AHEAD, SAVE_LEAD
from .files import replace_durably

log = logging.getLogger("vpncrypt")

FORMAT_VERSION = 1


class RestartStateError(OSError):
    """The state directory cannot be used; the message says what to do."""


class RestartStore:
    """The file ``directory/NAME.bounds.json``; the directory is made (0700) if missing."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = Path(directory) / f"{name}.bounds.json"

    def load(self) -> dict[int, int] | None:
        """The saved table, or None (with a warning) if there is none or it is unreadable."""
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            return {int(client_id): int(bound) for client_id, bound in data["bounds"].items()}
        except FileNotFoundError:
            log.warning("no restart state at %s (first start, or lost): until the other end is heard (on a server,"
                        " each client), only datagrams stamped after this start are accepted", self.path)
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
            log.warning("restart state %s is unreadable (%s): treated as lost", self.path, error)
        return None

    def warn_of_bounds_ahead(self, table: Mapping[int, int] | None, now: float, time_window: int,
                             names: Mapping[int, str]) -> None:
        """Log a warning for each bound in ``table`` (from ``load``) further
        ahead of ``now`` (wall-clock Unix seconds) than any accepted stamp can
        have been: a peer's clock ahead by up to ``time_window`` seconds, plus
        a bound kept ahead of it (core/restart.py). This host's clock is then
        behind (a boot before NTP, a step back), or the file was changed; the
        peer ``names[client ID]`` is refused until its clock passes the bound.
        Only logged: the bound stays, since lowering it could let a replay in."""
        limit = time_window + KEEP_AHEAD + SAVE_LEAD + 1
        for client_id, bound in sorted((table or {}).items()):
            if bound > now + limit:
                log.warning("restart state %s: the bound for %s (ID %d) is %d s ahead of this host's clock, so"
                            " its datagrams are refused until its clock passes it; this clock is behind (check NTP),"
                            " or the file was changed (then stop the daemon and remove the file: the first-start"
                            " rule applies)", self.path, names.get(client_id, "a removed client"), client_id,
                            bound - int(now))

    def prepare(self) -> None:
        """Make the directory, so that a start fails at once, not at the first save.
        Raises RestartStateError."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = self.path.with_name(f".{self.path.name}.probe")
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise RestartStateError(
                f"cannot write the state directory {self.path.parent}: {error.strerror} "
                "(set state_directory in the config)") from None

    def save(self, table: dict[int, int]) -> None:
        """Replace the file with ``table``, durably. Raises OSError."""
        text = json.dumps({"version": FORMAT_VERSION, "bounds": {str(k): v for k, v in sorted(table.items())}})
        replace_durably(self.path, text.encode())
