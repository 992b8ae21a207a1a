"""vpncrypt's commands in a place any user can read, for tests that run them as another user.

The checkout, its venv and the Python it was made from may sit under a
directory other users cannot enter (a clone under a 0700 temporary
directory, a pyenv Python under /root): a process running as ``nobody``
could not start the commands, nor import a module after a privilege drop.
``ReadableRuntime`` copies what the commands import (the ``vpncrypt``
package and its dependencies from this interpreter's site-packages) into a
fresh world-readable directory, finds a Python of the same version that every
user can run, and writes ``bin/`` scripts with the commands' names.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import vpncrypt

COMMANDS = {  # pyproject.toml, [project.scripts]
    "vpncrypt-server": "vpncrypt.cli.start:server_main",
    "vpncrypt-client": "vpncrypt.cli.start:client_main",
    "vpncrypt-keygen": "vpncrypt.cli.keygen:main",
    "vpncrypt": "vpncrypt.cli.vpncrypt:main",
}
DISTRIBUTIONS = ("cryptography", "cffi", "pycparser", "tomlkit", "uvloop")  # vpncrypt's, and theirs


def others_can_reach(path: Path) -> bool:
    """True if a user that is neither owner nor in the group may search every
    directory down to ``path`` and read (and run) ``path`` itself."""
    path = Path(path).resolve()
    for directory in path.parents:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(path).st_mode
    return bool(mode & stat.S_IROTH and (mode & stat.S_IXOTH or not stat.S_ISDIR(mode)))


def shared_python() -> Path:
    """This Python (same version: the compiled dependencies must load), at a path any user can run."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys.executable).resolve(), *(Path(d) / version for d in ("/usr/bin", "/usr/local/bin"))]
    for candidate in candidates:
        if candidate.exists() and others_can_reach(candidate):
            return candidate
    raise RuntimeError(f"no {version} that other users may run (tried {', '.join(map(str, candidates))});"
                       f" install one (apt-get install {version})")


class ReadableRuntime:
    """A world-readable copy of vpncrypt and its dependencies under a new temporary directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vpncrypt-runtime-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.site = self.root / "site"
        self.bin = self.root / "bin"
        self.python = shared_python()
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(Path(vpncrypt.__file__).parent, self.site / "vpncrypt", ignore=ignore)
        for name in DISTRIBUTIONS:
            try:
                files = metadata.distribution(name).files or []
            except metadata.PackageNotFoundError:
                continue
            for file in files:
                source = Path(file.locate())
                if "__pycache__" in file.parts or file.parts[0].endswith((".dist-info", "..")) or not source.is_file():
                    continue
                target = self.site / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        self.bin.mkdir()
        for command, entry in COMMANDS.items():
            module, function = entry.split(":")
            script = self.bin / command
            script.write_text(f"#!{self.python} -I\nimport sys\nsys.path.insert(0, {str(self.site)!r})\n"
                              f"from {module} import {function}\nsys.exit({function}())\n")
        for path in [self.root, *self.root.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() or path.parent == self.bin else 0o644)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
