"""A server core loaded with up to 65,536 clients: memory, lookup cost, garbage cost.

Run: .venv/bin/python bench/scale_bench.py [--json FILE]   (no root needed)

For 1, 256, 4,096 and 65,536 clients (IDs from 0, tunnel addresses
2001:db8:7::/64 host routes): the memory the server's table holds (traced by
tracemalloc: the AES-SIV contexts, which live outside Python's allocator, are
made only for clients in use, at most 4,096 of them, see CipherBudget; their
size is measured apart, compiled and cryptography's, as the growth of the
process's resident memory when 4,096 are made), the cost of the table lookups alone
(client ID and route), and, with every
client having sent once, the cost per packet of opening datagrams from
clients picked at random and of routing TUN packets to them. Garbage (stale
time, bad length, and an unknown client ID, measured on a table of 65,535 so
that one ID is free) against a real open at 65,536 clients. Best of 5 runs
each, batches of 64.

Then the server's once-a-second work for clients that all sent data in
the last 30 s: keeping their restart bounds ahead of their clocks
(core/restart.py, ``keep_ahead``, run by the timer on the event loop) and
building the table the save thread writes, at 4,096 and 65,536 clients,
milliseconds per second (a round of keep_ahead takes a call per 4,096
clients: the longest call is how long it holds the event loop), best of 5.
And the work of an epoch's end (core/epochs.py, ``KeyTimer.advance``) with
every client idle since the last, so that each derives its next key, one
client heard to vouch for the clock: the whole round, its calls and the
longest, best of 5.

Then the files at that scale (``--config-only`` for these alone): a
server.toml of 65,536 clients (two IPv6 /128s each, inside 2001:db8::/32: the IPv4 documentation ranges hold too few) with its
key store of 65,536 keys, loaded and checked as a start or a reload does
(overlaps included), and vpncrypt-keygen run on it: adding the 65,536th
client to a file of 65,535, rotating a key, removing a client, listing.
Best of 3, wall-clock seconds. The goal: each under 2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import ipaddress
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vpncrypt import key_store  # noqa: E402
from vpncrypt.cli import keygen  # noqa: E402
from vpncrypt.config import load_server_config  # noqa: E402
from vpncrypt.core import siv  # noqa: E402
from vpncrypt.core.epochs import DEFAULT_EPOCH_SECONDS, next_advance  # noqa: E402
from vpncrypt.core.peer import Peer  # noqa: E402
from vpncrypt.core.server import ClientEntry, ServerCore  # noqa: E402
from vpncrypt.core.wire import KIND_DATA, KIND_KEEPALIVE, TO_SERVER, encode_header  # noqa: E402

NOW = 1_800_000_000.0
KEY_EPOCH = int(NOW) // DEFAULT_EPOCH_SECONDS - 1  # the keys are the previous epoch's: one step to derive
BATCH = 64
SAMPLE = 4096
PREFIX = ipaddress.IPv6Address("2001:db8:7::")
PREFIX_OTHER = ipaddress.IPv6Address("2001:db8:8::")  # a second address for each client, as in a dual-stack table
GOAL_SECONDS = 2.0


def address(client_id: int) -> ipaddress.IPv6Address:
    return PREFIX + client_id + 2


def packet_from(client_id: int) -> bytes:
    src, dst = address(client_id).packed, address(-1).packed
    # A UDP datagram with 12 bytes of payload: its length field must hold (inner.well_formed).
    return struct.pack("!IHBB16s16sHHHH", 6 << 28, 20, 17, 64, src, dst, 1, 2, 20, 0) + bytes(12)


def best(fn, repeats: int = 5) -> float:
    results = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = fn()
        results.append((time.perf_counter() - start) / count * 1e6)
    return min(results)


def measure(clients: int, keys: list[bytes]) -> dict:
    entries = [ClientEntry(i, keys[i], KEY_EPOCH, (ipaddress.ip_network(f"{address(i)}/128"),)) for i in range(clients)]
    gc.collect()
    tracemalloc.start()
    server = ServerCore(1, entries, NOW)
    table_bytes = tracemalloc.get_traced_memory()[0]  # what the server holds; the entries are the config's
    tracemalloc.stop()
    del entries
    rng = random.Random(clients)
    picks = [rng.randrange(clients) for _ in range(SAMPLE)]
    # Every client sends a first keepalive (so the server knows its endpoint
    # and has its replay window allocated), from a sender of its own.
    senders = {i: Peer(i, keys[i], key_epoch=KEY_EPOCH, server_id=1, send_direction=TO_SERVER, now=NOW) for i in set(picks)}
    server.datagrams_received([(d, ("192.0.2.9", 4000 + i)) for i, s in senders.items()
                               for d in s.seal(0x12, [b""], NOW + 2)], NOW + 2)
    rounds = []
    for _ in range(5):
        rounds.append([[(senders[i].seal(KIND_DATA, [packet_from(i)], NOW + 2)[0], ("192.0.2.9", 4000 + i))
                        for i in picks[k:k + BATCH]] for k in range(0, SAMPLE, BATCH)])
    round_iter = iter(rounds)

    def open_all() -> int:
        for batch in next(round_iter):
            server.datagrams_received(batch, NOW + 2)
        return SAMPLE

    to_clients = [[packet_from(-1)[:8] + address(-1).packed + address(i).packed + packet_from(-1)[40:]
                   for i in picks[k:k + BATCH]] for k in range(0, SAMPLE, BATCH)]

    def route_all() -> int:
        for batch in to_clients:
            server.tun_packets_received(batch, NOW + 2).to_network
        return SAMPLE

    ids = [i for i in picks]
    destinations = [address(i).packed for i in picks]

    def lookup_all() -> int:
        find, route = server.peers.get, server.routes.lookup
        for client_id, destination in zip(ids, destinations):
            find(client_id)
            route(destination)
        return SAMPLE

    result = {
        "clients": clients,
        "table_mib": table_bytes / 2**20,
        "lookup_us": best(lookup_all),
        "open_us": best(open_all),
        "route_and_seal_us": best(route_all),
    }
    assert server.drops["replayed"] == 0 and server.drops["no_route"] == 0, dict(server.drops)
    return result | {"server": server}


def reject_cost(server: ServerCore, batch: list) -> float:
    """Microseconds per datagram for the server to drop ``batch`` 50 times over."""
    def run() -> int:
        for _ in range(50):
            server.datagrams_received(batch, NOW + 2)
        return 50 * len(batch)
    return best(run)


def garbage(server: ServerCore, keys: list[bytes]) -> dict:
    peer = Peer(5, keys[5], key_epoch=KEY_EPOCH, server_id=1, send_direction=TO_SERVER, now=NOW)
    real = peer.seal(KIND_DATA, [packet_from(5)], NOW + 2)[0]
    cases = {
        "stale_time": encode_header(KIND_DATA, int(NOW) - 300, 5, 1) + real[8:],
        "bad_length": real[:20],
    }
    figures = {}
    for name, datagram in cases.items():
        figures[f"reject_{name}_us"] = reject_cost(server, [(datagram, ("192.0.2.9", 1))] * BATCH)
    return figures


# Run in a process of its own for each kind, so that no memory freed before is reused.
CONTEXT_PROBE = """
import os, sys
from vpncrypt.core import siv
make = getattr(siv, sys.argv[1])
keys = [os.urandom(64) for _ in range(4096)]
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1])
before = resident()
contexts = [make(key) for key in keys]
print((resident() - before) * os.sysconf("SC_PAGE_SIZE") / len(contexts))
"""


def context_bytes() -> dict:
    """Bytes of one ready AES-SIV context, compiled and cryptography's: the
    growth of resident memory (/proc/self/statm) when 4,096 are made, each
    kind in a fresh process."""
    figures = {}
    for name, kind in (("compiled", "CompiledAESSIV"), ("cryptography", "CryptographyAESSIV")):
        if getattr(siv, kind) is None:
            continue
        done = subprocess.run([sys.executable, "-c", CONTEXT_PROBE, kind], cwd=Path(__file__).resolve().parent.parent,
                              capture_output=True, text=True, check=True)
        figures[name] = float(done.stdout)
    return figures


def timer_cost(clients: int, keys: list[bytes]) -> dict:
    """Milliseconds for a round of keep_ahead over ``clients`` clients that
    all sent data within KEEP_AHEAD seconds (in all, and its longest call,
    with the calls it took), and for the table of bounds to save."""
    entries = [ClientEntry(i, keys[i], KEY_EPOCH, (ipaddress.ip_network(f"{address(i)}/128"),)) for i in range(clients)]
    server = ServerCore(1, entries, NOW, restart_bounds={})
    del entries
    now = NOW + 2
    senders = [Peer(i, keys[i], key_epoch=KEY_EPOCH, server_id=1, send_direction=TO_SERVER, now=NOW)
               for i in range(clients)]
    for second in range(2):
        # Each client's data asks for a bound (held until saved); once saved,
        # the server keeps it ahead of that client from then on.
        for k in range(0, clients, BATCH):
            server.datagrams_received([(senders[i].seal(KIND_DATA, [packet_from(i)], now)[0], ("192.0.2.9", 4000 + i))
                                       for i in range(k, min(k + BATCH, clients))], now)
        server.bounds_saved(server.bounds_to_save(), now)
        now += 1
    assert len(server.restart.active) == clients and server.drops["replayed"] == 0, dict(server.drops)

    def keep_ahead_round() -> tuple[float, float, int]:
        """Milliseconds for the whole round, for its longest call, and the calls."""
        nonlocal now
        now += 1
        calls = []
        while True:
            start = time.perf_counter()
            server.handle_timer(now)
            calls.append((time.perf_counter() - start) * 1e3)
            if server.restart.keep_ahead_due != now:  # the round is over
                return sum(calls), max(calls), len(calls)

    def table() -> float:
        start = time.perf_counter()
        server.bounds_to_save()
        return (time.perf_counter() - start) * 1e3

    def key_round() -> tuple[float, float, int]:
        """The same three figures for erasing keys at an epoch's end, every
        client idle since the last (each derives its key for the new epoch),
        one client heard at the new time to vouch for the clock (epochs.KeyTimer)."""
        nonlocal now
        now = next_advance(now, DEFAULT_EPOCH_SECONDS)
        [vouching] = senders[0].seal(KIND_KEEPALIVE, [b""], now)
        server.datagrams_received([(vouching, ("192.0.2.9", 4000))], now)
        if server.held_datagrams():
            server.bounds_saved(server.bounds_to_save(), now)
        calls = []
        while True:
            start = time.perf_counter()
            server.key_timer.advance(server.peers.values(), now)
            calls.append((time.perf_counter() - start) * 1e3)
            if server.key_timer.due != now:  # the round is over
                return sum(calls), max(calls), len(calls)

    rounds = [keep_ahead_round() for _ in range(5)]
    figures = {"clients": clients, "keep_ahead_ms": min(r[0] for r in rounds),
               "keep_ahead_longest_call_ms": min(r[1] for r in rounds), "keep_ahead_calls": rounds[0][2],
               "bounds_table_ms": min(table() for _ in range(5))}
    assert server.restart.unsaved, "keep_ahead asked for no bound: nothing was measured"
    while server.key_timer.due <= now:  # the round begun at the start, ended as the timer would
        server.key_timer.advance(server.peers.values(), now)
    key_round()  # the epoch of the data above, whose keys the clients derived already
    epoch_before = server.peers[clients - 1].keys.key_epoch
    key_rounds = [key_round() for _ in range(5)]
    assert server.peers[clients - 1].keys.key_epoch == epoch_before + 5, "an idle client's keys did not move"
    figures |= {"keys_ms": min(r[0] for r in key_rounds), "keys_longest_call_ms": min(r[1] for r in key_rounds),
                "keys_calls": key_rounds[0][2]}
    return figures


def write_server_files(directory: Path, clients: int, keys: list[bytes]) -> Path:
    """server.toml with ``clients`` clients (IDs 0 up) and its key store, as keygen would leave them."""
    lines = ["[server]", "server_id = 1", 'endpoint = "192.0.2.1:51820"',
             'tunnel = ["2001:db8:8::1/64", "2001:db8:7::1/64"]', f'state_directory = "{directory}"', ""]
    for i in range(clients):
        lines += ["[[client]]", f'name = "c{i}"', f"client_id = {i}",
                  f'addresses = ["{PREFIX_OTHER + i + 2}/128", "{address(i)}/128"]', ""]
    path = directory / "server.toml"
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    table = key_store.KeyTable(DEFAULT_EPOCH_SECONDS, {i: (KEY_EPOCH, keys[i]) for i in range(clients)})
    key_store.write(key_store.store_path(directory, "server"), table)
    return path


def seconds(fn, prepare=None, repeats: int = 3) -> float:
    """Best wall-clock time of ``fn()`` (``prepare()`` untimed before each)."""
    results = []
    for _ in range(repeats):
        if prepare is not None:
            prepare()
        start = time.perf_counter()
        fn()
        results.append(time.perf_counter() - start)
    return min(results)


def keygen_quietly(*args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        status = keygen.main(list(args))
    assert status == 0, args


def config_figures(keys: list[bytes]) -> dict:
    """Seconds to load a 65,536-client server config, and for keygen's commands on it."""
    figures = {}
    directory = Path(tempfile.mkdtemp(prefix="vpncrypt-scale-"))
    try:
        server = write_server_files(directory, 65536, keys)
        config = load_server_config(server)
        assert len(config.clients) == 65536
        figures["load_65536_s"] = seconds(lambda: load_server_config(server))
        figures["keygen_list_s"] = seconds(lambda: keygen_quietly("list", "--server-config", str(server)))
        out = directory / "c7.toml"

        def rotate() -> None:
            keygen_quietly("rotate", "--server-config", str(server), "--name", "c7", "--out", str(out))

        def forget_rotation() -> None:
            for leftover in (out, directory / "c7.keys.json"):
                leftover.unlink(missing_ok=True)
        figures["keygen_rotate_s"] = seconds(rotate, forget_rotation)
        # The 65,536th client added to 65,535, and one removed: from a fresh file each time.

        def fresh(clients: int) -> None:
            write_server_files(directory, clients, keys)
            for leftover in directory.glob("new*"):
                leftover.unlink()

        figures["keygen_add_65536th_s"] = seconds(
            lambda: keygen_quietly("client", "--server-config", str(server), "--name", "new",
                                   "--out", str(directory / "new.toml")), lambda: fresh(65535))
        assert len(load_server_config(server).clients) == 65536
        figures["keygen_remove_s"] = seconds(
            lambda: keygen_quietly("remove", "--server-config", str(server), "--name", "c12345"), lambda: fresh(65536))
    finally:
        shutil.rmtree(directory)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--config-only", action="store_true", help="only the 65,536-client config and keygen figures")
    args = parser.parse_args()
    keys = [os.urandom(64) for _ in range(65536)]
    rows: list[dict] = []
    contexts: dict = {}
    timers: list[dict] = []
    if not args.config_only:
        rows = core_figures(keys)
        contexts = context_bytes()
        print()
        print("A ready AES-SIV context (resident memory grown by 4,096 of them): "
              + ", ".join(f"{name} {size:.0f} bytes" for name, size in contexts.items()))
        timers = [timer_cost(clients, keys) for clients in (4096, 65536)]
        print()
        print("The server's once-a-second work for clients that all sent data in the last 30 s"
              " (milliseconds per second, best of 5):")
        print("| clients | keep_ahead ms, whole round | calls | longest call ms | table of bounds to save ms |")
        print("|---:|---:|---:|---:|---:|")
        for row in timers:
            print(f"| {row['clients']} | {row['keep_ahead_ms']:.1f} | {row['keep_ahead_calls']} |"
                  f" {row['keep_ahead_longest_call_ms']:.1f} | {row['bounds_table_ms']:.1f} |")
        print()
        print("Erasing keys at an epoch's end, every client idle (each derives a key; milliseconds, best of 5):")
        print("| clients | whole round ms | calls | longest call ms |")
        print("|---:|---:|---:|---:|")
        for row in timers:
            print(f"| {row['clients']} | {row['keys_ms']:.1f} | {row['keys_calls']} | {row['keys_longest_call_ms']:.1f} |")
    files = config_figures(keys)
    print()
    print("At 65,536 clients, the files (seconds, best of 3; goal: under 2 s each):")
    for name, value in files.items():
        print(f"- {name}: {value:.2f} s{'' if value < GOAL_SECONDS else '  (over the goal)'}")
    if args.json:
        args.json.write_text(json.dumps({"core": rows, "contexts": contexts, "timers": timers, "files": files}, indent=2))
    return 0


