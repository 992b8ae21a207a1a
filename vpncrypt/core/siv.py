"""Which AES-SIV the core seals and opens with: the compiled one, or cryptography's.

``vpncrypt._siv.AesSiv`` (vpncrypt/_siv.c) composes AES-SIV (RFC 5297) from
AES keyed once per object: S2V's CMACs on the CPU's AES-NI with up to 8 of them
interleaved (vpncrypt/_aesni.c, engine "aes-ni") where the CPU has it, else on
OpenSSL's AES-CBC (engine "openssl"), and CTR on OpenSSL's AES. The same extension
does the per-packet work around it for a batch (vpncrypt/_batch.c:
``AesSiv.seal_batch`` for Peer.seal, ``compiled_open_run`` for
receive.open_datagrams), where the compiled class is in use; cryptography's ``AESSIV``
is the reference and the fallback, for a machine where the extension did not
build or when the operator asks for it. The two take the same arguments,
give the same bytes and raise the same exceptions (InvalidTag, ValueError
for a key of the wrong length); tests/cipher holds them to each other.

``AESSIV`` is the class in use: the core makes contexts with ``siv.AESSIV(key)``
(looked up at each call, so that the choice below reaches them). The shell
calls ``choose`` once at start, before any context exists.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESSIV as CryptographyAESSIV

try:
    from .._siv import OPENSSL_VERSION, AesSiv as CompiledAESSIV, engine as compiled_engine, open_run as compiled_open_run
except ImportError as error:  # not built (no compiler or no OpenSSL headers at install)
    CompiledAESSIV = None
    compiled_engine = None
    compiled_open_run = None
    OPENSSL_VERSION = ""
    NOT_BUILT = f"the compiled module is not built: {error}"
else:
    NOT_BUILT = ""

AESSIV = CompiledAESSIV or CryptographyAESSIV
_IN_USE = ""  # what choose() said, for the daemon's start line


def choose(pure: bool, why: str = "") -> str:
    """Use cryptography's AESSIV if ``pure`` (``why`` says who asked, e.g.
    "VPNCRYPT_PURE_PYTHON=1") or if the compiled one is not built, else the
    compiled one. Returns what the daemon logs: which path (and the compiled
    one's OpenSSL and CMAC engine), and why the pure one."""
    global AESSIV, _IN_USE
    if CompiledAESSIV is not None and not pure:
        AESSIV = CompiledAESSIV
        engine = compiled_engine() if compiled_engine else "openssl"
        _IN_USE = f"compiled AES-SIV ({OPENSSL_VERSION}, CMAC on {engine})"
    else:
        AESSIV = CryptographyAESSIV
        _IN_USE = f"cryptography's AESSIV (pure-Python path: {why if pure else NOT_BUILT})"
    return _IN_USE


def in_use() -> str:
    """What the last ``choose`` returned ("" before any): the daemons log it
    in their start line, once the tunnel is up, so that an error at start
    stays the one line it is."""
    return _IN_USE
