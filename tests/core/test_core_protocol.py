"""Both cores answer every call of the ``Core`` protocol that the event loop makes."""

from __future__ import annotations

import typing

import pytest

from vpncrypt.core import Core

from tests.builders import make_client, make_server

MEMBERS = sorted({name for name in vars(Core) if not name.startswith("_")} | set(typing.get_type_hints(Core)))


@pytest.mark.parametrize("make", [make_server, make_client], ids=["server", "client"])
def test_each_core_has_every_member_of_the_protocol(make):
    core = make()
    assert "filter_version" in MEMBERS and "filtered_client_ids" in MEMBERS
    missing = [name for name in MEMBERS if not hasattr(core, name)]
    assert missing == []
    assert isinstance(core.filter_version, int) and core.filtered_client_ids() == []
