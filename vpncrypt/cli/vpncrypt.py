"""vpncrypt: talk to running daemons through their control sockets.

  vpncrypt show [NAME] [--json | --prometheus]   what each client is doing, as ``wg show``
  vpncrypt reload [NAME]                         read the server's config again (as SIGHUP)

NAME is the daemon's config file's stem (``server`` for server.toml); with
none, ``show`` shows every daemon running here and ``reload`` reloads the one
server running here. The daemons answer in JSON (documented in the README,
"Operating"); the text and Prometheus forms are made here from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import control
from ..events import duration
from .common import RUNTIME_ERROR, USAGE_ERROR, error_exit

PROGRAM = "vpncrypt"


def ask(name: str, command: str) -> dict[str, Any]:
    """The daemon's answer; raises ControlError when it cannot be reached,
    control.RequestError when it refuses."""
    answer = control.request(control.socket_path(name), command)
    if not answer.get("ok"):
        raise control.RequestError(answer.get("error", "refused"), answer.get("status", RUNTIME_ERROR))
    return answer


def running() -> list[str]:
    names = control.daemon_names()
    if not names:
        raise control.ControlError(f"no vpncrypt daemon is running (no control socket in {control.run_dir()})")
    return names


# --- text --------------------------------------------------------------------------------


def size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


def ago(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    seconds = max(now - then, 0)
    if seconds < 1:
        return "just now"
    if seconds < 2:
        return "1 second ago"
    if seconds < 60:
        return f"{int(seconds)} seconds ago"
    return f"{duration(seconds)} ago"


def _drops(status: dict[str, Any]) -> str:
    counts = {**status["drops"], "tun_write_refused": status["tun_write_refused"],
              "udp_send_errors": status["udp_send_errors"]}
    shown = [f"{reason} {count}" for reason, count in counts.items() if count]
    return ", ".join(shown) or "none"


def _filtered(kernel_filter: dict[str, Any] | None) -> str:
    if kernel_filter is None:
        return "(not reported: the daemon predates it)"
    ids = kernel_filter["client_ids"]
    if not ids:
        return "no client ID refused"
    where = "in the kernel" if kernel_filter["in_kernel"] else "unopened (no socket filter on this platform)"
    return (f"{len(ids)} client ID{'' if len(ids) == 1 else 's'} refused {where}, for a flood of forgeries:"
            f" {', '.join(map(str, ids))}")


def _transfer(entry: dict[str, Any]) -> str:
    return (f"{size(entry['rx_bytes'])} received ({entry['rx_packets']} packets),"
            f" {size(entry['tx_bytes'])} sent ({entry['tx_packets']} packets)")


def _data_path(status: dict[str, Any]) -> str:
    """The cipher and offload the daemon runs, as its start line says them."""
    path = status.get("data_path")  # absent from a daemon started before the field was added
    return f"cipher {path['cipher']}; offload {path['offload']}" if path else "(not reported)"


def _waiting(status: dict[str, Any]) -> list[str]:
    """A client with no tunnel yet: waiting for its server's name (client.NameWait)."""
    now, waiting = status["now"], status["waiting_for_server"]
    failed = waiting["failed_lookups"]
    lookups = f"{failed} failed so far" if failed else "the first one under way"
    if waiting["next_lookup"] is not None:
        left = waiting["next_lookup"] - now
        lookups += f", the next in {duration(left)}" if left > 0 else ", the next one under way"
    lines = [
        f"client: {status['name']}",
        f"  waiting for the server's name: {waiting['server']} (no tunnel yet)",
        f"  lookups: {lookups}",
    ]
    if waiting["error"]:
        lines.append(f"  last error: {waiting['error']}")
    lines.append(f"  up: {duration(now - status['started'])}, pid {status['pid']}, config {status['config']}")
    return lines


