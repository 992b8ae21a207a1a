"""vpncrypt-server and vpncrypt-client: run in the foreground, log to stderr."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..client import ResolveError, is_name, resolve, run_client, tunnel_spec as client_spec
from ..core import siv
from ..core.wire import CipherUnusable, check_cipher
from ..daemon import StopRequested, unwind_on_stop_signals
from ..config import ClientConfig, ConfigError, load_client_config, load_server_config, parse_endpoint
from ..netconfig import NetconfigError, RoutingConflict, TunnelSpec, describe, plan
from ..privileges import PrivilegeError
from ..server import run_server, tunnel_spec as server_spec
from ..tun import TunError, choose_offload
from .common import RUNTIME_ERROR, add_version, error_exit, print_all, setup_logging

PLATFORMS = ("linux", "freebsd", "darwin")  # the OSes a dry run can print the commands of
# "1": seal and open with cryptography's AESSIV, and split and merge TUN
# packets with vpncrypt/tun/offload.py, not the compiled ones.
PURE_VARIABLE = "VPNCRYPT_PURE_PYTHON"


def _main(program: str, argv, load, spec, run) -> int:
    parser = argparse.ArgumentParser(prog=program, description=f"Run the vpncrypt {program.split('-')[1]}"
                                     " in the foreground until SIGINT or SIGTERM.")
    parser.add_argument("--config", required=True, metavar="FILE")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config and print the network commands it would run, then exit")
    parser.add_argument("--platform", choices=PLATFORMS,
                        help="with --dry-run: print the commands for this OS instead of this one's")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_version(parser)
    args = parser.parse_args(argv)
    if args.platform and not args.dry_run:
        return error_exit(program, "--platform only goes with --dry-run (a tunnel runs on the OS it is on)")
    setup_logging(args.verbose)
    try:
        config = load(args.config)
        if args.dry_run:
            print_all(describe(plan(spec(config), args.platform or sys.platform)))
            return 0
        pure = os.environ.get(PURE_VARIABLE) == "1"
        siv.choose(pure, f"{PURE_VARIABLE}=1")  # both logged once started
        choose_offload(pure, f"{PURE_VARIABLE}=1")
        check_cipher()
        unwind_on_stop_signals()
        return run(config)
    except StopRequested as stop:
        logging.getLogger("vpncrypt").info("%s while starting: stopped, and undid what was made", stop)
        return 0
    except KeyboardInterrupt:  # before the start made anything (unwind_on_stop_signals covers the rest)
        logging.getLogger("vpncrypt").info("SIGINT while starting: stopped (nothing was made)")
        return 0
    except (ConfigError, RoutingConflict) as error:
        return error_exit(program, error)
    except (TunError, NetconfigError, ResolveError, OSError, CipherUnusable, PrivilegeError) as error:
        return error_exit(program, error, RUNTIME_ERROR)


def client_dry_run_spec(config: ClientConfig) -> TunnelSpec:
    """The client's tunnel as its start would plan it, with the server's
    address as at start where it matters: a route covering it is refused
    (netconfig.check_loops), and a full tunnel on the BSDs routes it outside
    the tunnel. A literal needs no lookup; a name is looked up only when there
    are routes (a name may not resolve yet: without routes the dry run prints
    the plan as before, and the start checks the tunnel's own networks)."""
    host, port = parse_endpoint(config.server)
    if is_name(host) and not config.routes:
        return client_spec(config)
    _, address = resolve(host, port)
    return client_spec(config, address)


def server_main(argv: list[str] | None = None) -> int:
    return _main("vpncrypt-server", argv, load_server_config, server_spec, run_server)


def client_main(argv: list[str] | None = None) -> int:
    return _main("vpncrypt-client", argv, load_client_config, client_dry_run_spec, run_client)
