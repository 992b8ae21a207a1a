"""The compiled batch path held to the Python one: the same traffic, three ways, the same results.

``receive.open_datagrams`` hands a batch to the compiled ``_open_run``
(vpncrypt/_batch.c) when the compiled AES-SIV is the class in use, and
``Peer.seal`` its payloads to ``AesSiv.seal_batch``; the Python code stays the
specification (issue 15). Every scenario here is built once, as bytes and
times, and run through three fresh cores:

- ``batch``: the compiled class with the compiled batch path;
- ``loop``: the compiled class with ``receive._open_run`` set to None, so the
  Python loop does everything (sealing still goes through ``seal_batch``);
- ``pure``: cryptography's class (``siv.CryptographyAESSIV``), Python only;

the first two with each engine of the compiled class's MAC half that this
CPU has (``vpncrypt._siv.ENGINES``: AES-NI with 8 CMACs interleaved, which
open_run's groups and seal_batch use, and OpenSSL's AES-CBC).

After every step the three must agree on everything that can be seen: what
each call of open_datagrams returned (client ID, packet type, bytes), the
time answers, limiter refusals and probes it collected, what the core
delivered and sent (byte for byte: sealing is deterministic with the
counters set alike), every drop counter, and for every peer its replay
window (floor, newest timestamp and counter, the ring), endpoint, roams,
rx/tx counters, failure credit, authentication failures, time drops,
restart bounds, send counter, and which epochs hold a context; and the
restart state (unsaved peers, held datagrams), the flood filter, and the
path MTU state.

Traffic is a list of steps: a batch of datagrams at a time, packets read from
TUN, restart bounds saved, the timer. Datagrams are sealed by the reference
(``tests.builders.seal``) for several senders with their own counters, and
delivered in order, reordered within and beyond the 2048-counter window,
replayed, forged, truncated and extended, with every kind byte, keepalives,
path MTU probes (and acknowledgements, to a client), unknown client IDs,
timestamps outside the time window and across an epoch boundary (NOW starts
an epoch), inner packets of 0 to 1500 bytes of every shape the inner checks
look at, and from several endpoints per sender.

With VPNCRYPT_PURE_PYTHON=1 (a machine without the build) these tests skip,
loudly: there is no compiled path to hold to the Python one. Otherwise a
missing build fails them, as tests/core/conftest.py does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpncrypt.core import client as client_module
from vpncrypt.core import receive
from vpncrypt.core import server as server_module
from vpncrypt.core import siv
from vpncrypt.core.client import ClientCore
from vpncrypt.core.inner import PartialChecksumPacket
from vpncrypt.core.peer import CipherBudget, Peer
from vpncrypt.core.replay import WINDOW
from vpncrypt.core.server import ClientEntry, ServerCore
from vpncrypt.core.wire import (
    DEFAULT_TIME_WINDOW, KIND_DATA, KIND_DATA_PARTIAL, KIND_KEEPALIVE, KIND_PROBE, KIND_PROBE_ACK, MAX_PAYLOAD,
    OVERHEAD, PROBE, PROBE_ACK, TO_CLIENT, TO_SERVER,
)

from tests.cipher.conftest import ENGINES, engine_in_use
from tests.compiled import PURE_ONLY
from tests.builders import (
    CHANGE, KEY_A, KEY_B, KEY_EPOCH, MASK, NOW, SERVER_EP, SERVER_ID, changed, ipv6_packet, net, seal,
)

KEY_C = os.urandom(64)
OTHER_KEY = os.urandom(64)  # no one's: what a forger has

# The server's clients: ID, key, and the addresses each may send from (the
# third owns a network behind it). The client's server may send from ROUTES.
CLIENTS = (
    ClientEntry(1, KEY_A, KEY_EPOCH, (net("203.0.113.2/32"), net("2001:db8::2/128")), "a"),
    ClientEntry(2, KEY_B, KEY_EPOCH, (net("203.0.113.3/32"), net("2001:db8:b::/64")), "b"),
    ClientEntry(3, KEY_C, KEY_EPOCH, (net("203.0.113.64/26"), net("2001:db8:c::/48")), "c"),
)
TUNNEL = (ipaddress.ip_interface("203.0.113.1/24"), ipaddress.ip_interface("2001:db8::1/64"))
ROUTES = (net("203.0.113.0/24"), net("2001:db8::/32"))


@dataclass(frozen=True)
class Sender:
    """One end that seals datagrams for the core under test: its client ID,
    its key (of KEY_EPOCH), the source address of each family (IPv4, IPv6)
    of its packets, and the direction it seals for."""

    client_id: int
    key: bytes
    own: tuple[str, str]
    direction: int


# To the server: its three clients, then an ID it does not know. To a client:
# its server, then a server sealing for another client ID.
TO_SERVER_SENDERS = (
    Sender(1, KEY_A, ("203.0.113.2", "2001:db8::2"), TO_SERVER),
    Sender(2, KEY_B, ("203.0.113.3", "2001:db8:b::5"), TO_SERVER),
    Sender(3, KEY_C, ("203.0.113.70", "2001:db8:c:1::9"), TO_SERVER),
    Sender(9, KEY_A, ("203.0.113.2", "2001:db8::2"), TO_SERVER),
)
TO_CLIENT_SENDERS = (
    Sender(1, KEY_A, ("203.0.113.1", "2001:db8::1"), TO_CLIENT),
    Sender(2, KEY_B, ("203.0.113.1", "2001:db8::1"), TO_CLIENT),
)
NOBODYS = ("198.51.100.7", "2001:db9::1")  # in no client's networks, outside the client's routes


# --- the three paths ----------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def compiled_path_built():
    """Fail (skip only with VPNCRYPT_PURE_PYTHON=1) where there is no compiled path."""
    if PURE_ONLY:
        pytest.skip("VPNCRYPT_PURE_PYTHON=1: no compiled batch path to hold to the Python one")
    assert siv.CompiledAESSIV is not None, siv.NOT_BUILT
    assert receive._open_run is siv.compiled_open_run is not None, "receive._open_run is not the compiled open_run"


def paths() -> list[str]:
    """"batch ENGINE" and "loop ENGINE" for each engine this CPU has, then "pure"."""
    from vpncrypt import _siv

    engines = [engine for engine in ENGINES if engine in _siv.ENGINES]
    return [f"{kind} {engine}" for kind in ("batch", "loop") for engine in engines] + ["pure"]


@contextlib.contextmanager
def taking(path: str):
    """Run the core on ``path`` (one of ``paths()``) while the block runs;
    yields a Counter whose "compiled" is how many datagrams the compiled
    open_run decided itself (those before the index it returns)."""
    decided: Counter = Counter()
    compiled = receive._open_run

    def counting(datagrams, start, opened, drops, plan):
        end = compiled(datagrams, start, opened, drops, plan)
        decided["compiled"] += end - start
        return end

    kind, _, engine = path.partition(" ")
    chosen = siv.AESSIV
    siv.AESSIV = siv.CryptographyAESSIV if kind == "pure" else siv.CompiledAESSIV
    try:
        with mock.patch.object(receive, "_open_run", counting if kind == "batch" else None), \
                engine_in_use(engine) if engine else contextlib.nullcontext():
            yield decided
    finally:
        siv.AESSIV = chosen


@contextlib.contextmanager
def watching_open_datagrams():
    """Both cores' calls of open_datagrams, recorded as they return: what each
    delivered, and the time answers, limiter refusals and probes it collected."""
    calls: list = []

    def watched(datagrams, now, **options):
        lists = {name: options.get(name) for name in ("skewed", "limited", "probes")}
        before = {name: len(found) for name, found in lists.items() if found is not None}
        opened = receive.open_datagrams(datagrams, now, **options)
        collected = {name: [named(entry) for entry in found[before[name]:]]
                     for name, found in lists.items() if found is not None}
        calls.append({"opened": [(peer.client_id, type(packet).__name__, bytes(packet)) for peer, packet in opened],
                      **collected})
        return opened

    with mock.patch.object(server_module, "open_datagrams", watched), \
            mock.patch.object(client_module, "open_datagrams", watched):
        yield calls


def named(entry: Any) -> Any:
    """``entry`` with every Peer in it replaced by its client ID."""
    if isinstance(entry, Peer):
        return entry.client_id
    if isinstance(entry, tuple):
        return tuple(named(item) for item in entry)
    return entry


# --- what can be seen of a core -----------------------------------------------------------

def peer_state(peer: Peer) -> dict:
    window = peer.window
    return {
        "floor": window.floor, "newest_ts": window.newest_ts, "newest_counter": window.newest_counter,
        "ring": None if window.ring is None else bytes(window.ring), "endpoint": peer.endpoint, "roams": peer.roams,
        "rx_packets": peer.rx_packets, "rx_bytes": peer.rx_bytes, "tx_packets": peer.tx_packets,
        "tx_bytes": peer.tx_bytes, "failure_credit": peer.failure_credit, "credit_time": peer.credit_time,
        "auth_failures": peer.auth_failures, "time_drops": peer.time_drops, "stale_drops": peer.stale_drops,
        "wanted_bound": peer.wanted_bound, "durable_bound": peer.durable_bound, "save_at": peer.save_at,
        "time_answer_due": peer.time_answer_due,
        "clock_offset": peer.clock_offset, "counter": peer.counter, "last_ts": peer.last_ts,
        "context_epochs": sorted(peer.contexts), "key_epoch": peer.keys.key_epoch,
    }


def core_state(core: ServerCore | ClientCore) -> dict:
    peers = core.peers.values() if isinstance(core, ServerCore) else [core.server]
    state = {
        "drops": {reason: count for reason, count in core.drops.items() if count},
        "peers": {peer.client_id: peer_state(peer) for peer in peers},
        "unsaved": sorted(peer.client_id for peer in core.restart.unsaved),
        "held": list(core.restart.held),
        "loaded_bounds": dict(core.restart.loaded),
    }
    if isinstance(core, ServerCore):
        filtered = core.filtered
        state["filtered"] = (dict(filtered.until), dict(filtered.holds), dict(filtered.counts), filtered.version,
                             filtered.full)
        state["path_mtu"] = {peer.client_id: mtu for peer, mtu in core.path_mtu.items()}
        state["budget"] = [peer.client_id for peer in core.cipher_budget.live]
    else:
        state["path"] = dict(vars(core.path))
        state["clock_offset"] = core.clock_offset
        state["unanswered_since"] = core._unanswered_since
    return state


def delivery(out: Any) -> Any:
    """A Delivery or a list of (datagram, endpoint) pairs, with each packet's type."""
    if isinstance(out, tuple) and hasattr(out, "to_tun"):
        return {"to_tun": [(type(packet).__name__, bytes(packet)) for packet in out.to_tun],
                "to_network": list(out.to_network)}
    return list(out)


