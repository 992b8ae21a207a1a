"""The file way: resolv.conf written with its original kept, put back, and
never a backup overwritten; a mount point rewritten in place (the real bind
mount is in tests/netns/test_dns.py)."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys

import pytest

from vpncrypt import files
from vpncrypt.netconfig.resolv_conf import ResolvConfError, install, main, restore

LINES = ["nameserver 203.0.113.1", "search example.internal"]
ORIGINAL = b"# from DHCP\nnameserver 192.0.2.53\n"


@pytest.fixture
def paths(tmp_path):
    etc, state = tmp_path / "etc", tmp_path / "lib"
    etc.mkdir()
    state.mkdir()
    return etc / "resolv.conf", state / "laptop.resolv.conf.json"


def test_install_then_restore_gives_back_the_bytes_and_mode(paths):
    target, backup = paths
    target.write_bytes(ORIGINAL)
    target.chmod(0o640)
    install(LINES, backup, target)
    written = target.read_text().splitlines()
    assert written[0].startswith("# written by vpncrypt-client") and written[1:] == LINES
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # every user's resolver reads it
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert restore(backup, target) is True
    assert target.read_bytes() == ORIGINAL and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert not backup.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["resolv.conf"]  # no temporary left


def test_a_symbolic_link_comes_back_as_the_same_link_and_its_target_is_never_written(paths, tmp_path):
    target, backup = paths
    managed = tmp_path / "stub-resolv.conf"
    managed.write_bytes(ORIGINAL)
    target.symlink_to(managed)
    install(LINES, backup, target)
    assert not target.is_symlink() and managed.read_bytes() == ORIGINAL
    restore(backup, target)
    assert target.is_symlink() and os.readlink(target) == str(managed)


def test_a_missing_resolv_conf_is_missing_again_after(paths):
    target, backup = paths
    install(LINES, backup, target)
    assert target.exists()
    restore(backup, target)
    assert not target.exists() and not backup.exists()


def test_a_backup_left_by_a_killed_run_is_never_overwritten(paths):
    target, backup = paths
    target.write_bytes(ORIGINAL)
    install(LINES, backup, target)
    kept = backup.read_bytes()
    with pytest.raises(ResolvConfError, match="still holds .* from an earlier run"):
        install(LINES, backup, target)
    assert backup.read_bytes() == kept
    restore(backup, target)  # what the next start does first
    assert target.read_bytes() == ORIGINAL


def test_restore_without_a_backup_changes_nothing(paths):
    target, backup = paths
    target.write_bytes(ORIGINAL)
    assert restore(backup, target) is False
    assert target.read_bytes() == ORIGINAL


def test_a_mount_point_is_rewritten_in_place(paths, monkeypatch):
    """rename(2) onto a mount point fails with EBUSY: the same inode is written instead."""
    target, backup = paths
    target.write_bytes(ORIGINAL)
    inode = target.stat().st_ino
    real_replace = os.replace

    def replace(source, destination):
        if os.fspath(destination) == os.fspath(target):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), os.fspath(destination))
        real_replace(source, destination)

    monkeypatch.setattr(files.os, "replace", replace)
    install(LINES, backup, target)
    assert target.stat().st_ino == inode and target.read_text().splitlines()[1:] == LINES
    restore(backup, target)
    assert target.stat().st_ino == inode and target.read_bytes() == ORIGINAL
    assert sorted(p.name for p in target.parent.iterdir()) == ["resolv.conf"]  # replace_durably cleaned up


def test_a_broken_backup_is_one_line_and_changes_nothing(paths):
    target, backup = paths
    target.write_bytes(b"nameserver 203.0.113.1\n")
    backup.write_text(json.dumps({"target": str(target)}))
    with pytest.raises(ResolvConfError, match="not a resolv.conf backup vpncrypt wrote"):
        restore(backup, target)
    backup.write_text("{not json")
    with pytest.raises(ResolvConfError, match="not a resolv.conf backup vpncrypt wrote"):
        restore(backup, target)
    assert target.read_bytes() == b"nameserver 203.0.113.1\n" and backup.exists()


def test_the_command_line_says_one_line_and_exits_1_or_2(paths, capsys):
    _, backup = paths
    assert main(["frobnicate", str(backup)]) == 2
    backup.write_text("{not json")
    assert main(["restore", str(backup)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err
    done = subprocess.run([sys.executable, "-m", "vpncrypt.netconfig.resolv_conf", "restore", str(backup)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and done.stderr == f"resolv.conf: {backup}: not a resolv.conf backup vpncrypt wrote\n"
