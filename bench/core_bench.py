"""Micro-benchmark of the protocol core against the bare cipher, in one run,
with each AES-SIV path: the compiled one (vpncrypt._siv), with each engine of
its MAC half this CPU has ("aes-ni": S2V's CMACs interleaved on AES-NI;
"openssl": OpenSSL's AES-CBC), and cryptography's.

Run: python bench/core_bench.py [--json FILE]

Reports microseconds a packet for seal and open of 64, 512 and 1400-byte
packets next to a bare encrypt/decrypt of the same path's class with one
21-byte AD string (what the core itself does), the ratio core/bare, the cost
of rejecting garbage against a real open, and the compiled path's figures
over cryptography's. The paths take turns (``--rounds``), so that noise on
this shared machine hits both alike. Batches of 64, as the data path delivers them; the bare
loops keep their outputs in a list as any batch caller must (discarding them
lets malloc hand back one hot buffer, which no real data path gets). Each figure
is the minimum of several repeats, taken interleaved so that noise on this
shared machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vpncrypt.core import siv  # noqa: E402
from vpncrypt.core.server import ClientEntry, ServerCore  # noqa: E402
from vpncrypt.core.epochs import DEFAULT_EPOCH_SECONDS, epoch_key  # noqa: E402
from vpncrypt.core.peer import Peer  # noqa: E402
from vpncrypt.core.wire import KIND_DATA, TO_SERVER, ad_suffix, encode_header  # noqa: E402

BATCH = 64
NOW = 1_700_000_000.0
KEY_EPOCH = int(NOW) // DEFAULT_EPOCH_SECONDS - 1  # the keys are the previous epoch's: one step to derive
CLIENT_ADDRESS = ipaddress.ip_network("203.0.113.2/32")


def inner_packet(size: int) -> bytes:
    """A UDP/IPv4 packet of ``size`` bytes whose lengths hold together (the core
    drops one whose do not: inner.well_formed)."""
    src = CLIENT_ADDRESS.network_address.packed
    dst = ipaddress.ip_address("203.0.113.1").packed
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0, src, dst)
    return ip + struct.pack("!HHHH", 4433, 443, size - 20, 0) + os.urandom(size - 28)


def best_of(fn, repeats: int, loops: int) -> float:
    """Microseconds per packet: the best of ``repeats`` runs of ``loops`` batches."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / (loops * BATCH) * 1e6


