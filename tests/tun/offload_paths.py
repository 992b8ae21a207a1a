"""The two implementations of the TUN offload functions, for tests that run
LinuxTun (or the functions) with each: "compiled" (vpncrypt._offload) and
"pure" (vpncrypt/tun/offload.py, the reference)."""

from __future__ import annotations

import contextlib

from tests.compiled import built
from vpncrypt.tun import offload

PATHS = ("compiled", "pure")


def compiled_module():
    """vpncrypt._offload; a failure (not a skip) where it did not build,
    unless VPNCRYPT_PURE_PYTHON=1 says this machine runs without it."""
    return built(offload.COMPILED, offload.NOT_BUILT, "the compiled offload functions are not tested")


@contextlib.contextmanager
def chosen(path: str | None):
    """Devices opened inside take the ``path`` functions (and keep them);
    the choice before is put back afterwards. None: the choice as it is."""
    if path is None:
        yield
        return
    if path == "compiled":
        compiled_module()
    saved = offload._CHOSEN, offload._IN_USE
    offload.choose(path == "pure", "a test")
    try:
        yield
    finally:
        offload._CHOSEN, offload._IN_USE = saved
