"""Forward secrecy without a handshake: keys that move forward with time.

Time is cut into epochs of ``epoch_seconds`` (configured alike at both ends, 60
to 86,400, one hour by default); a datagram's timestamp says its epoch,
``ts // epoch_seconds``. Each epoch has its own 64-byte key, derived from the
previous epoch's by HKDF-SHA256 (RFC 5869) with no salt and the info string
"vpncrypt v2 epoch" followed by the new epoch's number (8 bytes): a one-way
step, so a key stolen today opens nothing sent in an earlier epoch once that
epoch's key is erased. The chain is deterministic: two servers holding copies
of one key agree on every later key without talking to each other.

An end keeps only the oldest key it still needs, for the epoch of
``now - KEEP_SECONDS`` (it must open datagrams stamped that far back, and
answer clocks that far off), and derives the later ones from it; older keys
are erased from memory here and from disk by the shell, once a peer has
vouched for ``now`` (KeyTimer).
"""

from __future__ import annotations

from typing import Iterable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .replay import NO_TIMESTAMP
from .wire import KEY_LEN, TIMESTAMP_MOD

EPOCH_INFO = b"vpncrypt v2 epoch"
DEFAULT_EPOCH_SECONDS = 3600
MIN_EPOCH_SECONDS = 60
MAX_EPOCH_SECONDS = 86400
# How far back a key is kept: the oldest timestamp a receiver can rebuild
# (wire.rebuild_timestamp gives [now - 512, now + 511]).
KEEP_SECONDS = TIMESTAMP_MOD // 2
# Seconds behind its clock an end erases keys when no peer has vouched for
# that clock since its start (KeyTimer): a day covers a hardware clock kept in
# local time (at most 14 hours off UTC) until NTP sets the clock right.
MAX_HOLD = 86400.0
# Seconds between looks for a peer's word while erasing is held back, besides
# the look a core asks for when it accepts data or a probe (KeyTimer.heard): a
# client hears its server in nothing else. A server's idle clients vouch with
# keepalives, which it does not see one by one: it looks every second (a look
# that finds no newer word reads the peers' newest timestamps and erases
# nothing: milliseconds at 65,536 clients).
HOLD_RETRY = 60.0
SERVER_HOLD_RETRY = 1.0
# Peers ``KeyTimer.advance`` looks at in one call, for the newest timestamp
# accepted and then to erase: a few milliseconds of the event loop at most,
# even where each derives a key (65,536 idle clients at an epoch's end).
HEARD_SLICE = 16384
KEY_SLICE = 512


