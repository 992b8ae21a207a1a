"""The restart bounds on disk: round trip, atomic replacement, lost or broken state said once."""

from __future__ import annotations

import json
import logging
import os

import pytest

from vpncrypt.core.restart import KEEP_AHEAD, SAVE_LEAD
from vpncrypt.restart_state import RestartStateError, RestartStore


def test_a_saved_table_reads_back_and_holds_no_key_material(tmp_path):
    store = RestartStore(tmp_path / "state", "server")
    store.prepare()
    store.save({7: 1_800_000_123, 65535: 5})
    assert store.load() == {7: 1_800_000_123, 65535: 5}
    assert json.loads(store.path.read_text()) == {"version": 1, "bounds": {"7": 1_800_000_123, "65535": 5}}
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    assert oct(store.path.parent.stat().st_mode & 0o777) == "0o700"
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["server.bounds.json"]  # no temporary left


@pytest.mark.parametrize("content, said", [
    (None, "no restart state"),
    ("{not json", "unreadable"),
    ('{"version": 9, "bounds": {}}', "unreadable"),
    ('{"version": 1, "bounds": {"x": 1}}', "unreadable"),
])
def test_missing_or_broken_state_is_treated_as_lost_with_a_warning(tmp_path, caplog, content, said):
    store = RestartStore(tmp_path, "client")
    if content is not None:
        store.path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="vpncrypt"):
        assert store.load() is None
    assert said in caplog.text and str(store.path) in caplog.text


def test_an_unwritable_state_directory_stops_the_start_with_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RestartStateError, match="cannot write the state directory .*set state_directory"):
        RestartStore(blocker / "sub", "server").prepare()


def test_a_save_that_fails_leaves_the_old_table(tmp_path, monkeypatch):
    store = RestartStore(tmp_path, "server")
    store.save({1: 10})

    def refuse(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(OSError):
        store.save({1: 20})
    assert store.load() == {1: 10}


def test_a_bound_no_accepted_stamp_can_reach_is_warned_of_and_kept(tmp_path, caplog):
    """A bound further ahead of the clock than a peer's clock (time_window) plus
    a bound kept ahead can be: this clock is behind, or the file was changed.
    The daemon says which peer is refused and why; the table is not changed."""
    store = RestartStore(tmp_path, "server")
    now = 1_800_000_000.5
    limit = 128 + KEEP_AHEAD + SAVE_LEAD + 1
    table = {7: int(now) + 10, 8: int(now + limit), 9: int(now + limit) + 1, 10: 99_999_999_999}
    with caplog.at_level("WARNING"):
        store.warn_of_bounds_ahead(table, now, 128, {7: "client 'a'", 8: "client 'b'", 9: "client 'c'"})
    assert table == {7: int(now) + 10, 8: int(now + limit), 9: int(now + limit) + 1, 10: 99_999_999_999}
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 2, warned
    assert f"the bound for client 'c' (ID 9) is {int(limit) + 1} s ahead of this host's clock" in warned[0]
    assert "the bound for a removed client (ID 10)" in warned[1] and str(store.path) in warned[1]
    assert "check NTP" in warned[0]
