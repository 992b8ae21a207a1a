"""Run a Python program and time each of its event loop's wake-ups from the
reader callback's start to its first output system call (bench/wakeup_bench.py).

Run: python bench/wakeup_trace.py OUT.json PROGRAM [ARGS...]

PROGRAM (a script, such as a console script of the venv or
bench/python_relay.py) runs as ``__main__`` with ARGS. Before it starts,
this wraps:

- the event loop's ``add_reader``, asyncio's and uvloop's, so that each
  callback it registers notes the time it starts and, when it returns,
  records the time to its first output (if it wrote anything) and its whole
  duration, keyed by its ``__qualname__``;
- the outputs: ``socket.socket.sendto`` and ``sendmsg``, ``os.write``,
  ``os.writev`` and vpncrypt's compiled ``write_coalesced`` (noting the time
  before the system call, once a callback).

Times are ``time.perf_counter_ns`` (monotonic). At exit (SIGTERM and SIGINT
end a program that has no handler of its own with SystemExit, so that this
still runs) OUT.json gets, for each callback name, the count and the median
and mean microseconds of both. The wrapping costs each wake-up the same few
Python calls, in every program traced alike.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import runpy
import signal
import socket
import statistics
import sys
import time

_clock = time.perf_counter_ns
_now: dict[str, int | None] = {"start": None, "output": None}
_records: dict[str, dict[str, list[float]]] = {}


def _note_output() -> None:
    if _now["start"] is not None and _now["output"] is None:
        _now["output"] = _clock()


def _timed_output(function):
    def output(*args, **keywords):
        _note_output()
        return function(*args, **keywords)
    return output


def _timed_callback(callback):
    name = getattr(callback, "__qualname__", repr(callback))

    def wake_up(*args):
        _now["output"] = None
        start = _now["start"] = _clock()
        try:
            return callback(*args)
        finally:
            end, output = _clock(), _now["output"]
            _now["start"] = None
            record = _records.setdefault(name, {"to_output_us": [], "whole_us": []})
            record["whole_us"].append((end - start) / 1000)
            if output is not None:
                record["to_output_us"].append((output - start) / 1000)
    return wake_up


def _wrap_add_reader(loop_class) -> None:
    add_reader = loop_class.add_reader

    def traced_add_reader(self, fd, callback, *args):
        return add_reader(self, fd, _timed_callback(callback), *args)
    loop_class.add_reader = traced_add_reader


def _dump(path: str) -> None:
    summary = {
        name: {key: {"count": len(values), "median": round(statistics.median(values), 1),
                     "mean": round(statistics.mean(values), 1)} for key, values in record.items() if values}
        for name, record in _records.items()
    }
    with open(path, "w") as file:
        json.dump(summary, file, indent=1)


def _exit(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    out, program = sys.argv[1], sys.argv[2]
    sys.argv = sys.argv[2:]
    socket.socket.sendto = _timed_output(socket.socket.sendto)
    socket.socket.sendmsg = _timed_output(socket.socket.sendmsg)
    os.write = _timed_output(os.write)
    os.writev = _timed_output(os.writev)
    try:
        from vpncrypt import _offload
    except ImportError:
        pass
    else:
        _offload.write_coalesced = _timed_output(_offload.write_coalesced)
    _wrap_add_reader(asyncio.BaseEventLoop)
    try:
        import uvloop
    except ImportError:
        pass
    else:
        _wrap_add_reader(uvloop.Loop)
    atexit.register(_dump, out)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, _exit)
    sys.path.insert(0, os.path.dirname(os.path.abspath(program)))
    runpy.run_path(program, run_name="__main__")


if __name__ == "__main__":
    main()