def next_epoch_key(key: bytes, epoch: int) -> bytes:
    """The key of ``epoch`` from the key of ``epoch - 1``."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None,
                info=EPOCH_INFO + epoch.to_bytes(8, "big")).derive(key)


def epoch_key(key: bytes, key_epoch: int, epoch: int) -> bytes:
    """The key of ``epoch`` from ``key``, the key of ``key_epoch``; raises
    ValueError for an epoch before ``key_epoch`` (that key is gone for good)."""
    if epoch < key_epoch:
        raise ValueError(f"the key of epoch {epoch} cannot be derived from that of epoch {key_epoch}")
    for step in range(key_epoch + 1, epoch + 1):
        key = next_epoch_key(key, step)
    return key


def same_chain(key: bytes, key_epoch: int, other: bytes, other_epoch: int) -> bool:
    """True if the two keys give the same key for every epoch both reach
    (one was derived from the other, or they are equal)."""
    if key_epoch <= other_epoch:
        return epoch_key(key, key_epoch, other_epoch) == other
    return epoch_key(other, other_epoch, key_epoch) == key


def oldest_needed_epoch(now: float, epoch_seconds: int) -> int:
    """The epoch of the oldest timestamp an end may still have to open at ``now`` (Unix seconds)."""
    return (int(now) - KEEP_SECONDS) // epoch_seconds


def next_advance(now: float, epoch_seconds: int) -> float:
    """When (Unix seconds) the oldest needed epoch next moves on, so keys must be erased."""
    return float((oldest_needed_epoch(now, epoch_seconds) + 1) * epoch_seconds + KEEP_SECONDS)


class KeyTimer:
    """When a core's peers must next erase keys, and whether what moved is saved.

    Erasing is the one thing a wrong clock cannot take back. A clock hours
    ahead (a machine that booted before NTP set it, its hardware clock kept in
    local time; a step that is undone) would erase the key of the epoch that
    is really current, and the other end would be refused until real time
    caught up with the epoch of the oldest key left. So this end's clock is
    trusted to erase only as far as a peer vouches for it: no key is erased
    that the newest timestamp accepted from any peer (whose clock agreed with
    ours within the time window then) still needs, and without a word from
    any peer since the start, the clock alone erases keys only MAX_HOLD
    seconds behind it.
    """

    def __init__(self, now: float, epoch_seconds: int, retry: float = HOLD_RETRY) -> None:
        self.epoch_seconds = epoch_seconds
        self.retry = retry  # seconds between looks while held back
        self.due = now  # when ``advance`` next has work (Unix seconds): the core calls it at its start
        self.unsaved = False
        self.kept_epoch: int | None = None  # the oldest epoch the last round kept
        # The round under way: its peers, how many of them were looked at for
        # the newest timestamp accepted (``heard``), then those left to erase.
        self._round: list = []
        self._scanned = 0
        self._heard = 0  # the newest accepted timestamp seen so far; 0: none, older than any bound
        self._erasing = False
        self._held = False  # the round kept a key that the clock alone would erase

    def stepped(self, delta: float) -> None:
        """The wall clock jumped by ``delta`` seconds: the next look stays as far off in real time."""
        self.due += delta

    def advance(self, peers: Iterable, now: float) -> None:
        """If it is time, erase in every peer of ``peers`` (re-iterable) the keys
        that neither ``now`` (Unix seconds) nor the newest timestamp accepted
        from any of them needs (see the class). A round over more peers than
        one call takes (HEARD_SLICE to find that timestamp, then KEY_SLICE to
        erase) takes several, each due at once, so that the event loop serves
        datagrams between them (bench/scale_bench.py)."""
        if now < self.due:
            return
        if not self._round:
            self._round, self._scanned, self._heard, self._erasing = list(peers), 0, 0, False
        if not self._erasing:
            for peer in self._round[self._scanned:self._scanned + HEARD_SLICE]:
                heard = peer.window.newest_ts
                if heard != NO_TIMESTAMP and heard > self._heard:
                    self._heard = heard
            self._scanned += HEARD_SLICE
            if self._scanned < len(self._round):
                self.due = now
                return
            vouched = max(now - MAX_HOLD, min(now, self._heard))
            kept_epoch = oldest_needed_epoch(vouched, self.epoch_seconds)
            if self._held and kept_epoch == self.kept_epoch:
                # Held back still, and no newer word: the last round erased all this one would.
                self._round = []
                self.due = now + self.retry
                return
            self.kept_epoch = kept_epoch
            self._erasing, self._held = True, False
        needed = oldest_needed_epoch(now, self.epoch_seconds)
        looked_at = self._round[-KEY_SLICE:]
        del self._round[-KEY_SLICE:]
        for peer in looked_at:
            self.unsaved |= peer.advance_keys(self.kept_epoch)  # type: ignore[arg-type]
            self._held = self._held or peer.keys.key_epoch < needed
        if self._round:
            self.due = now
        else:
            # Held back: look again soon for a peer's word.
            self.due = now + self.retry if self._held else next_advance(now, self.epoch_seconds)

    def heard(self, now: float) -> None:
        """The core accepted data or a path MTU probe (or its acknowledgement)
        at ``now``: if erasing is held back for want of a peer's word, look
        again at once rather than ``retry`` seconds after the last look."""
        if self._held and not self._round and self.due > now:
            self.due = now

    def adopt(self, peer) -> None:
        """A peer made after the last ``advance`` (a client added or re-keyed by
        a reload) erases what the others erased then."""
        if self.kept_epoch is not None:
            self.unsaved |= peer.advance_keys(self.kept_epoch)

    def to_save(self, peers) -> dict[int, tuple[int, bytes]] | None:
        """Client ID -> (epoch, key) of every peer's oldest kept key, or None if
        nothing moved since the last save."""
        if not self.unsaved:
            return None
        return {peer.client_id: (peer.keys.key_epoch, peer.keys.oldest) for peer in peers}

    def saved(self, table: dict[int, tuple[int, bytes]], peers) -> None:
        """``table`` from ``to_save`` is on disk. Written while the keys went
        on moving (the shell writes in a thread of its own), it leaves them unsaved."""
        if self.to_save(peers) == table:
            self.unsaved = False


class EpochKeys:
    """One peer's chain: the oldest key kept and the later ones derived from it, on demand.

    ``key`` is the key of epoch ``key_epoch``. ``for_epoch`` raises ValueError
    for an epoch already erased; ``advance`` erases what ``now`` no longer needs.
    """

    # The oldest key, and those derived after it in epoch order (key_epoch + 1,
    # + 2 ...): a tuple, the shared empty one until a later key is needed, as
    # a dict per peer cost 13 MiB at 65,536 clients (bench/scale_bench.py).
    __slots__ = ("key_epoch", "oldest", "_later")

    def __init__(self, key: bytes, key_epoch: int) -> None:
        if len(key) != KEY_LEN:
            raise ValueError(f"a key is {KEY_LEN} bytes, not {len(key)}")
        self.key_epoch = key_epoch
        self.oldest = key  # the key of key_epoch: what is stored, and all that is
        self._later: tuple[bytes, ...] = ()

    def for_epoch(self, epoch: int) -> bytes:
        steps = epoch - self.key_epoch
        if steps < 0:
            raise ValueError(f"the key of epoch {epoch} was erased")
        if steps == 0:
            return self.oldest
        if steps > len(self._later):
            later = list(self._later)
            key = later[-1] if later else self.oldest
            for step in range(self.key_epoch + len(later) + 1, epoch + 1):
                key = next_epoch_key(key, step)
                later.append(key)
            self._later = tuple(later)
        return self._later[steps - 1]

    def same_chain(self, key: bytes, key_epoch: int) -> bool:
        """True if ``key`` (of ``key_epoch``) and this chain give the same keys."""
        if key_epoch >= self.key_epoch:
            return self.for_epoch(key_epoch) == key
        return epoch_key(key, key_epoch, self.key_epoch) == self.oldest

    def advance(self, epoch: int) -> bool:
        """Keep nothing older than ``epoch``; True if the oldest key moved (it must be saved)."""
        if epoch <= self.key_epoch:
            return False
        self.oldest = self.for_epoch(epoch)
        self._later = self._later[epoch - self.key_epoch:]
        self.key_epoch = epoch
        return True
