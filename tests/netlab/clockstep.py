"""Run a Python program with a wall clock that can be stepped while it runs.

    python -m tests.netlab.clockstep OFFSET_FILE SCRIPT [ARGS...]

``time.time`` and ``time.time_ns`` become the real clock plus the number of
seconds written in OFFSET_FILE (a float; 0 if the file is missing or not a
number), read again at most every 10 ms, then SCRIPT (a console script such
as ``.venv/bin/vpncrypt-client``) runs as ``__main__`` with ARGS. Writing
the file steps the clock; write it atomically (``write_offset``).
libfaketime cannot change a running process's offset reliably
(/work/shared/NETLAB.md), hence this. The monotonic clock is left alone, as
a real step leaves it. Everything that reads the clock must be imported after
the replacement, which running SCRIPT here ensures.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

REREAD = 0.01  # seconds between two reads of the offset file


def write_offset(path: Path, seconds: float) -> None:
    """Step the clock of the processes that read ``path`` to real time plus ``seconds``."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(f"{seconds}\n")
    os.replace(temporary, path)


def install(path: str) -> None:
    """Replace ``time.time`` and ``time.time_ns`` by the real clock plus the file's offset."""
    real_time_ns, monotonic = time.time_ns, time.monotonic
    state = {"offset_ns": 0, "read_at": float("-inf")}

    def offset_ns() -> int:
        now = monotonic()
        if now - state["read_at"] >= REREAD:
            state["read_at"] = now
            try:
                with open(path) as file:
                    state["offset_ns"] = round(float(file.read()) * 1e9)
            except FileNotFoundError:
                state["offset_ns"] = 0
            except (OSError, ValueError):
                pass  # keep the last offset read
        return state["offset_ns"]

    def stepped_time_ns() -> int:
        return real_time_ns() + offset_ns()

    def stepped_time() -> float:
        return stepped_time_ns() / 1e9

    time.time_ns = stepped_time_ns
    time.time = stepped_time


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m tests.netlab.clockstep OFFSET_FILE SCRIPT [ARGS...]")
    offset_file, script, *args = argv
    install(offset_file)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
