"""The sans-I/O protocol core: bytes, an endpoint and ``now`` in; decisions and bytes out.

Nothing in this package touches a socket, a file descriptor, the clock,
logging or global state (``tests/core/test_purity.py`` holds it to that).
``now`` is always wall-clock time, seconds since the Unix epoch as a float
(``time.time()``): timestamps on the wire are Unix seconds, so passing a
monotonic clock would make every datagram fall outside the time window.

Both cores (``server.ServerCore``, ``client.ClientCore``) answer the calls of
``Core``, which is all the event loop uses. Endpoints are opaque: whatever
the transport hands in with a datagram, stored and handed back to send.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Protocol

if TYPE_CHECKING:
    from .epochs import KeyTimer
    from .restart import RestartBounds

Datagrams = list[tuple[bytes, Any]]  # (datagram, endpoint) pairs


class Delivery(NamedTuple):
    """What a batch of received datagrams, or of packets read from TUN, produced."""

    to_tun: list[bytes]  # inner IP packets for the TUN device (ICMP errors too)
    to_network: Datagrams  # datagrams to send


class Core(Protocol):
    """The one surface the event loop drives; nothing here raises on bad input:
    what is refused is counted in ``drops`` (reason -> count)."""

    drops: Counter
    filter_version: int  # changes whenever filtered_client_ids() does

    def datagrams_received(self, datagrams: Iterable[tuple[bytes, Any]], now: float) -> Delivery:
        """Authenticate and open a batch from the network."""

    def tun_packets_received(self, packets: Iterable[bytes], now: float) -> Delivery:
        """Seal a batch of IP packets read from the TUN device; what cannot be
        delivered may be answered with packets for the TUN device (ICMP errors,
        core/pmtu.py)."""

    def next_timer(self) -> float | None:
        """The wall-clock time (Unix seconds) at which ``handle_timer`` has
        work, possibly in the past (due now); None for nothing scheduled."""

    def handle_timer(self, now: float) -> Datagrams:
        """Do what is due at ``now``; nothing if called early."""

    def clock_stepped(self, delta: float) -> None:
        """The wall clock jumped by ``delta`` seconds (NTP, an operator): move
        the timer's deadlines with it, so a clock stepped back does not delay
        them by the step. Timestamps on the wire are not touched."""

    def bounds_to_save(self) -> dict[int, int] | None:
        """Restart bounds (core/restart.py) the shell must write durably, then
        report with ``bounds_saved``; None when nothing needs writing."""

    def bounds_saved(self, table: Mapping[int, int], now: float) -> Delivery:
        """The table from ``bounds_to_save`` is on disk; returns what the
        datagrams that waited for it delivered."""

    def bounds_at_stop(self) -> dict[int, int] | None:
        """Restart bounds to write once nothing more will be opened (a clean
        stop): each down to the newest timestamp accepted (restart.at_stop);
        None when bounds are not kept."""

    def held_datagrams(self) -> int:
        """How many authentic datagrams wait for the restart bounds to be on
        disk (at most restart.HELD_MAX): the shell writes at once while any
        do, and reads no more from the network while HELD_MAX do."""

    def save_wanted(self, *, bounds: bool, keys: bool) -> bool:
        """Whether ``bounds_to_save`` (if ``bounds``) or ``keys_to_save`` (if
        ``keys``) would return a table now, without building it: that walks
        every peer (11 ms at 65,536 clients, bench/scale_bench.py)."""

    def keys_to_save(self) -> dict[int, tuple[int, bytes]] | None:
        """Keys that moved forward (core/epochs.py), client ID -> (epoch, key),
        for the shell to write to the key store, then report with
        ``keys_saved``; None when nothing needs writing."""

    def keys_saved(self, table: dict[int, tuple[int, bytes]]) -> None:
        """The table from ``keys_to_save`` is on disk."""

    def filtered_client_ids(self) -> list[int]:
        """Client IDs whose datagrams the transport should have the kernel
        drop, sorted (core/filtered.py); always empty on a client."""

    def status(self) -> dict[str, Any]:
        """Counters and peers for an operator; never key material."""


class SavedState:
    """The calls of ``Core`` about the state files, which both cores answer
    alike: from their ``restart`` (restart.RestartBounds) and ``key_timer``
    (epochs.KeyTimer), over the peers ``saved_peers`` gives (a server's
    clients, a client's server), each table keyed by client ID."""

    restart: RestartBounds
    key_timer: KeyTimer

    def saved_peers(self) -> Iterable[Any]:
        """The peers whose bounds and keys are saved."""
        raise NotImplementedError

    def bounds_to_save(self) -> dict[int, int] | None:
        """Restart bounds to write before relying on them (client ID -> Unix
        seconds in that client's clock), or None if none needs raising."""
        return self.restart.to_save(self.saved_peers())

    def bounds_at_stop(self) -> dict[int, int] | None:
        """The restart bounds to write at a clean stop (restart.at_stop), or None."""
        return self.restart.at_stop(self.saved_peers())

    def held_datagrams(self) -> int:
        """How many authentic datagrams wait for the restart bounds to be
        saved (at most restart.HELD_MAX; core/restart.py)."""
        return len(self.restart.held)

    def save_wanted(self, *, bounds: bool, keys: bool) -> bool:
        """Whether bounds_to_save (if ``bounds``) or keys_to_save (if ``keys``)
        would return a table now, without building it."""
        return (bounds and bool(self.restart.unsaved)) or (keys and self.key_timer.unsaved)

    def keys_to_save(self) -> dict[int, tuple[int, bytes]] | None:
        """Each peer's oldest kept key, client ID -> (epoch, key), to replace
        the key store (or a client's key file) with, erasing older keys from
        disk; None if unchanged."""
        return self.key_timer.to_save(self.saved_peers())

    def keys_saved(self, table: dict[int, tuple[int, bytes]]) -> None:
        """``table`` from ``keys_to_save`` is durably written; keys that moved
        on since it was taken stay to be saved."""
        self.key_timer.saved(table, self.saved_peers())
