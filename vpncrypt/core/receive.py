"""Opening a batch of datagrams: the checks every datagram passes, in cost order.

Everything that can be decided from the cleartext header (length, kind, client
ID, timestamp, replay window) is decided before the cipher runs, so garbage
costs a small fraction of a real decryption. State (replay window, endpoint,
statistics) changes only after authentication.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable

from cryptography.exceptions import InvalidTag

from . import drops as reasons
from . import siv
from .inner import PartialChecksumPacket, PrefixTable, checksum_location, well_formed
from .peer import Peer
from .replay import NEWEST, REORDERED, REPLAYED, RING_INDEX_MASK, SUPERSEDED, TOO_OLD, WINDOW
from .restart import HELD_MAX, SAVE_LEAD
from .wire import (
    AD_SUFFIX, COUNTER_MASK, HEADER, HEADER_LEN, KIND_DATA, KIND_DATA_PARTIAL, KIND_KEEPALIVE, KIND_PROBE,
    KIND_PROBE_ACK, MAX_DATAGRAM, OVERHEAD, PROBE, PROBE_ACK, PROBE_ACK_MIN, PROBE_MIN, TIMESTAMP_BITS, TIMESTAMP_MASK,
    TIMESTAMP_MOD, TO_SERVER, VERSION_1_KINDS,
)

TIME_ANSWER_INTERVAL = 2.0  # seconds between two authentications of a peer's out-of-window datagrams

# The compiled batch path (vpncrypt/_batch.c), None where it is not built;
# used only while the compiled AES-SIV is the class in use (siv.choose).
_open_run = siv.compiled_open_run
# The drops it counts itself, in the order of its plan's reasons tuple.
_RUN_REASONS = (
    reasons.BAD_LENGTH, reasons.OLD_VERSION, reasons.UNKNOWN_KIND, reasons.UNKNOWN_CLIENT, reasons.REPLAYED,
    reasons.INNER_MALFORMED, reasons.INNER_SOURCE_NOT_ALLOWED, reasons.OUTSIDE_TIME_WINDOW,
)

_WINDOW_DROPS = {REPLAYED: reasons.REPLAYED, TOO_OLD: reasons.COUNTER_TOO_OLD, SUPERSEDED: reasons.SUPERSEDED}
_STALE = (SUPERSEDED, TOO_OLD)  # window verdicts a peer behind in time gets; answered with the time


def _may_answer(peer: Peer, ts: int, now: float) -> bool:
    """At most one authentication for a time answer a TIME_ANSWER_INTERVAL per
    peer, within its failure budget, for an epoch whose key is still here."""
    if now < peer.time_answer_due or ts // peer.epoch_seconds < peer.keys.key_epoch:
        return False
    if peer.failure_credit < 1 and not peer.refill_failure_credit(now):
        return False
    peer.time_answer_due = now + TIME_ANSWER_INTERVAL
    return True


def _authentic(peer: Peer, datagram: bytes, ts: int, direction: int, server_id: int, now: float,
               drops: Counter) -> bool:
    """Authenticate a datagram that will not be accepted, to answer it with the
    time; a forgery is counted (auth_failed) and spends the failure budget."""
    try:
        peer.new_context(ts // peer.epoch_seconds).decrypt(
            datagram[HEADER_LEN:], [datagram[:HEADER_LEN] + AD_SUFFIX.pack(direction, server_id, ts)])
    except InvalidTag:
        drops[reasons.AUTH_FAILED] += 1
        peer.auth_failures += 1
        peer.refill_failure_credit(now)
        peer.failure_credit -= 1
        return False
    return True


def _left_by(run, datagrams: list, opened: list, drops: Counter, plan: tuple):
    """The datagrams the compiled ``run`` leaves to the Python loop, one at a
    time: it decides the ones before each, and the next call to it comes
    only once the loop has decided the one yielded, so every datagram is
    decided in order, by one path or the other."""
    index, count = 0, len(datagrams)
    while True:
        index = run(datagrams, index, opened, drops, plan)
        if index >= count:
            return
        yield datagrams[index]
        index += 1


def open_datagrams(
    datagrams: Iterable[tuple[bytes, Any]],
    now: float,
    *,
    direction: int,
    server_id: int,
    find_peer: Callable[[int], Peer | None],
    sources: PrefixTable[Peer],
    time_window: int,
    drops: Counter,
    follow_source: bool = True,
    unsaved: set | None = None,
    held: list | None = None,
    max_datagram: int = MAX_DATAGRAM,
    skewed: list | None = None,
    limited: list | None = None,
    probes: list | None = None,
) -> list[tuple[Peer, bytes]]:
    """Authenticate, decrypt and filter; return (peer, inner packet) for each data packet.

    ``datagrams`` are (bytes, endpoint) pairs; ``now`` is Unix seconds;
    ``direction`` the wire.TO_* value the datagrams were sealed for;
    ``find_peer`` maps a client ID to its Peer; ``sources`` the tunnel
    addresses each peer may send from. Nothing is raised: every datagram
    refused adds one to ``drops[reason]`` (see drops.py), in the order of
    the checks in docs/PROTOCOL.md. With ``follow_source`` (the server), a
    datagram that authenticates, is fresh and is the newest from its peer
    moves that peer's endpoint to the address it came from; a client keeps
    the server address of its config, whatever a datagram's source. A peer
    whose restart bound must be raised (restart.py) is added to ``unsaved``,
    and a datagram that must wait for it to ``held``. With ``skewed`` (the
    server), an authentic datagram outside the time window (checked at most
    once every TIME_ANSWER_INTERVAL seconds per peer, as a cipher call on
    what may be garbage) adds (peer, timestamp, counter, endpoint) to it, to
    be answered with the server's time; it is still dropped and counted. So
    does one refused as superseded or counter_too_old (a peer behind in time).
    With ``limited`` (the server), the peer of each datagram refused as
    auth_failures_limited is appended to it (core/filtered.py counts them).

    Path MTU probes (docs/PROTOCOL.md section 8) are the kind of their
    direction: a probe (0x25) sealed for the server, an acknowledgement
    (0x26) sealed for the client; the other end's kind is unknown_kind. They
    pass the same checks as data, record their counter and move the endpoint
    as data does, and are never delivered as packets: an authentic one whose
    probed size is not its length is counted (bad_probe), any other adds
    (peer, probed size, confirmed size, endpoint) to ``probes`` (confirmed
    size 0 for an acknowledgement, which carries none).

    Where the compiled AES-SIV is in use, the compiled batch path
    (vpncrypt/_batch.c) decides the datagrams of the common path, as this
    loop would, and leaves the others to it.
    """
    now_s = int(now)
    ts_base = now_s - TIMESTAMP_MOD // 2
    ts_min = now_s - time_window
    ts_max = now_s + time_window
    unpack = HEADER.unpack_from
    longest_match = sources.longest_match
    hosts_get = sources.hosts.get
    suffixes: dict[int, bytes] = {}
    opened: list[tuple[Peer, bytes]] = []
    probe_kind, probe_min = (KIND_PROBE, PROBE_MIN) if direction == TO_SERVER else (KIND_PROBE_ACK, PROBE_ACK_MIN)
    if _open_run is not None and siv.AESSIV is siv.CompiledAESSIV:
        plan = (now_s, time_window, direction, server_id, find_peer, sources.hosts, sources.remembered,
                longest_match, well_formed, checksum_location, PartialChecksumPacket, follow_source, max_datagram,
                probe_kind, _RUN_REASONS, skewed is not None)
        datagrams = _left_by(_open_run, list(datagrams), opened, drops, plan)
    for datagram, address in datagrams:
        size = len(datagram)
        if size < OVERHEAD or size > max_datagram:
            drops[reasons.BAD_LENGTH] += 1
            continue
        word0, client_id, counter = unpack(datagram)
        kind = word0 >> TIMESTAMP_BITS
        if kind != KIND_DATA:
            if kind == KIND_KEEPALIVE:
                if size != OVERHEAD:
                    drops[reasons.BAD_LENGTH] += 1
                    continue
            elif kind == probe_kind:
                if size < probe_min:
                    drops[reasons.BAD_LENGTH] += 1
                    continue
            elif kind != KIND_DATA_PARTIAL:
                drops[reasons.OLD_VERSION if kind in VERSION_1_KINDS else reasons.UNKNOWN_KIND] += 1
                continue
        peer = find_peer(client_id)
        if peer is None:
            drops[reasons.UNKNOWN_CLIENT] += 1
            continue
        ts = ts_base + ((word0 - ts_base) & TIMESTAMP_MASK)
        if ts < ts_min or ts > ts_max:
            if skewed is not None and _may_answer(peer, ts, now):
                if not _authentic(peer, datagram, ts, direction, server_id, now, drops):
                    continue
                skewed.append((peer, ts, counter, address))
            drops[reasons.OUTSIDE_TIME_WINDOW] += 1
            peer.time_drops += 1
            continue
        window = peer.window
        # Fast path of window.check for the common case, the next counters in
        # order: ahead by less than WINDOW and not older in time (which also
        # puts ts at or above the floor, and is never true of an empty window).
        ahead = (counter - window.newest_counter) & COUNTER_MASK
        if 0 < ahead < WINDOW and ts >= window.newest_ts:
            verdict = NEWEST
        else:
            verdict = window.check(ts, counter)
            if verdict < 0:
                if verdict in _STALE and skewed is not None and _may_answer(peer, ts, now):
                    # Stamped at or below what this end accepted before it
                    # restarted, or a restarted peer stamping behind its
                    # predecessor: a peer whose clock is behind ours learns our
                    # time, and is heard from its next datagram.
                    if not _authentic(peer, datagram, ts, direction, server_id, now, drops):
                        continue
                    skewed.append((peer, ts, counter, address))
                    # Counted by name only once authentic: the ID and stamp
                    # travel in clear, and anyone may send stale ones.
                    peer.stale_drops += 1
                drops[_WINDOW_DROPS[verdict]] += 1
                continue
        suffix = suffixes.get(ts)
        if suffix is None:
            suffix = suffixes[ts] = AD_SUFFIX.pack(direction, server_id, ts)
        if peer.failure_credit < 1 and not peer.refill_failure_credit(now):
            # Datagrams naming this client fail authentication faster than any
            # real one would: spend no more cipher work on its ID for now.
            drops[reasons.AUTH_FAILURES_LIMITED] += 1
            if limited is not None:
                limited.append(peer)
            continue
        epoch = ts // peer.epoch_seconds
        aead = peer.contexts.get(epoch)
        if aead is None and epoch < peer.keys.key_epoch:
            # Its key is erased: older than anything this end may still open
            # (only after this end's clock was stepped back).
            drops[reasons.OUTSIDE_TIME_WINDOW] += 1
            peer.time_drops += 1
            continue
        try:
            # A context is kept only for a datagram that authenticates, so
            # garbage never pushes real peers' contexts out of the budget.
            packet = (aead or peer.new_context(epoch)).decrypt(
                datagram[HEADER_LEN:], [datagram[:HEADER_LEN] + suffix])
        except InvalidTag:
            drops[reasons.AUTH_FAILED] += 1
            peer.auth_failures += 1
            peer.refill_failure_credit(now)  # what the time since the last refill earned, at most a burst
            peer.failure_credit -= 1
            continue
        if aead is None:
            peer.keep_context(epoch)
        if ts >= peer.save_at:
            # Near or past the saved restart bound: ask for a higher one, and
            # past it accept nothing until it is saved.
            if ts + SAVE_LEAD > peer.wanted_bound:
                peer.wanted_bound = ts + SAVE_LEAD
            peer.clock_sample = (now, ts, peer.rx_packets)
            if unsaved is not None:
                unsaved.add(peer)
            if ts > peer.durable_bound:
                if held is not None and len(held) < HELD_MAX:
                    held.append((datagram, address))
                else:
                    drops[reasons.PENDING_RESTART_STATE] += 1
                continue
        if verdict == NEWEST:
            # Fast path of window.commit(ts, counter, NEWEST).
            if counter & 7 < ahead:  # counter entered a new ring byte
                window.slide(counter)
            window.newest_counter = counter
            window.newest_ts = ts
            window.ring[(counter >> 3) & RING_INDEX_MASK] |= 1 << (counter & 7)
        else:
            window.commit(ts, counter, verdict)
        if follow_source and verdict != REORDERED and address != peer.endpoint:
            # The freshest proof of where the peer is now.
            if peer.endpoint is not None:
                peer.roams += 1
            peer.endpoint = address
        if kind == KIND_KEEPALIVE:
            continue
        if kind == probe_kind:
            # Its padding goes nowhere; only its fields are looked at.
            if kind == KIND_PROBE:
                probed, confirmed = PROBE.unpack_from(packet)
            else:
                (probed,), confirmed = PROBE_ACK.unpack_from(packet), 0
            if probed != size:
                drops[reasons.BAD_PROBE] += 1
            elif probes is not None:
                probes.append((peer, probed, confirmed, address))
            continue
        packet = well_formed(packet)
        if packet is None:
            drops[reasons.INNER_MALFORMED] += 1
            continue
        # The inner source must be an address this peer owns (cryptokey routing).
        source = packet[12:16] if packet[0] >> 4 == 4 else packet[8:24]
        size = len(packet)
        owner = hosts_get(source)
        if owner is None:
            owner = longest_match(source)
        if owner is not peer:
            drops[reasons.INNER_SOURCE_NOT_ALLOWED] += 1
            continue
        if kind == KIND_DATA_PARTIAL:
            if checksum_location(packet) is None:
                drops[reasons.INNER_MALFORMED] += 1
                continue
            packet = PartialChecksumPacket(packet)
        peer.rx_packets += 1
        peer.rx_bytes += size
        opened.append((peer, packet))
    return opened