def render_text(status: dict[str, Any]) -> str:
    now = status["now"]
    lines = []
    if "waiting_for_server" in status:
        lines += _waiting(status)
    elif status["role"] == "server":
        heard = sum(1 for c in status["clients"] if c["last_datagram"] is not None)
        totals = status["totals"]
        lines += [
            f"server: {status['name']}",
            f"  server ID: {status['server_id']}",
            f"  listening on: UDP port {status['port']} ({status['listen_address']}), interface {status['interface']}",
            f"  data path: {_data_path(status)}",
            f"  up: {duration(now - status['started'])}, pid {status['pid']}, config {status['config']}"
            + (f", reloaded {ago(status['reloaded'], now)}" if status["reloaded"] else ""),
            f"  clients: {len(status['clients'])}, {heard} heard from since start",
            f"  transfer: {_transfer(totals)}",
            f"  drops: {_drops(status)}",
            f"  flood filter: {_filtered(status.get('kernel_filter'))}",
        ]
        for client in status["clients"]:
            lines += [
                "",
                f"client: {client['name']}",
                f"  ID: {client['client_id']}",
                f"  addresses: {', '.join(client['addresses'])}",
                f"  endpoint: {client['endpoint'] or '(not heard from yet)'}",
                f"  last datagram: {ago(client['last_datagram'], now)}",
                f"  path MTU: {client['path_mtu']}",
                f"  transfer: {_transfer(client)}",
            ]
            troubles = [f"{label} {client[key]}" for key, label in (
                ("roams", "roamed"), ("auth_failures", "failed authentication"),
                ("time_drops", "outside the time window"),
                ("stale_drops", "authentic but superseded or counter too old")) if client.get(key)]
            if troubles:
                lines.append(f"  counts: {', '.join(troubles)}")
            measured = client.get("clock_offset_at")
            lines += _clock("clock", client.get("clock_offset"),
                            "measured by a time answer" + (f" {ago(measured, now)}" if measured is not None else ""))
    else:
        server = status["server"]
        lines += [
            f"client: {status['name']}",
            f"  ID: {status['client_id']}, server ID {status['server_id']}",
            f"  interface: {status['interface']}, addresses {', '.join(status['addresses'])}",
            f"  data path: {_data_path(status)}",
            f"  up: {duration(now - status['started'])}, pid {status['pid']}, config {status['config']}",
            f"  server: {server['endpoint']}",
            f"  last datagram from it: {ago(server['last_datagram'], now)}",
            f"  path MTU: {server['path_mtu']} ({server['path_mtu_state'].replace('_', ' ')})",
            f"  transfer: {_transfer(server)}",
            f"  drops: {_drops(status)}",
        ]
        lines += _clock("server's clock", status.get("clock_offset"), "from a time answer: this client stamps in it")
    return "\n".join(lines)


def _clock(label: str, offset: float | None, how: str) -> list[str]:
    """A line for a clock a time answer found a second or more off (``offset``:
    the other end's clock minus this host's, seconds), else none."""
    if offset is None or abs(round(offset)) < 1:
        return []
    side = "ahead of" if offset > 0 else "behind"
    return [f"  {label}: about {abs(round(offset))} s {side} this host's ({how})"]


# --- Prometheus ----------------------------------------------------------------------------

# (name, type, help, where the value is); one family each, per the text exposition format.
CLIENT_METRICS = [
    ("vpncrypt_client_receive_bytes_total", "counter", "Inner bytes received from the client.", "rx_bytes"),
    ("vpncrypt_client_receive_packets_total", "counter", "Inner packets received from the client.", "rx_packets"),
    ("vpncrypt_client_transmit_bytes_total", "counter", "Inner bytes sent to the client.", "tx_bytes"),
    ("vpncrypt_client_transmit_packets_total", "counter", "Inner packets sent to the client.", "tx_packets"),
    ("vpncrypt_client_last_datagram_timestamp_seconds", "gauge",
     "When the client's newest datagram came (Unix time; 0 for never).", "last_datagram"),
    ("vpncrypt_client_roams_total", "counter", "Times the client moved to another endpoint.", "roams"),
    ("vpncrypt_client_auth_failures_total", "counter",
     "Datagrams naming the client that failed authentication.", "auth_failures"),
    ("vpncrypt_client_time_window_drops_total", "counter",
     "Datagrams naming the client stamped outside the time window.", "time_drops"),
    ("vpncrypt_client_stale_drops_total", "counter",
     "Authentic datagrams of the client refused as superseded or counter_too_old (stamped behind what was"
     " accepted; one authenticated every 2 s at most).",
     "stale_drops"),
    ("vpncrypt_client_path_mtu_bytes", "gauge", "The tunnel's effective MTU to the client (path MTU probes).",
     "path_mtu"),
]
SERVER_PEER_METRICS = [  # a client daemon's view of its server
    ("vpncrypt_server_receive_bytes_total", "counter", "Inner bytes received from the server.", "rx_bytes"),
    ("vpncrypt_server_receive_packets_total", "counter", "Inner packets received from the server.", "rx_packets"),
    ("vpncrypt_server_transmit_bytes_total", "counter", "Inner bytes sent to the server.", "tx_bytes"),
    ("vpncrypt_server_transmit_packets_total", "counter", "Inner packets sent to the server.", "tx_packets"),
    ("vpncrypt_server_last_datagram_timestamp_seconds", "gauge",
     "When the server's newest datagram came (Unix time; 0 for never).", "last_datagram"),
    ("vpncrypt_server_path_mtu_bytes", "gauge", "The tunnel's effective MTU to the server (path MTU probes).",
     "path_mtu"),
]


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    return "{" + ",".join(f'{key}="{_label(value)}"' for key, value in labels.items()) + "}"


