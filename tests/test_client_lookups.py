"""Looking a server's name up again (the client's I/O shell), with the lookup faked:
tests send no DNS queries."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket

from vpncrypt.client import ServerLookups, is_name
from vpncrypt.netconfig import TunnelSpec, loop_route
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


def test_an_address_a_tunnel_route_covers_is_passed_over_with_one_warning(caplog):
    """Issue 13: moving there would send the tunnel's datagrams into the tunnel. The
    client stays where it is (a tunnel that works), says so once, and moves when
    the name gives a usable address again."""
    spec = TunnelSpec("vc0", (ipaddress.ip_interface("203.0.113.2/24"),), 1420,
                      (ipaddress.ip_network("198.51.100.0/24"),), ipaddress.ip_address(SERVER_EP[0]))
    core = client_core()
    lookups = ServerLookups(core, "vpn.example", 51820, socket.AF_INET, interval=60,
                            loop_route=functools.partial(loop_route, spec))
    covered, usable = ("198.51.100.9", 51820), ("192.0.2.2", 51820)
    with caplog.at_level(logging.INFO, logger="vpncrypt.client"):
        lookups.resolved([covered])
        lookups.resolved([covered])
        assert core.server.endpoint == SERVER_EP and lookups.looping
        lookups.resolved([covered, usable])  # the usable one is taken
    assert core.server.endpoint == usable and not lookups.looping
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["server 'vpn.example' now resolves to 198.51.100.9; staying at 192.0.2.1:51820: route"
                        " 198.51.100.0/24 covers the server's address 198.51.100.9: the tunnel's own datagrams would"
                        " loop; route only the networks beside the server, or everything (0.0.0.0/0, which keeps"
                        " the server out)"]
