"""Running as an unprivileged user once the tunnel is up, keeping only CAP_NET_ADMIN.

A daemon needs root (or CAP_NET_ADMIN) to make the TUN device, give it
addresses and routes and, for a port below 1024, CAP_NET_BIND_SERVICE to
bind its socket. After that it only needs to change routes: a client when
its server's address changes and when it stops, a server when a reload
changes the networks behind clients and when it stops. Those changes run
``ip`` (netconfig), so the one capability kept, CAP_NET_ADMIN, must also be
*ambient*: a process started by an unprivileged one keeps only its ambient
capabilities across execve (capabilities(7), "Transformation of
capabilities during execve()"). This is what wg-quick-like route changes need.

``drop`` does it in the order capabilities(7) allows, while still root:
bounding set down to CAP_NET_ADMIN (PR_CAPBSET_DROP needs CAP_SETPCAP),
PR_SET_KEEPCAPS so that setuid keeps the permitted set, setgroups / setgid
/ setuid (real, effective and saved IDs), then the permitted, effective and
inheritable sets reduced to CAP_NET_ADMIN with libcap's ``cap_set_proc`` and
the capability raised in the ambient set (prctl PR_CAP_AMBIENT, Linux 4.3),
then PR_SET_NO_NEW_PRIVS so that no set-user-ID program can give anything
back. It checks the result (all IDs, the capability sets, and that
``setuid(0)`` is refused) and raises PrivilegeError otherwise: the caller
stops the daemon then, it never serves half-dropped.

A daemon that systemd started unprivileged (``User=`` with
``AmbientCapabilities=CAP_NET_ADMIN``) cannot change its IDs: ``drop`` only
narrows its capabilities to CAP_NET_ADMIN (CAP_NET_BIND_SERVICE, once the
socket is bound, goes).

The capability calls go through ctypes to the system's libcap
(``libcap.so.2``, cap_from_text(3), cap_set_proc(3), cap_get_proc(3)) and
libc's prctl(2), a handful of stable C interfaces. The libraries on PyPI
would add a runtime dependency for them: python-prctl is a C extension
(a compiler and libcap's headers at install), pyprctl a 0.1 release of one
author. Capability sets belong to a thread, not to the process, so ``drop``
refuses to run once a second thread exists.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import grp
import logging
import os
import pwd
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

log = logging.getLogger("vpncrypt")

# linux/capability.h and linux/prctl.h
CAP_NET_ADMIN = 12
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_IS_SET = 1
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
KEPT = "cap_net_admin=eip"  # cap_from_text(3): permitted, effective and inheritable
CAP_EFFECTIVE = 0  # sys/capability.h, cap_flag_t
# What root needs to hand over the state directory and to become the user (capabilities(7)).
NEEDED_AS_ROOT = {"CAP_CHOWN": 0, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8}


class PrivilegeError(Exception):
    """The user cannot be taken on, or a capability call failed; one line for the operator."""


@dataclass(frozen=True)
class Account:
    """The user and group a daemon runs as after start-up (the config's ``user`` and ``group``)."""

    user: str
    uid: int
    group: str
    gid: int


def account(user: str, group: str | None = None) -> Account:
    """The account named by the config: ``group`` defaults to the user's
    primary group. Raises ValueError with the problem (no such user ...)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no such user {user!r} on this system; make one with: useradd --system"
                         f" --no-create-home --shell /usr/sbin/nologin {user}") from None
    if entry.pw_uid == 0:
        raise ValueError(f"{user!r} is root; leave out user (and group) to run as root")
    if group is None:
        gid = entry.pw_gid
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
    else:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"no such group {group!r} on this system") from None
        if gid == 0:
            raise ValueError(f"group {group!r} is root's group; name the daemon's own group")
    return Account(user, entry.pw_uid, group, gid)


def can_enter(path: Path, who: Account) -> bool:
    """True if ``who`` may search every directory from / down to ``path``
    (by the mode bits: owner, group, others)."""
    path = Path(path).resolve()
    for directory in [*reversed(path.parents), path]:
        try:
            info = os.stat(directory)
        except OSError:
            return False
        if info.st_uid == who.uid:
            bit = stat.S_IXUSR
        elif info.st_gid == who.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def readable_by(info: os.stat_result, who: Account) -> bool:
    """True if the mode bits of a file with ``info`` let ``who`` read it."""
    if info.st_uid == who.uid:
        return bool(info.st_mode & stat.S_IRUSR)
    if info.st_gid == who.gid:
        return bool(info.st_mode & stat.S_IRGRP)
    return bool(info.st_mode & stat.S_IROTH)


def hand_over(directory: Path, names: Iterable[str], who: Account) -> None:
    """Give ``who`` the state directory and this daemon's files in it (as
    root, before ``drop``): the key store and the restart state are replaced
    by new files as epochs pass, which takes a directory the user may write.
    Lock files are made if missing, so that keygen (run as root) later opens
    the user's and not one only root may open. Raises PrivilegeError."""
    directory = Path(directory)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not can_enter(directory.parent, who):
            raise PrivilegeError(f"the state directory {directory} is inside a directory user {who.user!r} cannot"
                                 f" enter; set state_directory in the config to one it can reach"
                                 f" (/var/lib/vpncrypt, say)")
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)
            os.fchown(fd, who.uid, who.gid)
            for name in names:
                try:
                    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                    if name.endswith(".lock"):
                        flags |= os.O_CREAT
                    file = os.open(name, flags, 0o600, dir_fd=fd)
                except FileNotFoundError:
                    continue
                try:
                    os.fchown(file, who.uid, who.gid)
                finally:
                    os.close(file)
        finally:
            os.close(fd)
    except OSError as error:
        raise PrivilegeError(f"cannot give the state directory {directory} to user {who.user!r}:"
                             f" {error.strerror}") from None