def render_prometheus(statuses: list[dict[str, Any]]) -> str:
    """The statuses in the Prometheus text exposition format (each family once, its samples together)."""
    families: dict[str, tuple[str, str, list[str]]] = {}

    def sample(name: str, kind: str, help_text: str, labels: dict[str, Any], value: Any) -> None:
        family = families.setdefault(name, (kind, help_text, []))
        family[2].append(f"{name}{_labels(labels)} {float(value or 0):.17g}")

    for status in statuses:
        daemon = {"daemon": status["name"]}
        sample("vpncrypt_start_time_seconds", "gauge", "When the daemon started (Unix time).",
               daemon, status["started"])
        if "waiting_for_server" in status:  # a client with no tunnel yet: nothing else to count
            sample("vpncrypt_server_name_lookup_failures_total", "counter",
                   "Failed lookups of the server's name by a client still waiting for it.",
                   daemon, status["waiting_for_server"]["failed_lookups"])
            continue
        if status["role"] == "server":
            sample("vpncrypt_clients", "gauge", "Clients in the server's config.", daemon, len(status["clients"]))
            if "icmp_sent" in status:  # not from a daemon older than the field
                sample("vpncrypt_icmp_sent_total", "counter", "ICMP destination unreachable messages sent.",
                       daemon, status["icmp_sent"])
            if "kernel_filter" in status:  # not from a daemon older than the filter
                sample("vpncrypt_filtered_client_ids", "gauge",
                       "Client IDs whose datagrams are refused unread for a flood of forgeries.",
                       daemon, len(status["kernel_filter"]["client_ids"]))
            for client in status["clients"]:
                labels = {**daemon, "name": client["name"], "client_id": client["client_id"]}
                for name, kind, help_text, key in CLIENT_METRICS:
                    if key in client:  # not from a daemon older than the field
                        sample(name, kind, help_text, labels, client[key])
        else:
            for name, kind, help_text, key in SERVER_PEER_METRICS:
                sample(name, kind, help_text, daemon, status["server"][key])
        for reason, count in sorted(status["drops"].items()):
            sample("vpncrypt_drops_total", "counter", "Datagrams and packets dropped, by reason.",
                   {**daemon, "reason": reason}, count)
        sample("vpncrypt_tun_write_refused_total", "counter", "Packets the TUN device refused.",
               daemon, status["tun_write_refused"])
        sample("vpncrypt_udp_send_errors_total", "counter", "Datagrams the kernel refused to send.",
               daemon, status["udp_send_errors"])
    lines = []
    for name, (kind, help_text, samples) in families.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
    return "\n".join(lines)


# --- commands ------------------------------------------------------------------------------


def show(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else running()
    statuses = []
    for name in names:
        statuses.append(ask(name, "show")["status"])
    if args.json:
        out: Any = statuses[0] if args.name else {status["name"]: status for status in statuses}
        print(json.dumps(out, indent=2, sort_keys=True))
    elif args.prometheus:
        print(render_prometheus(statuses))
    else:
        print("\n\n".join(render_text(status) for status in statuses))
    return 0


def reload(args: argparse.Namespace) -> int:
    if args.name:
        name = args.name
    else:
        names = running()
        if len(names) > 1:  # clients too, on a test host: the one server among them
            names = [n for n in names if ask(n, "show")["status"]["role"] == "server"] or names
        if len(names) != 1:
            raise control.RequestError(f"several daemons are running ({', '.join(names)}): name one", USAGE_ERROR)
        name = names[0]
    print(f"{name}: reloaded: {ask(name, 'reload')['message']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    shown = commands.add_parser("show", help="show what a daemon is doing (every daemon without NAME)")
    shown.add_argument("name", nargs="?", metavar="NAME", help="the config's stem: server for server.toml")
    form = shown.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="the daemon's JSON (a stable format: see the README)")
    form.add_argument("--prometheus", action="store_true", help="Prometheus text exposition format")
    reloaded = commands.add_parser("reload", help="make a server read its config again (as SIGHUP does)")
    reloaded.add_argument("name", nargs="?", metavar="NAME")
    args = parser.parse_args(argv)
    try:
        return show(args) if args.command == "show" else reload(args)
    except control.RequestError as error:
        return error_exit(PROGRAM, error, error.status)
    except control.ControlError as error:
        return error_exit(PROGRAM, error, RUNTIME_ERROR)
    except BrokenPipeError:  # vpncrypt show | head
        return 0


if __name__ == "__main__":
    sys.exit(main())
