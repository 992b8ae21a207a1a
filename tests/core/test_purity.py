"""vpncrypt.core stays sans-I/O: it imports nothing but pure standard-library modules,
``cryptography``, vpncrypt's compiled AES-SIV (``vpncrypt._siv``) and itself.

Checked on the source with ``ast``, not by importing it, so an import inside a function,
behind ``if TYPE_CHECKING`` or in a ``try`` is caught too, as is a relative import
that climbs out of the package. A module missing from both lists fails as well: add it
to ALLOWED_STDLIB only if it does no I/O, reads no clock and keeps no process state.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "vpncrypt" / "core"
PACKAGE = "vpncrypt.core"

ALLOWED_STDLIB = frozenset({
    "__future__", "abc", "base64", "binascii", "bisect", "collections", "dataclasses", "enum", "functools",
    "hashlib", "heapq", "hmac", "ipaddress", "itertools", "math", "re", "secrets", "struct", "typing",
})
ALLOWED_OTHERS = frozenset({"cryptography"})  # AES-SIV
# vpncrypt's own compiled AES-SIV (vpncrypt/_siv.c): pure computation on buffers, like cryptography.
ALLOWED_COMPILED = frozenset({"vpncrypt._siv"})
DENIED = {
    "socket": "network I/O belongs to vpncrypt.transport",
    "os": "file descriptors, files and the environment belong to the shell (secrets gives random bytes)",
    "time": "reads the clock: the core is given `now`",
    "asyncio": "an event loop: the daemon drives the core, the core never waits",
    "logging": "logs belong to the shell: the core counts drops and returns status",
    "subprocess": "runs programs",
    "fcntl": "file descriptor control (the TUN device's)",
    "select": "waits on file descriptors",
    "signal": "process signals belong to the daemon",
    "threading": "threads and locks: the core's state is plain and single-threaded",
    "sys": "interpreter and process state",
}
OUTSIDE_CORE = "the rest of vpncrypt is the I/O shell, which depends on the core, never the reverse"
NOT_LISTED = "on neither list: allow it only if it is pure"
DYNAMIC = "__import__: a dynamic import the checker cannot follow"
TOO_HIGH = "a relative import beyond the top-level package"


def reason_against(name: str) -> str | None:
    """Why module (or module.attribute) ``name`` may not be imported by the core; None if it may."""
    if name == PACKAGE or name.startswith(PACKAGE + "."):
        return None
    if any(name == module or name.startswith(module + ".") for module in ALLOWED_COMPILED):
        return None
    top = name.split(".")[0]
    if top == "vpncrypt":
        return OUTSIDE_CORE
    if top in ALLOWED_STDLIB or top in ALLOWED_OTHERS:
        return None
    return DENIED.get(top, NOT_LISTED)


def imported_names(source: str, package: str) -> list[tuple[int, str]]:
    """(line, dotted name) for every import in ``source``, wherever it is; relative
    ones resolved against ``package``, the package the module is in. For ``from M
    import a`` the name is ``M.a``: ``a`` may be a submodule (``from .. import tun``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level > len(parts):
                    found.append((node.lineno, TOO_HIGH))
                    continue
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            found.append((node.lineno, DYNAMIC))
    return sorted(found)


def violations(source: str, package: str = PACKAGE) -> list[tuple[int, str, str]]:
    """(line, name, reason) for each import the core may not make."""
    out = []
    for line, name in imported_names(source, package):
        reason = name if name in (TOO_HIGH, DYNAMIC) else reason_against(name)
        if reason is not None:
            out.append((line, name, reason))
    return out


def violations_in(core: Path) -> list[str]:
    """Every forbidden import in the package at ``core`` (vpncrypt.core), one line each."""
    out = []
    for path in sorted(core.rglob("*.py")):
        package = ".".join([PACKAGE, *path.relative_to(core).parent.parts])
        for line, name, reason in violations(path.read_text(), package):
            out.append(f"{path.relative_to(core.parent.parent)}:{line} imports {name}: {reason}")
    return out


def test_the_core_imports_only_pure_modules():
    modules = {path.name for path in CORE.rglob("*.py")}
    assert {"__init__.py", "wire.py", "receive.py", "peer.py", "server.py", "client.py"} <= modules
    found = violations_in(CORE)
    assert not found, "\n".join(found)


def test_the_lists_are_explicit_and_apart():
    assert not (ALLOWED_STDLIB | ALLOWED_OTHERS) & DENIED.keys()
    assert {"socket", "os", "time", "asyncio", "logging", "subprocess", "fcntl", "select", "signal",
            "threading", "sys"} <= DENIED.keys()
    assert all(DENIED.values())


@pytest.mark.parametrize("source, name, reason", [
    pytest.param("import time", "time", DENIED["time"], id="time"),
    pytest.param("def now():\n    import time\n    return time.time()\n", "time", DENIED["time"],
                 id="time inside a function"),
    pytest.param("class C:\n    def m(self):\n        if self:\n            from os import path\n",
                 "os.path", DENIED["os"], id="os inside a method"),
    pytest.param("import os.path", "os.path", DENIED["os"], id="os.path"),
    pytest.param("import struct, socket", "socket", DENIED["socket"], id="socket beside struct"),
    pytest.param("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio\n", "asyncio",
                 DENIED["asyncio"], id="asyncio for type checking"),
    pytest.param("try:\n    import uvloop\nexcept ImportError:\n    uvloop = None\n", "uvloop", NOT_LISTED,
                 id="uvloop in a try"),
    pytest.param("import random", "random", NOT_LISTED, id="random"),
    pytest.param("from .. import tun", "vpncrypt.tun", OUTSIDE_CORE, id="up to vpncrypt.tun"),
    pytest.param("from ..transport.udp import UdpTransport", "vpncrypt.transport.udp.UdpTransport", OUTSIDE_CORE,
                 id="up into the transport"),
    pytest.param("import vpncrypt.daemon", "vpncrypt.daemon", OUTSIDE_CORE, id="vpncrypt.daemon"),
    pytest.param("from .._sivx import AesSiv", "vpncrypt._sivx.AesSiv", OUTSIDE_CORE, id="a name like _siv's"),
    pytest.param("from vpncrypt import config", "vpncrypt.config", OUTSIDE_CORE, id="vpncrypt.config"),
    pytest.param("from ... import anything", TOO_HIGH, TOO_HIGH, id="beyond the top"),
    pytest.param("def f():\n    return __import__('socket')\n", DYNAMIC, DYNAMIC, id="__import__"),
])
def test_the_checker_finds_a_forbidden_import(source, name, reason):
    lines = source.splitlines()
    [(line, found, why)] = violations(source)
    assert (found, why) == (name, reason)
    assert "import" in lines[line - 1]


@pytest.mark.parametrize("source", [
    "from __future__ import annotations",
    "import struct\nfrom collections import Counter\nfrom typing import Any, NamedTuple",
    "from cryptography.hazmat.primitives.ciphers.aead import AESSIV",
    "from cryptography.exceptions import InvalidTag",
    "from . import drops as reasons\nfrom .wire import KEY_LEN",
    "from .. import core",
    "from .._siv import AesSiv",
    "import vpncrypt.core.wire\nfrom vpncrypt.core import replay",
    "def f():\n    import hmac, hashlib\n    from itertools import count\n",
])
def test_the_checker_allows_what_the_core_may_import(source):
    assert violations(source) == []


def test_relative_imports_resolve_against_the_module_package():
    assert imported_names("from . import wire\nfrom ..tun import linux", "vpncrypt.core") == [
        (1, "vpncrypt.core.wire"), (2, "vpncrypt.tun.linux"),
    ]
    # A module in a subpackage of the core climbs one level more.
    assert violations("from .. import wire", "vpncrypt.core.sub") == []
    assert violations("from ... import tun", "vpncrypt.core.sub") == [(1, "vpncrypt.tun", OUTSIDE_CORE)]


def test_a_clock_read_inside_a_function_of_a_copy_of_the_core_fails_it(tmp_path):
    copy = tmp_path / "vpncrypt" / "core"
    shutil.copytree(CORE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert violations_in(copy) == []
    with open(copy / "receive.py", "a") as module:
        module.write("\n\ndef _now():\n    import time\n\n    return time.time()\n")
    [violation] = violations_in(copy)
    assert violation.startswith("vpncrypt/core/receive.py:") and f"imports time: {DENIED['time']}" in violation
