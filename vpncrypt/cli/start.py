"""The daemons' entry points, kept light: a Ctrl-C while the rest of vpncrypt
is still being imported (the first tenth of a second) ends the start with one
line, as it does later, not with a traceback. Nothing has been made by then."""

from __future__ import annotations

import sys


def _stopped(program: str) -> int:
    print(f"{program}: stopped while starting (nothing was made)", file=sys.stderr)
    return 0


def server_main(argv: list[str] | None = None) -> int:
    try:
        from .daemons import server_main as main
    except KeyboardInterrupt:
        return _stopped("vpncrypt-server")
    return main(argv)


def client_main(argv: list[str] | None = None) -> int:
    try:
        from .daemons import client_main as main
    except KeyboardInterrupt:
        return _stopped("vpncrypt-client")
    return main(argv)
