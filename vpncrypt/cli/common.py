"""What the three commands share: one-line errors with exit status 2, logging setup."""

from __future__ import annotations

import logging
import sys
from typing import Callable, NoReturn

USAGE_ERROR = 2


def fail(program: str, message: str) -> NoReturn:
    print(f"{program}: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def run_guarded(program: str, body: Callable[[], int], expected: tuple[type[BaseException], ...]) -> int:
    """Run ``body``; an expected error becomes one line on stderr and exit status 2."""
    try:
        return body()
    except expected as error:
        fail(program, str(error))