class _Capabilities:
    """libc's prctl and libcap's cap_from_text / cap_set_proc / cap_get_proc, loaded on first use."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(self.libc, "prctl"):
            raise PrivilegeError("this system has no Linux capabilities (prctl(2)), which running as user after"
                                 " start-up needs: leave out user and group in the config to run as root")
        self.libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        name = ctypes.util.find_library("cap")
        if name is None:
            raise PrivilegeError("cannot keep CAP_NET_ADMIN: libcap is not installed (apt-get install libcap2)")
        self.libcap = ctypes.CDLL(name, use_errno=True)
        self.libcap.cap_from_text.restype = ctypes.c_void_p
        self.libcap.cap_from_text.argtypes = [ctypes.c_char_p]
        self.libcap.cap_get_proc.restype = ctypes.c_void_p
        self.libcap.cap_set_proc.argtypes = [ctypes.c_void_p]
        self.libcap.cap_to_text.restype = ctypes.c_void_p
        self.libcap.cap_to_text.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.libcap.cap_free.argtypes = [ctypes.c_void_p]
        self.libcap.cap_get_flag.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                             ctypes.POINTER(ctypes.c_int)]

    def prctl(self, what: str, option: int, *args: int) -> int:
        result = self.libc.prctl(option, *args, *([0] * (4 - len(args))))
        if result < 0:
            number = ctypes.get_errno()
            raise PrivilegeError(f"cannot {what}: {os.strerror(number)}"
                                 + (" (this kernel has no ambient capabilities: Linux 4.3 or newer needed)"
                                    if option == PR_CAP_AMBIENT and number == errno.EINVAL else ""))
        return result

    def set_proc(self, text: str) -> None:
        caps = self.libcap.cap_from_text(text.encode())
        if not caps:
            raise PrivilegeError(f"cannot parse capabilities {text!r}")
        try:
            if self.libcap.cap_set_proc(caps) != 0:
                raise PrivilegeError(f"cannot set the capabilities to {text}: {os.strerror(ctypes.get_errno())}")
        finally:
            self.libcap.cap_free(caps)

    def get_proc(self) -> str:
        caps = self.libcap.cap_get_proc()
        if not caps:
            raise PrivilegeError(f"cannot read the capabilities: {os.strerror(ctypes.get_errno())}")
        try:
            text = self.libcap.cap_to_text(caps, None)
            try:
                return ctypes.string_at(text).decode()
            finally:
                self.libcap.cap_free(text)
        finally:
            self.libcap.cap_free(caps)

    def effective(self, number: int) -> bool:
        """True if capability ``number`` is in this thread's effective set (cap_get_flag(3))."""
        caps = self.libcap.cap_get_proc()
        if not caps:
            raise PrivilegeError(f"cannot read the capabilities: {os.strerror(ctypes.get_errno())}")
        try:
            value = ctypes.c_int(0)
            if self.libcap.cap_get_flag(caps, number, CAP_EFFECTIVE, ctypes.byref(value)) != 0:
                raise PrivilegeError(f"cannot read capability {number}: {os.strerror(ctypes.get_errno())}")
            return bool(value.value)
        finally:
            self.libcap.cap_free(caps)

    def drop_bounding_set(self) -> None:
        """Every capability but CAP_NET_ADMIN out of the bounding set (needs CAP_SETPCAP)."""
        number = 0
        while True:
            try:
                present = self.prctl("read the bounding set", PR_CAPBSET_READ, number)
            except PrivilegeError:
                break  # EINVAL past the last capability this kernel knows
            if present and number != CAP_NET_ADMIN:
                self.prctl(f"drop capability {number} from the bounding set", PR_CAPBSET_DROP, number)
            number += 1


