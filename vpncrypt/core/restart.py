"""Replay protection across a restart of the receiver, whatever the peers' clocks.

The replay window lives in memory, so after a restart the receiver must refuse
everything it accepted before. Its own start time is no bound: a peer whose
clock runs ahead stamps datagrams after it. What is kept instead, per peer, is
a timestamp in that peer's own clock that no accepted datagram exceeded: the
*restart bound*. It is saved before it is relied on (written ahead): a
datagram stamped above the saved bound is dropped (``pending_restart_state``)
until a higher bound is saved, so after a restart ``floor = bound + 1`` refuses
everything accepted before, and refuses nothing a peer sends later. Bounds run
``SAVE_LEAD`` seconds ahead of the newest accepted timestamp, so a peer sending
steadily asks for one save a second and never waits for one (if saves take
under a second), and a restarted receiver hears a peer with a correct clock
within ``SAVE_LEAD`` seconds of its last datagram. A datagram that had to wait
is kept (at most ``HELD_MAX``) and opened again once the save is done.

A peer that pauses would make its first datagram after the pause wait for a
save (two fsyncs, milliseconds to tens of them): every keystroke of an
interactive session after a second of thought. So for ``KEEP_AHEAD``
seconds after a peer's last data packet its bound is kept ahead of where its
clock should be by now (``keep_ahead``, once a second), as if it had gone on
sending. After a crash of the receiver such a peer is heard again about
``SAVE_LEAD + 1`` seconds after the receiver's last save, as a steady sender
is (at most a second more: its clock is known to within a second), and never
more than ``KEEP_AHEAD + SAVE_LEAD + 1`` seconds after its last accepted
timestamp, whatever the clocks do; after a clean stop (``at_stop``) as soon
as its clock passes its last datagram's second.

A peer with no saved bound in a state that exists was never accepted, so
nothing from it is refused. Where the state itself is missing (first start, or
lost) every peer falls back to version 1's rule, refusing what is stamped
before the receiver's own start (docs/PROTOCOL.md, section 6).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

SAVE_LEAD = 1  # seconds a saved bound runs ahead of the newest accepted timestamp
KEEP_AHEAD = 30.0  # seconds after a peer's last data packet that its bound is kept ahead of its clock
KEEP_AHEAD_INTERVAL = 1.0  # seconds between two raises of the bounds kept ahead
# Peers keep_ahead looks at in one call: at about 0.7 us a peer (bench/scale_bench.py)
# a call holds the event loop a few milliseconds, however many clients are active.
KEEP_AHEAD_SLICE = 4096
HELD_MAX = 256  # authentic datagrams kept while their bound is being saved, then opened again
UNTRACKED = 1 << 64  # a bound no timestamp reaches: restart bounds are not kept


class RestartBounds:
    """The bounds of one receiver: loaded at start, asked for, saved, relied on.

    ``saved`` maps client IDs to the bounds read back at start (Unix seconds in
    each peer's clock), or is None where this receiver keeps no state (tests,
    benchmarks): then every peer is UNTRACKED and nothing is ever asked for.
    ``lost`` says the state should exist but does not.
    """

    def __init__(self, saved: Mapping[int, int] | None, lost: bool = False) -> None:
        self.tracking = saved is not None
        self.lost = lost
        self.loaded = dict(saved or {})  # kept: a removed client's bound still guards its old datagrams
        self.unsaved: set = set()  # peers whose wanted bound is above their saved one
        self.held: list = []  # (datagram, endpoint) pairs waiting for a save
        # Peers whose bound may be kept ahead (keep_ahead): peer -> [its
        # rx_packets when last looked at, local time it was last seen sending data].
        self.active: dict = {}
        self.keep_ahead_due: float | None = None  # local Unix seconds of the next keep_ahead; None: nobody to keep
        self._round: list = []  # peers of the keep_ahead round under way not yet looked at
        self._round_started = 0.0  # local Unix seconds

    def start_peer(self, peer, now: float) -> None:
        """Set a new peer's floor and saved bound: from the state read at
        start, or (never heard) its start second, as without state."""
        if not self.tracking:
            return
        bound = self.loaded.get(peer.client_id)
        if bound is not None:
            peer.window.floor = bound + 1
        elif self.lost:
            bound = int(now)  # version 1: the floor stays at this receiver's start
        else:
            bound = 0  # never accepted: nothing to refuse
            peer.window.floor = 0
        peer.durable_bound = bound
        peer.save_at = bound - SAVE_LEAD + 1

    def to_save(self, peers: Iterable) -> dict[int, int] | None:
        """The whole table to write, client ID -> bound, or None if no bound
        needs raising."""
        if not self.unsaved:
            return None
        table = dict(self.loaded)
        table.update((peer.client_id, max(peer.durable_bound, peer.wanted_bound)) for peer in peers
                     if peer.durable_bound != UNTRACKED)
        return table

    def saved(self, table: Mapping[int, int], peers: Mapping[int, object]) -> None:
        """``table`` (from ``to_save``) is on disk: rely on it. The caller opens
        ``held`` again."""
        self.loaded = dict(table)
        for client_id, bound in table.items():
            peer = peers.get(client_id)
            if peer is not None and bound > peer.durable_bound:  # type: ignore[attr-defined]
                peer.durable_bound = bound  # type: ignore[attr-defined]
                peer.save_at = bound - SAVE_LEAD + 1  # type: ignore[attr-defined]
        for peer in self.unsaved:
            if peer.clock_sample is not None and peer not in self.active:
                # Kept ahead from the first keep_ahead on only if data came since the sample.
                self.active[peer] = [peer.clock_sample[2], float("-inf")]
                due = peer.clock_sample[0] + KEEP_AHEAD_INTERVAL
                if self.keep_ahead_due is None or due < self.keep_ahead_due:
                    self.keep_ahead_due = due
        self.unsaved = {peer for peer in self.unsaved if peer.wanted_bound > peer.durable_bound}

    def at_stop(self, peers: Iterable) -> dict[int, int] | None:
        """The whole table to write once the receiver accepts nothing more (a
        clean stop), client ID -> bound: each peer heard from gets the newest
        timestamp accepted from it, below the bound kept ahead, since nothing
        above it was accepted; the others keep theirs. A peer is then heard
        again after a restart as soon as its clock passes its last datagram's
        second. None where bounds are not kept."""
        if not self.tracking:
            return None
        table = dict(self.loaded)
        for peer in peers:
            if peer.durable_bound != UNTRACKED:
                heard = peer.window.newest_counter >= 0
                table[peer.client_id] = peer.window.newest_ts if heard else peer.durable_bound
        return table

    def keep_ahead(self, peers: Mapping[int, object], now: float) -> None:
        """Ask for the bounds of the peers that sent data within KEEP_AHEAD
        seconds before ``now`` (local Unix seconds, the clock ``open_datagrams``
        was given) to run ahead of their clocks as a steady sender's do: to
        the newest timestamp a peer may stamp before the next call, a second
        from now. A peer's clock is taken from ``clock_sample``, the last
        datagram that asked for a bound (its clock then, to within a second),
        and it sent data if its rx_packets moved since that datagram;
        the bound never runs more than KEEP_AHEAD + SAVE_LEAD seconds past
        its newest accepted timestamp. ``peers`` maps client IDs to the peers in
        use: any other is forgotten. Sets ``keep_ahead_due``: a round over
        more than KEEP_AHEAD_SLICE peers takes several calls, each due at once
        (the event loop serves datagrams between them), and the next round is
        due KEEP_AHEAD_INTERVAL after the first call of this one. Does nothing
        before ``keep_ahead_due``, or when it is None."""
        if self.keep_ahead_due is None or now < self.keep_ahead_due:
            return
        if not self._round:
            self._round = list(self.active)
            self._round_started = now
        looked_at = self._round[-KEEP_AHEAD_SLICE:]
        del self._round[-KEEP_AHEAD_SLICE:]
        for peer in looked_at:  # each still in active: only this loop takes peers out
            seen = self.active[peer]
            if peers.get(peer.client_id) is not peer:
                del self.active[peer]
                continue
            if peer.rx_packets != seen[0]:
                seen[0], seen[1] = peer.rx_packets, now
            if now - seen[1] > KEEP_AHEAD or peer.durable_bound == UNTRACKED:
                del self.active[peer]
                continue
            sampled_at, sampled_ts, _ = peer.clock_sample
            # Its newest stamp until the next keep_ahead, a second from now: its
            # clock was sampled_ts + f at sampled_at (0 <= f < 1), so it is at most
            # sampled_ts + ceil(now - sampled_at) + 1 by then; SAVE_LEAD is that + 1.
            expected = sampled_ts + math.ceil(now - sampled_at)
            wanted = min(expected, peer.window.newest_ts + int(KEEP_AHEAD)) + SAVE_LEAD
            if wanted > peer.wanted_bound:
                peer.wanted_bound = wanted
            if wanted > peer.durable_bound:
                self.unsaved.add(peer)
        if self._round:
            self.keep_ahead_due = now
        else:
            self.keep_ahead_due = self._round_started + KEEP_AHEAD_INTERVAL if self.active else None

    def stepped(self, delta: float) -> None:
        """The local clock jumped by ``delta`` seconds: move the local times
        kept with it, so a step neither lengthens nor ends keeping ahead."""
        for peer, seen in self.active.items():
            seen[1] += delta
            sampled_at, sampled_ts, received = peer.clock_sample
            peer.clock_sample = (sampled_at + delta, sampled_ts, received)
        self._round_started += delta
        if self.keep_ahead_due is not None:
            self.keep_ahead_due += delta