def measure(size: int, repeats: int, loops: int) -> dict[str, float]:
    key = os.urandom(64)
    packet = inner_packet(size)
    payloads = [packet] * BATCH
    ad = os.urandom(21)
    bare = siv.AESSIV(epoch_key(key, KEY_EPOCH, int(NOW) // DEFAULT_EPOCH_SECONDS))  # the key the peers use at NOW

    client_side = Peer(9, key, key_epoch=KEY_EPOCH, server_id=1, send_direction=TO_SERVER, now=NOW)
    state = {"now": NOW + 2}

    def bare_encrypt() -> list[bytes]:
        return [bare.encrypt(p, [ad]) for p in payloads]

    def make_bare_decrypt():
        # The same number of distinct datagrams as the core opens, pre-split
        # into body and AD, so both sides touch the same amount of memory.
        sender = Peer(9, key, key_epoch=KEY_EPOCH, server_id=1, send_direction=TO_SERVER, now=NOW)
        suffix = ad_suffix(TO_SERVER, 1, int(NOW + 2))
        batches = [[(d[8:], [d[:8] + suffix]) for d in sender.seal(KIND_DATA, payloads, NOW + 2)]
                   for _ in range(loops)]
        it = iter(batches)

        def run() -> list[bytes]:
            return [bare.decrypt(body, ads) for body, ads in next(it)]
        return run

    def core_seal() -> None:
        client_side.seal(KIND_DATA, payloads, state["now"])

    # Open needs fresh counters every loop, so pre-seal enough batches and feed
    # a new server each repeat (a server's replay window accepts each once).
    def make_open():
        server = ServerCore(1, [ClientEntry(9, key, KEY_EPOCH, (CLIENT_ADDRESS,))], NOW)
        sender = Peer(9, key, key_epoch=KEY_EPOCH, server_id=1, send_direction=TO_SERVER, now=NOW)
        batches = [[(d, ("192.0.2.2", 5000)) for d in sender.seal(KIND_DATA, payloads, NOW + 2)] for _ in range(loops)]
        it = iter(batches)
        return lambda: server.datagrams_received(next(it), NOW + 2)

    def fresh_best(make) -> float:
        best = float("inf")
        for _ in range(repeats):
            fn = make()
            start = time.perf_counter()
            for _ in range(loops):
                fn()
            best = min(best, time.perf_counter() - start)
        return best / (loops * BATCH) * 1e6

    garbage_server = ServerCore(1, [ClientEntry(9, key, KEY_EPOCH, (CLIENT_ADDRESS,))], NOW)
    real = client_side.seal(KIND_DATA, [packet], NOW + 2)[0]
    garbage = {
        "unknown_client": [(encode_header(KIND_DATA, int(NOW), 4242, 1) + real[8:], None)] * BATCH,
        "bad_length": [(real[:20], None)] * BATCH,
        "stale_time": [(encode_header(KIND_DATA, int(NOW) - 300, 9, 1) + real[8:], None)] * BATCH,
    }
    result: dict[str, float] = {}
    result["bare_encrypt_us"] = best_of(bare_encrypt, repeats, loops)
    result["seal_us"] = best_of(core_seal, repeats, loops)
    result["bare_decrypt_us"] = fresh_best(make_bare_decrypt)
    result["open_us"] = fresh_best(make_open)
    for name, batch in garbage.items():
        result[f"reject_{name}_us"] = best_of(lambda b=batch: garbage_server.datagrams_received(b, NOW + 2), repeats, loops)
    return result


def paths() -> dict[str, str | None]:
    """Path name: the compiled class's engine, or None for cryptography's."""
    from vpncrypt import _siv

    return {**{f"compiled {engine}": engine for engine in _siv.ENGINES}, "cryptography": None}



TIMED = ("bare_encrypt_us", "seal_us", "bare_decrypt_us", "open_us")


def measure_paths(size: int, rounds: int, repeats: int, loops: int) -> dict[str, dict[str, float]]:
    """Each path's figures at ``size``, the best of ``rounds`` turns taken in
    alternation, ratios recomputed from the bests."""
    best: dict[str, dict[str, float]] = {}
    from vpncrypt import _siv

    for _ in range(rounds):
        for path, engine in paths().items():
            if engine is not None:
                _siv.use_engine(engine)
            siv.choose(engine is None, "benchmark")
            figures = measure(size, repeats, loops)
            kept = best.setdefault(path, figures)
            for name, value in figures.items():
                if name.endswith("_us"):
                    kept[name] = min(kept[name], value)
    for f in best.values():
        f["seal_ratio"] = f["seal_us"] / f["bare_encrypt_us"]
        f["open_ratio"] = f["open_us"] / f["bare_decrypt_us"]
        for name in ("unknown_client", "bad_length", "stale_time"):
            f[f"reject_{name}_over_open"] = f[f"reject_{name}_us"] / f["open_us"]
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--rounds", type=int, default=3, help="turns each path takes, alternating")
    parser.add_argument("--repeats", type=int, default=3, help="repeats within a turn")
    parser.add_argument("--loops", type=int, default=60)
    args = parser.parse_args()
    if siv.CompiledAESSIV is None:
        parser.error(siv.NOT_BUILT + " (run tools/setup)")
    figures = {size: measure_paths(size, args.rounds, args.repeats, args.loops) for size in (64, 512, 1400)}
    from vpncrypt import _siv

    _siv.use_engine(_siv.ENGINES[0])
    print(f"compiled: {siv.choose(False)}")
    print()
    print("| size | path | bare encrypt us | seal us | seal/bare | bare decrypt us | open us | open/bare |"
          " reject unknown client / open | reject bad length / open | reject stale time / open |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, by_path in figures.items():
        for path, f in by_path.items():
            print(f"| {size} | {path} | {f['bare_encrypt_us']:.2f} | {f['seal_us']:.2f} | {f['seal_ratio']:.3f} |"
                  f" {f['bare_decrypt_us']:.2f} | {f['open_us']:.2f} | {f['open_ratio']:.3f} |"
                  f" {f['reject_unknown_client_over_open']:.3f} | {f['reject_bad_length_over_open']:.3f} |"
                  f" {f['reject_stale_time_over_open']:.3f} |")
    print()
    print("| size | compiled engine | bare encrypt compiled/cryptography | seal compiled/cryptography |"
          " bare decrypt compiled/cryptography | open compiled/cryptography |")
    print("|---:|---|---:|---:|---:|---:|")
    for size, by_path in figures.items():
        p = by_path["cryptography"]
        for path, c in by_path.items():
            if path != "cryptography":
                print(f"| {size} | {path.split()[1]} | " + " | ".join(f"{c[name] / p[name]:.3f}" for name in TIMED) + " |")
    if "compiled openssl" in figures[1400] and "compiled aes-ni" in figures[1400]:
        print()
        print("| size | bare encrypt aes-ni/openssl | seal aes-ni/openssl | bare decrypt aes-ni/openssl |"
              " open aes-ni/openssl |")
        print("|---:|---:|---:|---:|---:|")
        for size, by_path in figures.items():
            a, o = by_path["compiled aes-ni"], by_path["compiled openssl"]
            print(f"| {size} | " + " | ".join(f"{a[name] / o[name]:.3f}" for name in TIMED) + " |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