# --- a scenario: a core to make, and steps to run on it ------------------------------------

@dataclass
class World:
    """How to make the core under test: a server (``TO_SERVER``) with CLIENTS,
    or client 1 of such a server; started at ``start``; ``restart`` the bounds
    saved by its previous run (None: it keeps none; "lost": they should exist
    but do not); ``budget`` how many peers may hold a cipher context."""

    direction: int = TO_SERVER
    start: float = NOW - 20
    time_window: int = DEFAULT_TIME_WINDOW
    mtu: int = MAX_PAYLOAD
    restart: Any = None
    budget: int = 4096

    def make(self) -> ServerCore | ClientCore:
        bounds = None if self.restart in (None, "lost") else dict(self.restart)
        options = dict(time_window=self.time_window, mtu=self.mtu, restart_bounds={} if self.restart == "lost"
                       else bounds, restart_state_lost=self.restart == "lost")
        if self.direction == TO_SERVER:
            core = ServerCore(SERVER_ID, CLIENTS, self.start, client_to_client=True, tunnel=TUNNEL,
                              cipher_budget=CipherBudget(self.budget), **options)
            peers = list(core.peers.values())
        else:
            core = ClientCore(1, KEY_A, key_epoch=KEY_EPOCH, server_id=SERVER_ID, server_endpoint=SERVER_EP,
                              routes=ROUTES, now=self.start, keepalive_interval=2.0, **options)
            peers = [core.server]
        for peer in peers:
            # Random at start; set alike on every path so that what each seals can be compared
            # byte for byte (near the wrap, so that sealing crosses it).
            peer.counter = (MASK - 5 - 7 * peer.client_id) & MASK
        return core


@dataclass
class Step:
    """One call on the core at ``now``: ``what`` is "datagrams" (``items``:
    (datagram, endpoint) pairs), "tun" (``items``: IP packets), "save" (the
    restart bounds it asks for are written) or "timer"."""

    what: str
    now: float
    items: list = field(default_factory=list)

    def apply(self, core: ServerCore | ClientCore) -> Any:
        if self.what == "datagrams":
            return core.datagrams_received(list(self.items), self.now)
        if self.what == "tun":
            return core.tun_packets_received(list(self.items), self.now)
        if self.what == "save":
            table = core.bounds_to_save()
            return (table, delivery(core.bounds_saved(table, self.now)) if table is not None else None)
        return core.handle_timer(self.now)


def run(path: str, world: World, steps: list[Step]) -> tuple[list, int]:
    """What can be seen after each step, on ``path``, and how many datagrams
    the compiled open_run decided."""
    with taking(path) as decided, watching_open_datagrams() as calls:
        core = world.make()
        trace = [{"state": core_state(core)}]
        for step in steps:
            calls.clear()
            out = step.apply(core)
            trace.append({"out": delivery(out), "open_datagrams": list(calls), "state": core_state(core)})
    return trace, decided["compiled"]