def check_supported(who: Account) -> None:
    """Raise PrivilegeError now, before anything is made, if ``drop`` cannot
    keep CAP_NET_ADMIN here (no prctl, no libcap), or, as root, cannot become
    ``who`` (root without the capabilities that takes: a systemd unit's
    CapabilityBoundingSet=, say)."""
    caps = _Capabilities()
    if os.geteuid() != 0:
        return
    missing = [name for name, number in NEEDED_AS_ROOT.items() if not caps.effective(number)]
    if missing:
        raise PrivilegeError(f"cannot become user {who.user!r}: root here lacks {', '.join(missing)} (a unit's"
                             " CapabilityBoundingSet=?); start it as that user instead (systemd: User=, Group=,"
                             " AmbientCapabilities=CAP_NET_ADMIN), or leave out user and group")


def drop(who: Account | None) -> None:
    """Run as ``who`` with only CAP_NET_ADMIN (permitted, effective, ambient),
    and log what was done.

    As root with ``who`` None: nothing changes, and one warning says how to
    change that. Not root: the IDs stay (systemd's ``User=``; ``who``, if
    given, must be this user) and the capabilities narrow to CAP_NET_ADMIN.
    Raises PrivilegeError with one line; after it the caller must stop (the
    process may be half-way)."""
    root = os.geteuid() == 0
    if root and who is None:
        log.warning("running as root with every capability: set user (and group) in the config to run as an"
                    " unprivileged user with only CAP_NET_ADMIN once the tunnel is up (README, 'Privileges')")
        return
    if threading.active_count() > 1:
        raise PrivilegeError("cannot drop privileges: another thread runs already (capabilities are per thread)")
    caps = _Capabilities()
    if root:
        assert who is not None
        caps.drop_bounding_set()
        caps.prctl("keep the capabilities across setuid", PR_SET_KEEPCAPS, 1)
        try:
            os.setgroups([])
            os.setresgid(who.gid, who.gid, who.gid)
            os.setresuid(who.uid, who.uid, who.uid)
        except OSError as error:
            raise PrivilegeError(f"cannot become user {who.user!r} and group {who.group!r}: {error.strerror}") from None
        caps.prctl("clear the keep-capabilities flag", PR_SET_KEEPCAPS, 0)
    elif who is not None and (os.geteuid(), os.getegid()) != (who.uid, who.gid):
        raise PrivilegeError(f"runs as uid {os.geteuid()} gid {os.getegid()}, but the config says user {who.user!r}"
                             f" (uid {who.uid}) and group {who.group!r} (gid {who.gid}): start it as root, or as"
                             " that user and group")
    caps.set_proc(KEPT)
    caps.prctl("clear the ambient capabilities", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    caps.prctl("make CAP_NET_ADMIN ambient (so that the ip commands get it)", PR_CAP_AMBIENT,
               PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN)
    caps.prctl("forbid new privileges", PR_SET_NO_NEW_PRIVS, 1)
    _check(caps, os.getresuid()[0] if who is None else who.uid, os.getresgid()[0] if who is None else who.gid)
    log.info("running as uid %d gid %d with only CAP_NET_ADMIN (ambient, for the ip commands)",
             os.getuid(), os.getgid())


def check_writable(directory: Path, names: Iterable[str]) -> None:
    """The state directory as the daemon now runs: a file can be made there
    (the key store and the restart state are replaced by new files as epochs
    pass) and the lock files among ``names`` (``*.lock``) can be opened for
    writing (made if missing, so that they are the daemon's and not those of
    a keygen run as root). Raises PrivilegeError with the fix."""
    directory = Path(directory)
    probe = directory / f".probe.{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.unlink(probe)
        for name in names:
            if name.endswith(".lock"):
                os.close(os.open(directory / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except OSError as error:
        try:
            who = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            who = str(os.geteuid())
        raise PrivilegeError(f"{error.filename or directory}: not writable by user {who!r} ({error.strerror}), and"
                             " the key store is rewritten as epochs pass; fix it with: chown -R"
                             f" {who} {directory} (systemd: StateDirectory= with User=)") from None


def _check(caps: _Capabilities, uid: int, gid: int) -> None:
    """What ``drop`` promised, read back; raises PrivilegeError if anything differs."""
    if set(os.getresuid()) != {uid} or set(os.getresgid()) != {gid} or os.getgroups() not in ([], [gid]):
        raise PrivilegeError(f"the user and group did not change as asked (uids {os.getresuid()},"
                             f" gids {os.getresgid()})")
    have = caps.get_proc()
    if have != KEPT:
        raise PrivilegeError(f"the capabilities are {have!r}, not {KEPT!r}")
    if caps.prctl("read the ambient set", PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_ADMIN) != 1:
        raise PrivilegeError("CAP_NET_ADMIN is not ambient")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PrivilegeError("could become root again after dropping privileges")
