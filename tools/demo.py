"""vpncrypt demo: a server, two clients and a router as namespaces, real traffic, a short report.

Run through tools/demo (as root). Every step prints one line of what it
showed; everything it made is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import re
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netlab import (  # noqa: E402
    ROUTER_SECOND_ADDRESS, ROUTER_UNDERLAY, TUNNEL_ADDRESS, Job, Lab, LabError, build_vpn_lab, lab_namespaces,
)

MIB = 1 << 20
SERVER, B = TUNNEL_ADDRESS["server"], TUNNEL_ADDRESS["b"]


def say(step: str, outcome: str) -> None:
    print(f"  {step:<44} {outcome}", flush=True)


def ping_summary(vpn, ns: str, address: str) -> str:
    done = vpn.lab.run(ns, ["ping", "-c", "5", "-i", "0.2", "-W", "2", address], check=False)
    loss = re.search(r"(\d+(?:\.\d+)?)% packet loss", done.stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", done.stdout)
    return f"{loss.group(1) if loss else '?'}% loss, average {rtt.group(1) if rtt else '?'} ms"


def transfer(vpn, from_ns: str, to_ns: str, address: str, port: int, size: int, rate: float = 0) -> tuple[Job, Job]:
    sink = Job(vpn.lab, to_ns, "sink", address, str(port))
    sink.wait_until_ready()
    return Job(vpn.lab, from_ns, "source", address, str(port), str(size), str(rate)), sink


def verdict(source: Job, sink: Job) -> str:
    sent, received = source.result(), sink.result()
    intact = sent["sha256"] == received["sha256"] and sent["bytes"] == received["bytes"]
    rate = received["bytes"] * 8 / max(received["seconds"], 1e-6) / 1e6
    check = "SHA-256 matches" if intact else "CORRUPTED: SHA-256 differs"
    return f"{received['bytes'] / MIB:.0f} MiB at {rate:.0f} Mbit/s, {check}"


def endpoint_of(vpn, name: str) -> str:
    return next(c for c in vpn.server_status()["clients"] if c["name"] == name)["endpoint"]


def wait_endpoint(vpn, name: str, expected: str, timeout: float = 3) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and endpoint_of(vpn, name) != expected:
        time.sleep(0.05)
    return endpoint_of(vpn, name)


def demo(lab: Lab) -> None:
    print("Building the network: client a, client b -- router (NAT) -- server, each a namespace")
    vpn = build_vpn_lab(lab)
    print(f"Configs from vpncrypt-keygen in {vpn.configs}; starting vpncrypt-server and two vpncrypt-clients")
    vpn.start_server()
    vpn.start_client("a")
    vpn.start_client("b")
    a, b = vpn.client_ns["a"], vpn.client_ns["b"]
    print("\nThrough the tunnel (client a reaches the server over IPv4 through NAT, client b over IPv6):")
    say("ping a -> server", ping_summary(vpn, a, SERVER))
    say("ping a -> server over IPv6", ping_summary(vpn, a, "2001:db8:7::1"))
    say("TCP a -> server, 32 MiB", verdict(*transfer(vpn, a, vpn.server_ns, SERVER, 5001, 32 * MIB)))
    say("client to client: ping a -> b", ping_summary(vpn, a, B))
    say("client to client: TCP a -> b, 8 MiB", verdict(*transfer(vpn, a, b, B, 5002, 8 * MIB)))
    say("server sees client b at", endpoint_of(vpn, "b"))

    print("\nRoaming (client a's NAT mapping changes under a running transfer):")
    say("server sees client a at", endpoint_of(vpn, "a"))
    source, sink = transfer(vpn, a, vpn.server_ns, SERVER, 5003, 12 * MIB, 4 * MIB)
    time.sleep(0.8)
    vpn.snat(ROUTER_UNDERLAY, 40001)
    say("new source port: server now sees", wait_endpoint(vpn, "a", f"{ROUTER_UNDERLAY}:40001"))
    time.sleep(0.5)
    vpn.snat(ROUTER_SECOND_ADDRESS, 40002)
    say("new source address: server now sees", wait_endpoint(vpn, "a", f"{ROUTER_SECOND_ADDRESS}:40002"))
    say("the transfer (paced at 32 Mbit/s)", verdict(source, sink))

    print("\nOperating the running server (vpncrypt show --json, keygen --reload):")
    client_a = next(c for c in vpn.server_status()["clients"] if c["name"] == "a")
    say("vpncrypt show: client a", f"{client_a['rx_packets']} packets in, {client_a['tx_packets']} out,"
                                   f" {client_a['roams']} roams")
    source, sink = transfer(vpn, a, vpn.server_ns, SERVER, 5005, 8 * MIB, 4 * MIB)
    vpn.add_client("c", "--reload")
    say("client c added, server reloaded", f"{len(vpn.server_status()['clients'])} clients")
    vpn.remove_client("c", "--reload")
    say("client c removed, server reloaded", f"{len(vpn.server_status()['clients'])} clients")
    say("a's transfer through both reloads (paced)", verdict(source, sink))

    print("\nServer restarts (the clients are left alone):")
    source, sink = transfer(vpn, a, vpn.server_ns, SERVER, 5004, 12 * MIB, 3 * MIB)
    time.sleep(0.8)
    code = lab.stop(vpn.processes["server"])
    say("SIGTERM: server exited with", str(code))
    vpn.start_server()
    time.sleep(0.8)
    lab.stop(vpn.processes["server"], signal.SIGKILL)
    say("kill -9, then started again", "done")
    vpn.start_server()
    say("the transfer across both restarts (paced)", verdict(source, sink))
    drops = {k: v for k, v in vpn.server_status()["drops"].items() if v}
    say("server drop counters (since its last start)", ", ".join(f"{k} {v}" for k, v in drops.items()) or "none")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="vpncrypt-demo-"))
    lab = Lab(workdir)
    # SIGTERM (and Ctrl-C's SIGINT) unwind through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        demo(lab)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except LabError as error:
        print(f"\ndemo failed: {error}\nlogs are in {workdir}", file=sys.stderr)
        return 1
    finally:
        lab.close()
        left = lab_namespaces(lab.prefix)
        print(f"\nTorn down: {'nothing left behind' if not left else 'LEFT BEHIND: ' + ', '.join(left)}"
              f" (logs in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