def first_difference(left: Any, right: Any, where: str = "") -> str | None:
    """Where two traces first differ (a path of keys and indexes, and both values), or None."""
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right), key=str):
            if key not in left or key not in right:
                return f"{where}.{key}: only on one side"
            found = first_difference(left[key], right[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(left, list) and isinstance(right, list):
        for index, (one, other) in enumerate(zip(left, right)):
            found = first_difference(one, other, f"{where}[{index}]")
            if found:
                return found
        if len(left) != len(right):
            return f"{where}: {len(left)} against {len(right)} entries"
        return None
    if left != right:
        shown = [value.hex() if isinstance(value, (bytes, bytearray)) and len(value) <= 64 else value
                 for value in (left, right)]
        return f"{where}: {shown[0]!r:.300} against {shown[1]!r:.300}"
    return None


class Agreed(NamedTuple):
    """What every path agreed on after each step (the first entry: after the
    core was made), and how many datagrams the compiled open_run decided."""

    trace: list
    compiled: int

    def state(self, step: int = -1) -> dict:
        return self.trace[step]["state"]


def same_on_every_path(world: World, steps: list[Step]) -> Agreed:
    """Run ``steps`` on each path; they must agree after every step, and the
    compiled open_run must have decided as many datagrams with each engine."""
    runs = {path: run(path, world, steps) for path in paths()}
    reference, _ = runs.pop("pure")
    for path, (trace, _) in runs.items():
        for index, (seen, expected) in enumerate(zip(trace, reference)):
            difference = first_difference(seen, expected)
            assert difference is None, (
                f"{path} against pure, after step {index} of {len(steps)}"
                f"{' (' + steps[index - 1].what + f' at {steps[index - 1].now})' if index else ''}: {difference}")
    decided = {path: compiled for path, (_, compiled) in runs.items() if path.startswith("batch")}
    assert len(set(decided.values())) == 1, decided
    return Agreed(reference, decided.popitem()[1])


# --- inner packets ---------------------------------------------------------------------------

def pattern(seed: int, size: int) -> bytes:
    """``size`` bytes that depend on ``seed``, without drawing each from hypothesis."""
    return bytes((seed + 31 * index) & 0xFF for index in range(size))


def transport(protocol: str, body: bytes, options: int, seed: int) -> tuple[int, bytes]:
    """(protocol number, header and body): UDP with its length right, TCP with
    ``options`` words of options (NOPs), ICMP, or a protocol nobody parses."""
    if protocol == "udp":
        return 17, struct.pack("!HHHH", 4433, 443, 8 + len(body), 0) + body
    if protocol == "tcp":
        words = options % 11
        return 6, struct.pack("!HHIIBBHHH", 5001, 40000, seed, 7, (5 + words) << 4, 0x10, 500, 0, 0) + (
            b"\x01" * 4 * words) + body
    return (1, 253)[seed % 2], body


def ipv4(source: str, destination: str, protocol: int, payload: bytes, options: int = 0, fragment: int = 0) -> bytes:
    """IPv4 with ``options`` words of options (NOPs) and flags and offset
    ``fragment`` (checksum left zero: the core never looks at it)."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45 + options, 0, 20 + 4 * options + len(payload), 1, fragment, 64,
                         protocol, 0, ipaddress.IPv4Address(source).packed, ipaddress.IPv4Address(destination).packed)
    return header + b"\x01" * 4 * options + payload


def ipv6(source: str, destination: str, protocol: int, payload: bytes, extensions: tuple = ()) -> bytes:
    """IPv6 with extension headers of ``extensions`` types (0 hop-by-hop, 43
    routing, 60 destination options, 44 fragment: a later fragment if its
    entry is -44), each 8 bytes."""
    chain = b""
    for position in range(len(extensions) - 1, -1, -1):
        following = protocol if position == len(extensions) - 1 else abs(extensions[position + 1])
        if abs(extensions[position]) == 44:
            chain = struct.pack("!BBHI", following, 0, 8 << 3 if extensions[position] < 0 else 1, 7) + chain
        else:
            chain = struct.pack("!BB6x", following, 0) + chain
    return ipv6_packet(source, destination, chain + payload, abs(extensions[0]) if extensions else protocol)


# (source, family, shape, protocol, body size, options words, seed, byte changes, extension chain)
INNER = st.tuples(
    st.sampled_from(["own"] * 6 + ["other", "nobody"]),
    st.sampled_from([4, 4, 6]),
    st.sampled_from(["plain"] * 8 + ["options", "extensions", "fragment", "padded", "truncated", "garbage"]),
    st.sampled_from(["udp", "udp", "tcp", "tcp", "other"]),
    # Small, any, or at the bounds of a 1420-byte MTU (1372 and 1392 fill it with UDP over IPv6 and IPv4).
    st.integers(0, 48) | st.integers(0, 1460) | st.sampled_from([1232, 1372, 1373, 1392, 1393, 1400, 1432, 1460]),
    st.integers(0, 15),
    st.integers(0, 255),
    st.lists(st.tuples(st.integers(0, 60) | st.integers(0, 1500), st.integers(0, 255)), max_size=2) | st.just([]),
    st.lists(st.sampled_from([0, 43, 60, 44, -44]), min_size=1, max_size=3),
)


def inner_packet(spec: tuple, sender: Sender, others: tuple[Sender, ...], destination: tuple[str, str]) -> bytes:
    """The packet ``spec`` (drawn from INNER) describes, as ``sender`` might
    seal it, to ``destination`` (an address of each family)."""
    whose, family, shape, protocol, size, options, seed, changes, extensions = spec
    v6 = family == 6
    theirs = [other.own for other in others if other.own != sender.own] or [NOBODYS]
    source = {"own": sender.own, "other": theirs[seed % len(theirs)], "nobody": NOBODYS}[whose][v6]
    if shape == "garbage":
        return pattern(seed, size % 61)
    number, payload = transport(protocol, pattern(seed, size), options, seed)
    if v6:
        chain = tuple(extensions) if shape in ("extensions", "fragment") else ()
        if shape == "fragment" and not any(abs(kind) == 44 for kind in chain):
            chain = (*chain, -44 if seed % 2 else 44)
        packet = ipv6(source, destination[1], number, payload, chain)
    else:
        fragment = {0: 0x2000, 1: 0x2000 | 185, 2: 185, 3: 0x4000}[seed % 4] if shape == "fragment" else 0x4000
        packet = ipv4(source, destination[0], number, payload, options if shape == "options" else 0, fragment)
    if shape == "padded":
        packet += pattern(seed + 1, 1 + seed % 30)
    elif shape == "truncated":
        packet = packet[:(seed * 7 + size) % (len(packet) + 1)]
    if changes:
        data = bytearray(packet)
        for position, value in changes:
            if data:
                data[position % len(data)] = value
        packet = bytes(data)
    return packet


# --- traffic: what the senders seal and the network does to it --------------------------------



def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, each drawn about as often as its weight says
    (``st.one_of`` would draw a strategy named twice no more often)."""
    names = [index for index, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(names).flatmap(lambda index: choices[index][1])


# Mostly data; now and then ("kind", a kind byte): version 1's, a keepalive's (with a body,
# when the draw gives it a payload), a time answer's, either probe's, or any.
KINDS = st.tuples(st.sampled_from(["data"] * 16 + ["partial"] * 6 + ["keepalive"] * 4 + ["probe", "bad_probe", "kind"]),
                  st.sampled_from([0x11, 0x12, 0x13, 0x22, 0x24, 0x25, 0x26]) | st.integers(0, 63))
# Which sender: the first most often, the unknown client ID (slot 3) least.
SLOTS = st.sampled_from([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
# Counter steps from the sender's newest: the next mostly; a gap, the same counter, behind
# inside and beyond the window and at its edges, ahead at its edges, half the counter space.
COUNTER_STEPS = st.sampled_from([1] * 12 + [2, 3, 0, -1, -2, -5, -100, -(WINDOW - 2), -(WINDOW - 1), -WINDOW,
                                            -(WINDOW + 1), WINDOW - 1, WINDOW, WINDOW + 1, 2 * WINDOW, 1 << 31]
                                ) | st.integers(-3000, 3000)
# Timestamp offsets from the receiver's clock: on time mostly, a second off, at the
# edges of a 5 s and the default window, far off.
OFFSETS = st.sampled_from([0] * 60 + [-1, 1, -2] * 3 + [5, 6, -5, -6, DEFAULT_TIME_WINDOW, DEFAULT_TIME_WINDOW + 1,
                                      -DEFAULT_TIME_WINDOW, -DEFAULT_TIME_WINDOW - 1, 300, -500])
# Where from: one of three endpoints of the sender, and from which datagram of a run on
# the next one (a peer roaming in the middle of a batch).
ENDPOINTS = st.tuples(st.integers(0, 2), st.integers(0, 40) | st.just(1000))

# One datagram, counted from the sender's newest counter.
FRESH = st.tuples(st.just("fresh"), SLOTS, COUNTER_STEPS, KINDS, INNER, OFFSETS, ENDPOINTS)
# Datagrams in order from one sender, or several taking turns.
RUN = st.tuples(st.just("run"), st.lists(SLOTS, min_size=1, max_size=3), st.integers(2, 40), KINDS, INNER, ENDPOINTS)
# One sent before, again (perhaps from elsewhere).
AGAIN = st.tuples(st.just("again"), st.integers(0, 1 << 20), ENDPOINTS)
# The next datagram of a sender with a bit flipped where asked, then perhaps changed more.
FORGED = st.tuples(st.just("forged"), SLOTS, st.sampled_from(["header", "tag", "ciphertext", "any"]),
                   st.integers(0, 1 << 20), st.lists(CHANGE, max_size=2), INNER, ENDPOINTS)
# Datagrams naming a sender, sealed with a key nobody has: a few, or enough to empty its credit.
FLOOD = st.tuples(st.just("flood"), SLOTS, weighted((3, st.integers(1, 8)), (1, st.integers(60, 80))), ENDPOINTS)
# The sender starts again: a new counter, (the clock moving on) later stamps.
RESTARTED = st.tuples(st.just("restarted"), SLOTS, st.integers(0, MASK))
ITEMS = weighted((6, FRESH), (6, RUN), (2, AGAIN), (2, FORGED), (1, FLOOD), (1, RESTARTED))

# Seconds between steps: none, a little, past a refill or a time answer's interval, past
# the key erasure 512 s after an epoch begins; and the clock stepped back now and then.
ADVANCES = st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0, 1.0, 1.0, 2.0, 3.0, 0.75, 530.0, -1.0])
# A batch, and whether the restart bounds it asks for are saved right after (as the shell does).
BATCH = st.tuples(st.just("datagrams"), ADVANCES, st.lists(ITEMS, min_size=1, max_size=10), st.booleans())
SCENARIOS = st.lists(weighted(
    (6, BATCH),
    (1, st.tuples(st.just("tun"), ADVANCES, st.lists(st.tuples(SLOTS, INNER), min_size=1, max_size=8))),
    (1, st.tuples(st.just("save"), ADVANCES)),
    (1, st.tuples(st.just("timer"), ADVANCES)),
), min_size=2, max_size=8)


class Traffic:
    """Turns drawn descriptions into bytes, once, for every path to get the same:
    each sender's newest counter (from a drawn start), and the datagrams sent
    so far, for replays."""

    def __init__(self, direction: int, starts: list[int]) -> None:
        self.direction = direction
        self.senders = TO_SERVER_SENDERS if direction == TO_SERVER else TO_CLIENT_SENDERS
        self.newest = dict(enumerate(starts))
        self.stamped: dict[int, int] = {}  # the newest timestamp each sender used, as Peer.seal keeps it
        self.sent: list[tuple[bytes, int]] = []  # (datagram, slot)

    def slot(self, slot: int) -> int:
        """To a client, slot 3 is the server sealing for another client ID, any other its own."""
        return slot if self.direction == TO_SERVER else int(slot == 3)

    def endpoint(self, slot: int, where: tuple[int, int], index: int = 0) -> tuple:
        """Where datagram ``index`` of a run from ``slot`` comes from. A new
        tuple each time, equal to the last one from the same place: an
        endpoint moves when it differs, not when it is another object."""
        choice, moves_at = where
        choice = (choice + (index >= moves_at)) % 3
        host = ("192.0.2.10", "198.51.100.20", "2001:db8::10")[choice]
        return (host, 40000 + 10 * self.slot(slot) + choice)

    def destination(self, seed: int) -> tuple[str, str]:
        """Where a sender's packets go: to the server, its own address, another
        client's (forwarded and sealed again), the internet, or an address of the
        tunnel nobody has (answered); to a client, its address."""
        if self.direction == TO_CLIENT:
            return ("203.0.113.2", "2001:db8::2")
        return (("203.0.113.1", "2001:db8::1"), ("203.0.113.1", "2001:db8::1"), ("203.0.113.3", "2001:db8:b::7"),
                ("192.0.2.99", "2001:db8:f00::1"), ("203.0.113.200", "2001:db8::99"))[seed % 5]

    def datagram(self, slot: int, counter: int, kind: Any, inner: tuple, ts: int, key: bytes | None = None) -> bytes:
        sender = self.senders[self.slot(slot)]
        payload = b""
        kind, number = kind
        if kind in ("data", "partial"):
            payload = inner_packet(inner, sender, self.senders, self.destination(inner[6]))
            number = KIND_DATA if kind == "data" else KIND_DATA_PARTIAL
        elif kind == "keepalive":
            number = KIND_KEEPALIVE
        elif kind in ("probe", "bad_probe"):
            # A probe to a server, an acknowledgement to a client, of 28 to 1500 bytes.
            size = max(OVERHEAD + PROBE.size, min(inner[4] + 48, 1500))
            probed = size if kind == "probe" else size + 1 + inner[6] % 3
            if self.direction == TO_SERVER:
                number, fields = KIND_PROBE, PROBE.pack(probed, 1280 + inner[6])
            else:
                number, fields = KIND_PROBE_ACK, PROBE_ACK.pack(probed)
            payload = fields + bytes(size - OVERHEAD - len(fields))
        elif inner[5] % 2:  # any kind byte, with a payload
            payload = inner_packet(inner, sender, self.senders, self.destination(inner[6]))
        return seal(number, payload, client_id=sender.client_id, key=key or sender.key, counter=counter & MASK, ts=ts,
                    direction=sender.direction)

    def next_counter(self, slot: int, step: int = 1) -> int:
        """``step`` from the newest counter ``slot`` sent, which moves if it is ahead."""
        slot = self.slot(slot)
        counter = self.newest[slot] + step
        if step > 0:
            self.newest[slot] = counter
        return counter & MASK

    def stamp(self, slot: int, now_s: int, offset: int = 0) -> int:
        """The timestamp of ``slot``'s next datagram: never older than its last
        (a sender's clock goes on), but ``offset`` from it as drawn; only an
        offset of a second moves the sender's clock, not a stray one."""
        slot = self.slot(slot)
        ts = max(now_s, self.stamped.get(slot, now_s)) + offset
        if abs(offset) <= 1:
            self.stamped[slot] = max(ts, self.stamped.get(slot, ts))
        return ts

    def items(self, drawn: list, now: float) -> list:
        pairs = []
        now_s = int(now)

        def send(sealed: bytes, slot: int, where: tuple, index: int = 0, keep: bool = True) -> None:
            if keep:
                self.sent.append((sealed, slot))
            pairs.append((sealed, self.endpoint(slot, where, index)))

        for item in drawn:
            what = item[0]
            if what == "fresh":
                _, slot, step, kind, inner, offset, where = item
                send(self.datagram(slot, self.next_counter(slot, step), kind, inner, self.stamp(slot, now_s, offset)),
                     slot, where)
            elif what == "run":
                _, slots, count, kind, inner, where = item
                for index in range(count):
                    slot = slots[index % len(slots)]
                    varied = (*inner[:6], (inner[6] + index) & 0xFF, *inner[7:])
                    send(self.datagram(slot, self.next_counter(slot), kind, varied, self.stamp(slot, now_s)), slot,
                         where, index)
            elif what == "again" and self.sent:
                _, which, where = item
                sealed, slot = self.sent[which % len(self.sent)]
                send(sealed, slot, where, keep=False)
            elif what == "forged":
                _, slot, region, bit, changes, inner, where = item
                data = bytearray(self.datagram(slot, self.next_counter(slot), ("data", 0), inner, now_s))
                start, end = {"header": (0, 8), "tag": (8, 24), "ciphertext": (24, len(data)),
                              "any": (0, len(data))}[region]
                if end > start:
                    data[start + bit % (end - start)] ^= 1 << (bit >> 12) % 8
                send(changed(bytes(data), changes), slot, where, keep=False)
            elif what == "flood":
                _, slot, count, where = item
                for index in range(count):
                    forged = self.datagram(slot, self.next_counter(slot), ("keepalive", 0), (), now_s,
                                           key=OTHER_KEY)
                    send(forged, slot, where, index, keep=False)
            elif what == "restarted":
                _, slot, start = item
                self.newest[self.slot(slot)] = start
                self.stamped[self.slot(slot)] = self.stamped.get(self.slot(slot), now_s) + 1
        return pairs

    def tun_packets(self, drawn: list) -> list[bytes]:
        """IP packets read from TUN: to one of the server's clients, or from the client."""
        packets = []
        for slot, inner in drawn:
            if self.direction == TO_SERVER:
                internet = Sender(0, b"", ("198.51.100.30", "2001:db8:7::30"), TO_CLIENT)
                packet = inner_packet(inner, internet, (internet,), self.senders[slot % 3].own)
            else:
                me = Sender(1, KEY_A, ("203.0.113.2", "2001:db8::2"), TO_SERVER)
                packet = inner_packet(inner, me, (me,), ("203.0.113.1", "2001:db8::1"))
            # A quarter as a kernel with checksum offload hands them over, to be sealed as their own kind.
            packets.append(PartialChecksumPacket(packet) if inner[5] >= 12 else packet)
        return packets

    def steps(self, drawn: list, start: float) -> list[Step]:
        now, steps = start, []
        for entry in drawn:
            now += entry[1]
            if entry[0] == "datagrams":
                steps.append(Step("datagrams", now, self.items(entry[2], now)))
                if entry[3]:
                    steps.append(Step("save", now))
            elif entry[0] == "tun":
                steps.append(Step("tun", now, self.tun_packets(entry[2])))
            else:
                steps.append(Step(entry[0], now))
        return steps


@st.composite
def worlds(draw, direction: int) -> World:
    # Started before NOW, where an epoch begins: the steps that follow cross into it.
    start = NOW - draw(st.sampled_from([2.0, 4.5, 20.0]))
    time_window = draw(st.sampled_from([DEFAULT_TIME_WINDOW, DEFAULT_TIME_WINDOW, 5]))
    mtu = draw(st.sampled_from([MAX_PAYLOAD, MAX_PAYLOAD, 1420]))
    restart = draw(st.sampled_from([None, None, None, "lost", "bounds", "bounds"]))
    if restart == "bounds":
        # Client 1 (and the server, to a client) was heard up to around now; the others never.
        restart = {1: int(start) + draw(st.integers(-3, 3))}
        if direction == TO_SERVER and draw(st.booleans()):
            restart[3] = int(start) - 1
    budget = draw(st.sampled_from([4096, 4096, 2]))  # 2: three clients take each other's contexts
    return World(direction, start, time_window, mtu, restart, budget)


COUNTER_STARTS = st.lists(st.integers(0, MASK) | st.integers(MASK - 60, MASK), min_size=4, max_size=4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(world=worlds(TO_SERVER), starts=COUNTER_STARTS, drawn=SCENARIOS, lead=st.floats(0, 3))
def test_a_server_on_every_path(world, starts, drawn, lead):
    traffic = Traffic(TO_SERVER, starts)
    same_on_every_path(world, traffic.steps(drawn, world.start + 1 + lead))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(world=worlds(TO_CLIENT), starts=COUNTER_STARTS, drawn=SCENARIOS, lead=st.floats(0, 3))
def test_a_client_on_every_path(world, starts, drawn, lead):
    traffic = Traffic(TO_CLIENT, starts)
    same_on_every_path(world, traffic.steps(drawn, world.start + 1 + lead))


# --- the edges, every time ---------------------------------------------------------------------

def data(slot: int, counter: int, ts: int, packet: bytes, kind: int = KIND_DATA, direction: int = TO_SERVER) -> bytes:
    """A datagram from sender ``slot`` (of the senders to a server, or to a client)."""
    sender = (TO_SERVER_SENDERS if direction == TO_SERVER else TO_CLIENT_SENDERS)[slot]
    return seal(kind, packet, client_id=sender.client_id, key=sender.key, counter=counter & MASK, ts=ts,
                direction=direction)


def udp_from(slot: int, size: int, seed: int = 0, v6: bool = False) -> bytes:
    """A well-formed UDP packet of ``size`` bytes (at least 28, 48 for IPv6) from client ``slot``'s address."""
    sender = TO_SERVER_SENDERS[slot]
    header = 48 if v6 else 28
    payload = transport("udp", pattern(seed, size - header), 0, seed)[1]
    if v6:
        return ipv6(sender.own[1], "2001:db8::1", 17, payload)
    return ipv4(sender.own[0], "203.0.113.1", 17, payload)


def at(host: str, port: int) -> tuple:
    return (host, port)


@pytest.mark.parametrize("direction", [TO_SERVER, TO_CLIENT], ids=["to server", "to client"])
def test_every_inner_length_from_0_to_1500(direction):
    """Inner packets of every length, as data and as partial-checksum data, in
    batches of 64 (what the shell reads at once): below 20 bytes garbage; then
    IPv4 with a protocol nobody parses, UDP from 28 bytes, and IPv6 UDP from
    48, the last 5 % sent twice (replays)."""
    t0 = int(NOW) + 1
    slot_own = TO_SERVER_SENDERS[0].own if direction == TO_SERVER else TO_CLIENT_SENDERS[0].own
    sent = []
    for size in range(1501):
        if size < 20:
            packet = pattern(size, size)
        elif size < 28 or size % 3 == 0:
            packet = ipv4(slot_own[0], "203.0.113.2", 253, pattern(size, size - 20))
        elif size < 48 or size % 3 == 1:
            packet = ipv4(slot_own[0], "203.0.113.2", 17, transport("udp", pattern(size, size - 28), 0, 0)[1])
        else:
            packet = ipv6(slot_own[1], "2001:db8::2", 17, transport("udp", pattern(size, size - 48), 0, 0)[1])
        kind = KIND_DATA_PARTIAL if size % 2 else KIND_DATA
        sent.append(data(0, 1000 + size, t0, packet, kind, direction))
    sent += sent[-75:]
    steps = [Step("datagrams", t0 + 0.5, [(datagram, at("192.0.2.10", 40000)) for datagram in sent[start:start + 64]])
             for start in range(0, len(sent), 64)]
    agreed = same_on_every_path(World(direction), steps)
    peer = agreed.state()["peers"][1]
    assert peer["rx_packets"] > 1000 and agreed.state()["drops"]["replayed"] == 75
    assert agreed.compiled >= len(sent) - len(steps)  # each batch's first datagram makes the context, in Python


def test_in_order_and_late_across_the_counter_wrap():
    """10,000 counters across the wrap, every 97th 1,000 late (the ring wraps
    more than twice: a bit it failed to clear would show as a replay), every
    50th sent again; two clients taking turns, batches of 64, the clock
    ticking every 1,000 datagrams."""
    t0 = int(NOW) - 5
    order, late = [], []
    for index in range(10_000):
        if index % 97 == 0:
            late.append(index)
        else:
            order.append(index)
        while late and index - late[0] >= 1000:
            order.append(late.pop(0))
    order += late
    order = [index for position, index in enumerate(order) for _ in range(2 if position % 50 == 49 else 1)]
    pairs = []
    for index in order:
        for slot in (0, 1):
            start = MASK - 5000 if slot == 0 else 77
            pairs.append((data(slot, start + index, t0 + index // 1000, udp_from(slot, 60, index)),
                          at("192.0.2.10", 40000 + slot)))
    steps = [Step("datagrams", t0 + position // 2000 + 0.5, pairs[position:position + 64])
             for position in range(0, len(pairs), 64)]
    agreed = same_on_every_path(World(TO_SERVER, start=t0 - 10.0), steps)
    for client_id in (1, 2):
        assert agreed.state()["peers"][client_id]["rx_packets"] == 10_000
    assert agreed.state()["drops"]["replayed"] == 2 * (len(order) - 10_000)
    assert agreed.compiled >= len(pairs) - 2 * len(steps)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000], ids=lambda chunk: f"batches of {chunk}")
def test_the_window_edges_restarts_and_roaming(chunk):
    """Around the newest counter N: N - 2047 (the oldest the window takes),
    N - 2048 (too old), N + 2047 (the farthest that slides it), N + 2048 (a
    jump), N + 5 stamped a second before N (superseded); replays of each;
    reordered ones from another endpoint (which must not move the peer),
    newer ones from another (which must); the sender restarted behind N
    with a later clock (the window starts again, its floor after the old
    instance), then the old instance's late datagrams; ring bytes skipped
    and filled in; across the counter's wrap, in batches of ``chunk``."""
    t0 = int(NOW) - 3
    base = MASK - 2100
    sequence = [  # (counter from base, endpoint, seconds after t0)
        (0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0), (3, 1, 0), (3 + WINDOW - 1, 1, 0), (3, 2, 0), (4, 2, 0),
        (2, 0, 0), (1, 0, 0), (5, 2, 0), (3 + WINDOW - 1, 0, 0),
        (3 + 2 * WINDOW - 1, 0, 0), (3 + 2 * WINDOW - 2, 1, 0), (3 + 2 * WINDOW + 4, 1, -1), (WINDOW, 1, 0),
        (WINDOW + 1, 2, 0), (3 + 2 * WINDOW - 3, 2, 0), (3 + 2 * WINDOW, 1, 0),
        (3 + 4 * WINDOW, 0, 1), (3 + 4 * WINDOW - 1, 1, 1), (3 + 2 * WINDOW - 1, 2, 1), (3 + 4 * WINDOW + 1, 2, 1),
        (3 + 4 * WINDOW - 2047, 0, 1), (3 + 4 * WINDOW - 2048, 0, 1),
        # Restarted 100 behind, a second later; then the old instance, ahead and behind the new one.
        (3 + 4 * WINDOW - 100, 1, 2), (3 + 4 * WINDOW + 2, 2, 1), (3 + 4 * WINDOW - 110, 0, 1),
        (3 + 4 * WINDOW - 105, 0, 2), (3 + 4 * WINDOW - 99, 0, 2), (3 + 4 * WINDOW - 105, 1, 2),
    ]
    newest = 3 + 4 * WINDOW - 99
    sequence += [(newest + 8 + 9 * step, step % 3, 2) for step in range(300)]  # ring bytes skipped
    sequence += [(newest + 8 + 9 * step - 1, (step + 1) % 3, 2) for step in range(0, 300, 7)]  # and filled in
    sequence += sequence[-10:]
    pairs = []
    for position, (offset, where, later) in enumerate(sequence):
        packet = udp_from(0, 40 + position % 50, position, v6=position % 2 == 1)
        pairs.append((data(0, base + offset, t0 + later, packet), at("192.0.2.10", 40000 + where)))
    steps = [Step("datagrams", t0 + 2.5, pairs[start:start + chunk]) for start in range(0, len(pairs), chunk)]
    agreed = same_on_every_path(World(TO_SERVER, start=t0 - 10.0), steps)
    peer, drops = agreed.state()["peers"][1], agreed.state()["drops"]
    assert peer["roams"] > 10 and drops["replayed"] >= 14 and drops["counter_too_old"] > 2
    assert drops["superseded"] >= 3 and peer["floor"] == t0 + 2
    assert agreed.compiled > len(pairs) // 2


def test_restart_bounds_hold_datagrams_then_release_them():
    """A server that saved client 1's bound at t0 - 5 (its floor is t0 - 4)
    and none for client 2 (never heard: nothing is refused, but everything
    waits for a first save). At or above a peer's save_at the Python loop
    decides (unsaved, held, pending_restart_state past HELD_MAX); a save
    opens the held ones again, and what follows below the new save_at the
    compiled path decides."""
    t0 = int(NOW) - 2
    world = World(TO_SERVER, start=t0 - 10.0, restart={1: t0 - 5})
    counters = {0: 500, 1: MASK - 3}

    def batch(slot: int, count: int, ts: int) -> list:
        pairs = []
        for _ in range(count):
            counters[slot] += 1
            pairs.append((data(slot, counters[slot], ts, udp_from(slot, 100, counters[slot] & 0xFF)),
                          at("192.0.2.10", 40000 + slot)))
        return pairs

    steps = [
        Step("datagrams", t0 + 0.5, batch(0, 3, t0 - 6) + batch(0, 5, t0) + batch(1, 3, t0)),
        Step("datagrams", t0 + 0.6, batch(0, 260, t0)),
        Step("save", t0 + 0.6),  # the held datagrams again, below the new save_at
        Step("datagrams", t0 + 0.7, batch(0, 5, t0) + batch(1, 5, t0) + batch(0, 5, t0 + 1) + batch(0, 5, t0 + 2)),
        Step("save", t0 + 1.5),
        Step("datagrams", t0 + 1.6, batch(0, 20, t0 + 2) + batch(1, 20, t0 + 1)),
    ]
    agreed = same_on_every_path(world, steps)
    assert [len(entry["state"]["held"]) for entry in agreed.trace] == [0, 8, 256, 0, 5, 0, 0]
    drops = agreed.state()["drops"]
    assert drops["superseded"] == 3 and drops["pending_restart_state"] == 12
    assert [agreed.state()["peers"][client_id]["rx_packets"] for client_id in (1, 2)] == [288, 28]
    assert agreed.compiled >= 256


@pytest.mark.parametrize("budget", [2, 4096])
def test_an_epoch_boundary_and_contexts_taken_away(budget):
    """Three clients taking turns across the epoch that begins at NOW (a
    peer's first datagram of an epoch makes its context, in Python), with
    room for every peer's contexts or for two peers' (each peer's makes one
    again, taking the others')."""
    pairs = []
    for round_ in range(12):
        for slot in (0, 1, 2):
            ts = int(NOW) - 1 + (round_ >= 6)
            pairs.append((data(slot, 100 * slot + round_, ts, udp_from(slot, 64 + round_)), at("192.0.2.10", 40000)))
    steps = [Step("datagrams", NOW + 0.25, pairs[:18]), Step("datagrams", NOW + 0.5, pairs[18:])]
    agreed = same_on_every_path(World(TO_SERVER, start=NOW - 30, budget=budget), steps)
    assert sum(peer["rx_packets"] for peer in agreed.state()["peers"].values()) == 36
    assert agreed.compiled >= (0 if budget == 2 else 36 - 2 * 3)


def test_forgeries_empty_the_failure_credit():
    """70 forgeries naming client 1 (its credit is 64) among its datagrams and
    client 2's, then a quarter of a second later (4 more), then ten seconds."""
    t0 = int(NOW) - 2
    counter = iter(range(3000, 10_000))

    def real(slot: int) -> tuple:
        return (data(slot, next(counter), t0, udp_from(slot, 80)), at("192.0.2.10", 40000 + slot))

    def forged(slot: int) -> tuple:
        sender = TO_SERVER_SENDERS[slot]
        return (seal(KIND_DATA, udp_from(slot, 80), client_id=sender.client_id, key=OTHER_KEY, counter=next(counter),
                     ts=t0), at("198.51.100.66", 666))

    first = [real(0), real(1)] + [forged(0) for _ in range(70)] + [real(0), real(1), real(0)]
    steps = [
        Step("datagrams", t0 + 0.25, first),
        Step("datagrams", t0 + 0.5, [forged(0) for _ in range(6)] + [real(0), real(0), real(1)]),
        Step("datagrams", t0 + 10.5, [real(0) for _ in range(5)] + [forged(0)] + [real(0) for _ in range(5)]),
    ]
    agreed = same_on_every_path(World(TO_SERVER, start=t0 - 10.0), steps)
    assert agreed.trace[1]["state"]["drops"]["auth_failures_limited"] > 0
    assert agreed.state()["peers"][1]["rx_packets"] >= 11
    assert agreed.compiled > 10


@pytest.mark.parametrize("direction", [TO_SERVER, TO_CLIENT], ids=["server", "client"])
def test_sealing_every_length(direction):
    """Packets of every length from 20 to 1500 bytes read from TUN, plain and
    partial-checksum, sealed in batches of 64 across the counter's wrap, and
    an empty one (a keepalive's payload) from the timer: the same bytes on
    every path (so seal_batch's as the Python loop's)."""
    if direction == TO_SERVER:
        # Clients heard from first, so that the server has endpoints to seal to.
        hello = [(data(slot, 7, int(NOW), udp_from(slot, 40)), at("192.0.2.10", 40000 + slot)) for slot in (0, 1, 2)]
        steps = [Step("datagrams", NOW + 0.5, hello)]
        destination = ("203.0.113.2", "2001:db8::2")
        source = ("198.51.100.30", "2001:db8:7::30")
    else:
        steps = [Step("timer", NOW + 0.5)]
        destination = ("203.0.113.1", "2001:db8::1")
        source = ("203.0.113.2", "2001:db8::2")
    packets = []
    for size in range(20, 1501):
        if size >= 48 and size % 2:
            packet = ipv6(source[1], destination[1], 17, transport("udp", pattern(size, size - 48), 0, size)[1])
        elif size >= 28:
            packet = ipv4(source[0], destination[0], 17, transport("udp", pattern(size, size - 28), 0, size)[1])
        else:
            packet = ipv4(source[0], destination[0], 253, pattern(size, size - 20))
        packets.append(PartialChecksumPacket(packet) if size % 3 == 0 else packet)
    steps += [Step("tun", NOW + 1 + start / 1000, packets[start:start + 64]) for start in range(0, len(packets), 64)]
    steps.append(Step("timer", NOW + 30))
    agreed = same_on_every_path(World(direction, start=NOW - 30, mtu=1500), steps)
    sent = sum(len(entry["out"]["to_network"] if isinstance(entry["out"], dict) else entry["out"])
               for entry in agreed.trace[1:])
    assert sent > 1300


# Every inner shape the checks look at: whose source, family, shape, protocol, and a
# small and a large packet; then fields the checks read, set wrong.
INNER_SHAPES = [
    (whose, family, shape, protocol, size, options, seed, [], extensions)
    for whose in ("own", "other", "nobody") for family in (4, 6)
    for shape in ("plain", "options", "extensions", "fragment", "padded", "truncated", "garbage")
    for protocol in ("udp", "tcp", "other")
    for size, options, seed, extensions in ((0, 0, 0, (0,)), (9, 3, 1, (60, 44)), (40, 11, 2, (43, -44)),
                                            (1400, 15, 3, (0, 60, 43)))
] + [
    ("own", family, "plain", protocol, size, 0, 0, [(position, value)], ())
    for family, protocol, position in ((4, "udp", 25), (6, "udp", 45), (4, "tcp", 32), (6, "tcp", 52))
    for size in (0, 12, 200)
    for value in (0, 7, 8 + size - 1, 8 + size + 1, 0x40, 0xF0, 0x50)
]


@pytest.mark.parametrize("direction", [TO_SERVER, TO_CLIENT], ids=["to server", "to client"])
def test_every_inner_shape(direction):
    """INNER_SHAPES as data and as partial-checksum data, the server's three
    clients taking turns in one batch, then the same in batches of 5."""
    traffic = Traffic(direction, [MASK - 700, 5, 1 << 31])
    t0 = int(NOW) + 1
    slots = (0, 1, 2) if direction == TO_SERVER else (0,)
    pairs = []
    for index, spec in enumerate(INNER_SHAPES * 2):
        slot = slots[index % len(slots)]
        kind = ("data" if index < len(INNER_SHAPES) else "partial", 0)
        pairs.append((traffic.datagram(slot, traffic.next_counter(slot), kind, spec, t0), traffic.endpoint(slot, (0, 99))))
    steps = [Step("datagrams", t0 + 0.5, pairs[:len(pairs) // 2])]
    steps += [Step("datagrams", t0 + 0.5, pairs[start:start + 5]) for start in range(len(pairs) // 2, len(pairs), 5)]
    agreed = same_on_every_path(World(direction, start=t0 - 10.0), steps)
    drops = agreed.state()["drops"]
    assert drops["inner_malformed"] > 100 and drops["inner_source_not_allowed"] > 100
    assert sum(peer["rx_packets"] for peer in agreed.state()["peers"].values()) > 200
    assert agreed.compiled > len(pairs) - len(steps) - 2


@pytest.mark.parametrize("direction", [TO_SERVER, TO_CLIENT], ids=["to server", "to client"])
def test_the_cheap_checks_between_good_datagrams(direction):
    """Each datagram the cheap checks refuse (every kind byte, sealed with
    and without a payload; a keepalive with a body or cut short; one byte
    past the MTU's bound and at it; probes of this end's kind, good, bad and
    too short; an unknown client ID; a timestamp at and one second past each
    edge of the time window, with a counter the window would take as
    reordered: the receiver started long before) between two good datagrams
    of a sender, in one batch and one by one."""
    traffic = Traffic(direction, [100, MASK - 3, 7, 0])
    t0 = int(NOW) + 200  # the time window inside one epoch: a context for every timestamp
    world = World(direction, start=t0 - 1000.0, mtu=1420)
    good = ("own", 4, "plain", "udp", 100, 0, 0, [], ())

    def sent(slot: int, kind: Any = ("data", 0), inner: tuple = good, ts: int = t0) -> tuple:
        return (traffic.datagram(slot, traffic.next_counter(slot), kind, inner, ts), traffic.endpoint(slot, (0, 99)))

    pairs = []
    for slot in ((0, 1, 2) if direction == TO_SERVER else (0,)):
        odd = []
        for number in range(64):
            odd += [sent(slot, ("kind", number), ("own", 4, "plain", "udp", 50, payload, 0, [], ()))
                    for payload in (0, 1)]
        keepalive, short_probe = sent(slot, ("keepalive", 0)), sent(slot, ("probe", 0))
        odd += [(keepalive[0] + b"\0", keepalive[1]), (keepalive[0][:-1], keepalive[1])]
        odd += [sent(slot, inner=("own", 4, "plain", "other", size - 20, 0, 1, [], ())) for size in (1420, 1421)]
        odd += [sent(slot, ("probe", 0), ("own", 4, "plain", "udp", size, 0, 0, [], ())) for size in (0, 300, 1400)]
        odd += [sent(slot, ("bad_probe", 0), ("own", 4, "plain", "udp", 300, 0, seed, [], ())) for seed in (0, 1)]
        odd += [(short_probe[0][:OVERHEAD + 3], short_probe[1]), sent(3)]
        window = world.time_window
        # Behind in time, with counters left unsent behind the next good one; then ahead in time
        # (accepted, which makes the good ones after it late: last).
        gap = traffic.next_counter(slot, 10)
        odd += [(traffic.datagram(slot, gap - 9 + index, ("data", 0), good, t0 + offset), traffic.endpoint(slot, (0, 99)))
                for index, offset in enumerate((-window, -window - 1))]
        odd += [sent(slot, ts=t0 + offset) for offset in (window + 1, window)]
        for pair in odd:
            pairs += [sent(slot), pair, sent(slot)]
    steps = [Step("datagrams", t0 + 0.5, pairs)] + [Step("datagrams", t0 + 0.5, [pair]) for pair in pairs]
    agreed = same_on_every_path(world, steps)
    drops = agreed.state()["drops"]
    assert {"bad_length", "unknown_kind", "old_version", "unknown_client", "outside_time_window", "bad_probe"} <= {
        reason for reason, count in drops.items() if count}


def test_every_bit_flipped_inside_groups():
    """Each bit of a data datagram and of a keepalive flipped in turn, the
    changed datagram among good ones of the same client (so inside the
    compiled path's groups of up to 8, at each place in one), 8 of them a
    second so that the failure credit holds; client 2 in the same batches."""
    t0 = int(NOW) - 60
    counters = {0: MASK - 100, 1: 5000}

    def good(slot: int, ts: int) -> tuple:
        counters[slot] += 1
        return (data(slot, counters[slot], ts, udp_from(slot, 60, counters[slot] & 0xFF)), at("192.0.2.10", 40000 + slot))

    flips = [(kind, bit) for kind, size in ((KIND_DATA, OVERHEAD + 60), (KIND_KEEPALIVE, OVERHEAD))
             for bit in range(8 * size)]
    steps = []
    for first in range(0, len(flips), 8):
        ts = t0 + first // 8
        pairs = []
        for place, (kind, bit) in enumerate(flips[first:first + 8]):
            pairs += [good(0, ts) for _ in range(place)] + [good(1, ts)]
            counters[0] += 1
            sealed = bytearray(data(0, counters[0], ts, udp_from(0, 60) if kind == KIND_DATA else b"", kind))
            sealed[bit // 8] ^= 1 << bit % 8
            pairs += [(bytes(sealed), at("198.51.100.66", 666))] + [good(0, ts) for _ in range(8 - place)]
        steps.append(Step("datagrams", ts + 0.5, pairs))
    agreed = same_on_every_path(World(TO_SERVER, start=t0 - 10.0), steps)
    drops = agreed.state()["drops"]
    assert drops["auth_failed"] > 700 and "auth_failures_limited" not in drops
    assert agreed.compiled > sum(len(step.items) for step in steps) // 2


@pytest.mark.parametrize("direction", [TO_SERVER, TO_CLIENT], ids=["to server", "to client"])
def test_a_flood_stamped_outside_the_time_window_costs_no_cipher_call_past_the_first(direction):
    """Authentic datagrams stamped long ago, from a peer never heard before
    (an empty window) and from one heard: the server authenticates the first
    of each for a time answer and then, its next answer not due for 2 s,
    counts the rest as the cheap checks do; the compiled open_run decides
    those itself (bench/scale_bench.py's garbage figures), on every path alike."""
    traffic = Traffic(direction, [100, 200, 7, 0])
    t0 = int(NOW) + 200
    world = World(direction, start=t0 - 1000.0)
    good = ("own", 4, "plain", "udp", 100, 0, 0, [], ())
    slots = (0, 1) if direction == TO_SERVER else (0,)
    heard = [(traffic.datagram(slots[-1], traffic.next_counter(slots[-1]), ("data", 0), good, t0),
              traffic.endpoint(slots[-1], (0, 99)))]
    stale = [(traffic.datagram(slot, traffic.next_counter(slot), ("data", 0), good, t0 - 300),
              traffic.endpoint(slot, (0, 99))) for _ in range(20) for slot in slots]
    agreed = same_on_every_path(world, [Step("datagrams", t0 + 0.5, heard), Step("datagrams", t0 + 0.6, stale)])
    assert agreed.state()["drops"]["outside_time_window"] == len(stale)
    answers = len(slots) if direction == TO_SERVER else 0
    assert len(agreed.trace[-1]["out"]["to_network"]) == answers  # one time answer a client
    assert agreed.compiled == len(stale) - answers  # (a first datagram into an empty window is Python's)