def core_figures(keys: list[bytes]) -> list[dict]:
    rows = []
    for clients in (1, 256, 4096, 65536):
        row = measure(clients, keys)
        server = row.pop("server")
        if clients == 65536:
            row |= garbage(server, keys)
        del server
        rows.append(row)
    # Unknown client: a table with one ID free.
    entries = [ClientEntry(i, keys[i], KEY_EPOCH, (ipaddress.ip_network(f"{address(i)}/128"),)) for i in range(1, 65536)]
    almost_full = ServerCore(1, entries, NOW)
    unknown = [(encode_header(KIND_DATA, int(NOW), 0, 1) + bytes(100), ("192.0.2.9", 1))] * BATCH
    rows[-1]["reject_unknown_client_us"] = reject_cost(almost_full, unknown)
    base = rows[0]
    print("| clients | table MiB | lookup us (ID and route) | lookup vs 1 client | open us/packet | open vs 1 client |"
          " route+seal us/packet | route+seal vs 1 client |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['clients']} | {row['table_mib']:.1f} | {row['lookup_us']:.3f} |"
              f" {row['lookup_us'] / base['lookup_us']:.2f} | {row['open_us']:.2f} |"
              f" {row['open_us'] / base['open_us']:.2f} | {row['route_and_seal_us']:.2f} |"
              f" {row['route_and_seal_us'] / base['route_and_seal_us']:.2f} |")
    full = rows[-1]
    print()
    print("At 65,536 clients, garbage against a real open:")
    for name in ("unknown_client", "stale_time", "bad_length"):
        cost = full[f"reject_{name}_us"]
        print(f"- {name}: {cost:.2f} us, {cost / full['open_us']:.3f} of an open")
    return rows


if __name__ == "__main__":
    sys.exit(main())
