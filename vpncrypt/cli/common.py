"""What the three commands share: one-line errors with an exit status, logging to stderr."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import metadata

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


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: the installed vpncrypt's version and protocol version."""
    try:
        version = metadata.version("vpncrypt")
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"%(prog)s {version} (protocol version 2)")


def print_all(text: str) -> None:
    """Print to stdout; a reader that stopped early (``| head``) is not an error."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the flush at exit failing too: point stdout at nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
