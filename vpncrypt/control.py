"""The control socket: how ``vpncrypt show`` and ``vpncrypt reload`` reach a running daemon.

One Unix socket per daemon, ``/run/vpncrypt/NAME.sock`` where NAME is its
config file's stem (``VPNCRYPT_RUN_DIR`` moves the directory, for tests and
for a second set of daemons). The directory is mode 0700 and the socket 0600,
and a connecting process must be root or the daemon's own user (checked with
SO_PEERCRED where the OS has it): the status names every client and where it
is, and a reload changes who may connect.

The protocol is one JSON object a line each way, as wireguard-go's UAPI is
one key=value a line: a request ``{"command": "show"}``, an answer
``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``. Requests are
served on the daemon's event loop, between batches of packets, so a handler
must not block: slow work (reading a config, running ``ip``) goes to a thread.
Before the loop runs (a client waiting for its server's name),
``answer_pending`` serves the same socket from a polling loop, one request a
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import select
import socket
import stat
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

log = logging.getLogger("vpncrypt")

RUN_DIR_VARIABLE = "VPNCRYPT_RUN_DIR"
DEFAULT_RUN_DIR = "/run/vpncrypt"
SUFFIX = ".sock"
MAX_LINE = 1 << 16  # a request is a few dozen bytes
READ_TIMEOUT = 10.0  # seconds a connection may sit without finishing its request
ANSWER_TIMEOUT = 30.0  # seconds the command waits for an answer (a reload runs ``ip``)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
PlainHandler = Callable[[dict[str, Any]], dict[str, Any]]  # answer_pending's: no event loop to await on


class ControlError(OSError):
    """The control socket cannot be made or reached; the message is for the operator.
    An OSError, so that a daemon that cannot make its socket stops as for any
    other resource it cannot have (exit 1)."""


class RequestError(Exception):
    """A request the daemon refuses; the message is the answer's one error line.
    ``status`` is the exit status the command should give (2: the operator's
    mistake, such as a broken config; 1: the system's)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def run_dir() -> Path:
    return Path(os.environ.get(RUN_DIR_VARIABLE) or DEFAULT_RUN_DIR)


def socket_path(name: str, directory: Path | None = None) -> Path:
    """Where the daemon named ``name`` (its config's stem) listens."""
    return (directory or run_dir()) / f"{name}{SUFFIX}"


def daemon_names(directory: Path | None = None) -> list[str]:
    """The names of the daemons with a socket in ``directory``, sorted."""
    directory = directory or run_dir()
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    except PermissionError:
        raise ControlError(f"{directory}: permission denied (run as root)") from None
    except OSError as error:
        raise ControlError(f"{directory}: {error.strerror}") from None
    return sorted(p.name[: -len(SUFFIX)] for p in entries if p.name.endswith(SUFFIX) and p.is_socket())


def _private_directory(directory: Path) -> None:
    """Make ``directory`` (mode 0700), or check that an existing one is ours and closed to others."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except PermissionError:
        raise ControlError(f"cannot make the control socket's directory {directory}: permission denied"
                           f" (run as root, or set {RUN_DIR_VARIABLE})") from None
    except OSError as error:
        raise ControlError(f"cannot make the control socket's directory {directory}: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ControlError(f"{directory}: not a directory")
    if info.st_uid != os.geteuid():
        raise ControlError(f"{directory}: belongs to user {info.st_uid}, not to this one (run as root)")
    if info.st_mode & 0o077:
        os.chmod(directory, 0o700)


def bind(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 in a 0700 directory.

    A socket left there by a daemon that was killed is replaced; one that
    still answers belongs to a running daemon of the same name, and raises
    ControlError (two daemons from one config would fight over the device)."""
    _private_directory(path.parent)
    if path.exists() or path.is_symlink():
        if not path.is_socket():
            raise ControlError(f"{path}: exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # nobody listening: left behind by a killed daemon
        else:
            raise ControlError(f"a daemon named {path.stem!r} is already running ({path} answers)")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError as error:
        sock.close()
        raise ControlError(f"cannot listen on {path}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


def _peer_allowed(sock: socket.socket | None) -> bool:
    """Root or the daemon's own user; where SO_PEERCRED is missing, the
    directory's mode is the only gate."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return True
    try:
        _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return False
    return uid in (0, os.geteuid())


class ControlServer:
    """Serves ``handlers`` (command name -> coroutine function taking the
    request, returning the answer's fields) on a socket made by ``bind``."""

    def __init__(self, sock: socket.socket, path: Path, handlers: dict[str, Handler] | None = None) -> None:
        self.sock = sock
        self.path = path
        self.handlers = handlers or {}
        self._server: asyncio.AbstractServer | None = None
        self._inode = os.stat(path).st_ino

    @classmethod
    def bind(cls, path: Path, handlers: dict[str, Handler] | None = None) -> "ControlServer":
        """A server on a socket made by ``bind`` (handlers may come later)."""
        return cls(bind(path), path, handlers)

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock=self.sock, limit=MAX_LINE)

    async def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        self.discard()

    def discard(self) -> None:
        """Close the socket and remove its file if it is still this one (no
        event loop needed; safe to call twice)."""
        self.sock.close()
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not _peer_allowed(writer.get_extra_info("socket")):
                await self._answer(writer, {"ok": False, "error": "permission denied: root only"})
                return
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                except (asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError):
                    return
                if not line:
                    return
                await self._answer(writer, await self.answer(line))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def answer(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line; never raises for a bad request."""
        parsed = _parse(line, self.handlers)
        if isinstance(parsed, dict):
            return parsed
        request, command = parsed
        try:
            return {"ok": True, **await self.handlers[command](request)}
        except Exception as error:
            return _refusal(command, error)

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
        writer.write(json.dumps(answer, sort_keys=True).encode() + b"\n")
        await writer.drain()


def _parse(line: bytes, handlers: dict[str, Any]) -> tuple[dict[str, Any], str] | dict[str, Any]:
    """(request, command) for a request line naming one of ``handlers``, else the refusal to answer."""
    try:
        request = json.loads(line)
        command = request["command"]
        handlers[command]
    except (ValueError, TypeError, KeyError):
        return {"ok": False, "error": f"unknown request; commands: {', '.join(sorted(handlers))}"}
    return request, command


def _refusal(command: str, error: Exception) -> dict[str, Any]:
    """The answer when a handler raised: its RequestError's line, or, for a
    bug (which must not take the daemon down with it), a line and a logged traceback."""
    if isinstance(error, RequestError):
        return {"ok": False, "error": str(error), "status": error.status}
    log.error("control command %r failed", command, exc_info=error)
    return {"ok": False, "error": f"{command} failed: {error}", "status": 1}


PENDING_READ_TIMEOUT = 1.0  # seconds answer_pending waits for a connection's request line


def answer_pending(sock: socket.socket, handlers: dict[str, PlainHandler], timeout: float) -> None:
    """Without an event loop: wait up to ``timeout`` seconds for a connection
    to ``sock`` (a listening socket from ``bind``) and answer its first
    request line with ``handlers`` (which return the answer's fields or raise
    RequestError), as ControlServer does; then close it. Never raises: a
    connection that fails or sends nothing within PENDING_READ_TIMEOUT is
    dropped. A signal does not cut the wait short (select is retried, PEP
    475): callers that must see one poll with a short ``timeout``."""
    if not select.select([sock], [], [], timeout)[0]:
        return
    try:
        connection, _ = sock.accept()
    except OSError:  # taken back by the client, or interrupted
        return
    with connection:
        try:
            connection.settimeout(PENDING_READ_TIMEOUT)
            if not _peer_allowed(connection):
                answer: dict[str, Any] = {"ok": False, "error": "permission denied: root only"}
            else:
                with connection.makefile("rb") as reader:
                    parsed = _parse(reader.readline(MAX_LINE), handlers)
                if isinstance(parsed, dict):
                    answer = parsed
                else:
                    request, command = parsed
                    try:
                        answer = {"ok": True, **handlers[command](request)}
                    except Exception as error:
                        answer = _refusal(command, error)
            connection.sendall(json.dumps(answer, sort_keys=True).encode() + b"\n")
        except OSError:  # socket.timeout included
            pass


def request(path: Path, command: str, timeout: float = ANSWER_TIMEOUT, **fields: Any) -> dict[str, Any]:
    """Send one request to the daemon at ``path`` and return its answer.
    Raises ControlError when nothing answers there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no daemon named {path.stem!r} is running (no {path})") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (run as root)") from None
        except ConnectionRefusedError:
            raise ControlError(f"no daemon named {path.stem!r} is running ({path} is left from one that stopped)"
                               ) from None
        except OSError as error:
            raise ControlError(f"{path}: {error.strerror or error}") from None
        sock.sendall(json.dumps({"command": command, **fields}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise ControlError(f"{path}: the daemon did not answer within {timeout:g} s") from None
    except OSError as error:
        if error.errno in (errno.ECONNRESET, errno.EPIPE):
            raise ControlError(f"{path}: the daemon closed the connection") from None
        raise ControlError(f"{path}: {error.strerror or error}") from None
    finally:
        sock.close()
    try:
        return json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: not an answer from a vpncrypt daemon") from None
