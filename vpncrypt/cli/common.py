"""What the three commands share: one-line errors with an exit status, logging to stderr."""

from __future__ import annotations

import logging
import sys

USAGE_ERROR = 2  # a mistake in a config file or on the command line
RUNTIME_ERROR = 1  # the system would not do what was asked (no root, port in use ...)


def error_exit(program: str, error: object, status: int = USAGE_ERROR) -> int:
    """Print one line for the operator; return the exit status to use."""
    print(f"{program}: error: {error}", file=sys.stderr)
    return status


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
