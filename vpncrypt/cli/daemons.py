"""vpncrypt-server and vpncrypt-client: run in the foreground, log to stderr."""

from __future__ import annotations

import argparse

from ..client import ResolveError, run_client, tunnel_spec as client_spec
from ..config import ConfigError, load_client_config, load_server_config
from ..netconfig import NetconfigError, describe, plan
from ..server import run_server, tunnel_spec as server_spec
from ..tun import TunError
from .common import RUNTIME_ERROR, error_exit, setup_logging


def _main(program: str, argv, load, spec, run) -> int:
    parser = argparse.ArgumentParser(prog=program, description=f"Run the vpncrypt {program.split('-')[1]}"
                                     " in the foreground until SIGINT or SIGTERM.")
    parser.add_argument("--config", required=True, metavar="FILE")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config and print the network commands it would run, then exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = load(args.config)
        if args.dry_run:
            print(describe(plan(spec(config))))
            return 0
        return run(config)
    except ConfigError as error:
        return error_exit(program, error)
    except (TunError, NetconfigError, ResolveError, OSError) as error:
        return error_exit(program, error, RUNTIME_ERROR)


def server_main(argv: list[str] | None = None) -> int:
    return _main("vpncrypt-server", argv, load_server_config, server_spec, run_server)


def client_main(argv: list[str] | None = None) -> int:
    return _main("vpncrypt-client", argv, load_client_config, client_spec, run_client)
