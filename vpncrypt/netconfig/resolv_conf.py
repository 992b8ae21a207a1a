"""/etc/resolv.conf written by the client itself, where no resolver manager runs.

Before the file changes, what it was goes into a backup in the state
directory (JSON: its bytes and mode, the target of a symbolic link, or that
there was none), and at exit the backup is put back and deleted. A client
that was killed leaves the backup: the next start puts it back before it
writes again (the plan's restore runs before its setup), and ``install``
refuses to overwrite a backup, so the backup always holds the operator's
file, never vpncrypt's.

Every write is durable (``files.replace_durably``: a crash leaves the old
file or the new one). /etc/resolv.conf may be a mount point (``ip netns
exec`` bind-mounts /etc/netns/NS/resolv.conf over it; container runtimes
do the same), onto which a rename fails with EBUSY (or EXDEV): it is then
rewritten in place, which is what such a mount allows.

The plan runs it as a command, so that a dry run prints it like the others:
``python -m vpncrypt.netconfig.resolv_conf set BACKUP LINE...`` and
``... restore BACKUP``; exit status 0, or 1 with one line on stderr.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

from ..files import replace_durably
from . import NetconfigError

TARGET = Path("/etc/resolv.conf")
MODE = 0o644  # resolv.conf must be readable by every user's resolver
MOUNTED = (errno.EBUSY, errno.EXDEV)  # rename onto a mount point (rename(2))


class ResolvConfError(NetconfigError):
    """A step failed; the message names the file and the error."""


def install(lines: list[str], backup: Path, target: Path = TARGET) -> None:
    """Keep what ``target`` is in ``backup``, then write ``lines`` into it.
    Raises ResolvConfError, also if a backup is already there (not restored)."""
    if backup.exists():
        raise ResolvConfError(f"{backup}: still holds {target} from an earlier run (not put back yet);"
                              " not overwriting it")
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        original: dict = {"absent": True}
    else:
        if os.path.islink(target):
            original = {"link": os.readlink(target)}
        else:
            original = {"text": target.read_bytes().decode("utf-8", "surrogateescape"),
                        "mode": info.st_mode & 0o7777}
    header = f"# written by vpncrypt-client; the original comes back when it stops (kept in {backup})"
    try:
        replace_durably(backup, json.dumps({"target": str(target), **original}).encode())
        write(target, "\n".join([header, *lines, ""]).encode(), MODE)
    except OSError as error:
        raise ResolvConfError(f"{error.filename or target}: {error.strerror}") from None


def restore(backup: Path, target: Path = TARGET) -> bool:
    """Put back what ``backup`` says ``target`` was and delete the backup;
    False if there is no backup (nothing to do). Raises ResolvConfError."""
    try:
        original = json.loads(backup.read_bytes())
    except FileNotFoundError:
        return False
    except OSError as error:
        raise ResolvConfError(f"{backup}: {error.strerror}") from None
    except ValueError:
        raise ResolvConfError(f"{backup}: not a resolv.conf backup vpncrypt wrote") from None
    try:
        if "link" in original:
            temporary = target.with_name(f".{target.name}.link")
            temporary.unlink(missing_ok=True)
            os.symlink(original["link"], temporary)
            os.replace(temporary, target)
        elif original.get("absent"):
            target.unlink(missing_ok=True)
        else:
            write(target, original["text"].encode("utf-8", "surrogateescape"), original["mode"])
        backup.unlink()
    except OSError as error:
        raise ResolvConfError(f"{error.filename or target}: {error.strerror}") from None
    except (KeyError, TypeError, AttributeError):
        raise ResolvConfError(f"{backup}: not a resolv.conf backup vpncrypt wrote") from None
    return True


def write(target: Path, data: bytes, mode: int) -> None:
    """Replace ``target`` durably; a mount point is rewritten in place. Raises OSError."""
    try:
        replace_durably(target, data, mode)
        return
    except OSError as error:
        if error.errno not in MOUNTED:
            raise
    fd = os.open(target, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """``set BACKUP LINE...`` or ``restore BACKUP``."""
    if len(argv) < 2 or argv[0] not in ("set", "restore") or (argv[0] == "restore" and len(argv) != 2):
        print("usage: python -m vpncrypt.netconfig.resolv_conf set BACKUP LINE... | restore BACKUP",
              file=sys.stderr)
        return 2
    try:
        if argv[0] == "set":
            install(argv[2:], Path(argv[1]))
        else:
            restore(Path(argv[1]))
    except ResolvConfError as error:
        print(f"resolv.conf: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
