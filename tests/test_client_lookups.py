"""Looking a server's name up again (the client's I/O shell), with the lookup faked:
tests send no DNS queries."""

from __future__ import annotations

import asyncio
import logging
import socket

from vpncrypt.client import ServerLookups, is_name
from vpncrypt.core.client import ClientCore

SERVER_EP = ("192.0.2.1", 51820)


def client_core() -> ClientCore:
    return ClientCore(1, bytes(64), key_epoch=500_000, server_id=7, server_endpoint=SERVER_EP, routes=[], now=1.8e9)


def run_lookups(core: ClientCore, answers: list) -> ServerLookups:
    """One ServerLookups, whose lookups return (or raise) ``answers`` in turn."""
    lookups = ServerLookups(core, "vpn.example", 51820, socket.AF_INET, interval=60)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def fake_getaddrinfo(host, port, *, family, type):
            assert (host, port, family, type) == ("vpn.example", 51820, socket.AF_INET, socket.SOCK_DGRAM)
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", address) for address in answer]

        loop.getaddrinfo = fake_getaddrinfo  # type: ignore[method-assign]
        while answers:
            await lookups.look_up()

    asyncio.run(main())
    return lookups


def test_a_moved_server_is_followed_and_logged(caplog):
    core = client_core()
    with caplog.at_level(logging.INFO, logger="vpncrypt.client"):
        run_lookups(core, [[SERVER_EP], [("192.0.2.2", 51820)]])
    assert core.server.endpoint == ("192.0.2.2", 51820)
    assert "server 'vpn.example' is now at 192.0.2.2:51820 (was 192.0.2.1:51820)" in caplog.text


def test_failed_lookups_keep_the_address_and_warn_once(caplog):
    core = client_core()
    failure = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    with caplog.at_level(logging.INFO, logger="vpncrypt.client"):
        lookups = run_lookups(core, [failure, failure, failure])
    assert core.server.endpoint == SERVER_EP and lookups.failing
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Temporary failure in name resolution" in warnings[0].getMessage()
    assert "staying at 192.0.2.1:51820" in warnings[0].getMessage()
    with caplog.at_level(logging.INFO, logger="vpncrypt.client"):
        run_lookups(core, [[SERVER_EP]])
    assert not [r for r in caplog.records if "is now at" in r.getMessage()]


def test_only_names_are_looked_up_again():
    assert is_name("vpn.example") and not is_name("192.0.2.1") and not is_name("2001:db8::1")
