"""Every drop reason the cores count is in the README's drops table, and no more."""

from __future__ import annotations

import re
from pathlib import Path

from vpncrypt.core import drops

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_drops_table_lists_every_reason():
    text = README.read_text()
    table = text[text.index("### Drops"):text.index("## The data path")]
    documented = {name for row in table.splitlines() if row.startswith("| `")
                  for name in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])}
    documented -= {"tun_write_refused", "udp_send_errors"}  # the shell's counters, beside the drops
    assert documented == set(drops.ALL)
