"""Commands held to their tool's man-page synopsis, for the BSD plans.

Each test file states a table per OS (``Grammar``): the keywords of
ifconfig(8) and route(8) that a tunnel plan may use, every one of them as
the man page and the tool's source have it. ``check`` fails a command with
a flag or keyword not in the table, an argument of the wrong shape (an IPv6
address after ``-inet``, a prefix after ``-host``, a gateway missing) or, for
``sh -c``, a script that does not parse or that calls route or ifconfig out
of grammar, so a typo fails even where a golden list repeats it.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
from dataclasses import dataclass

FAMILIES = {"inet": 4, "inet6": 6, "-inet": 4, "-inet6": 6}
INTERFACE = re.compile(r"[a-z]+[0-9]+|utun\?")  # a name the kernel gave, or the dry run's stand-in


@dataclass(frozen=True)
class Grammar:
    ifconfig_keywords: frozenset[str]  # after the family and addresses: alias, up ...
    ifconfig_valued: frozenset[str]  # keywords that take a number: mtu
    ifconfig_inet6_keywords: frozenset[str]  # only after "inet6"
    route_options: frozenset[str]  # before the command: -n, -q
    route_commands: frozenset[str]
    route_flags: frozenset[str]  # modifiers without an argument: -host, -interface ...


def check(argv: list[str], grammar: Grammar) -> None:
    """Raise AssertionError saying what in ``argv`` is out of grammar."""
    tool, arguments = argv[0], argv[1:]
    if tool == "ifconfig":
        _ifconfig(arguments, grammar)
    elif tool == "route":
        _route(arguments, grammar)
    elif tool == "sh":
        _sh(arguments, grammar)
    else:
        raise AssertionError(f"{argv}: {tool} is not a tool the plan may use")


def _ifconfig(arguments: list[str], grammar: Grammar) -> None:
    """ifconfig interface [address_family [address [dest_address]] [parameters]]"""
    assert arguments and INTERFACE.fullmatch(arguments[0]), f"ifconfig {arguments}: no interface name first"
    rest = arguments[1:]
    assert rest, f"ifconfig {arguments}: nothing to do"
    family = None
    if rest[0] in ("inet", "inet6"):
        family, rest = FAMILIES[rest[0]], rest[1:]
        addresses = 0
        while rest and addresses < 2 and _is_address(rest[0], family, prefix=addresses == 0, interface=True):
            rest, addresses = rest[1:], addresses + 1
    keywords = grammar.ifconfig_keywords | (grammar.ifconfig_inet6_keywords if family == 6 else frozenset())
    while rest:
        word, rest = rest[0], rest[1:]
        if word in grammar.ifconfig_valued:
            assert rest and rest[0].isdigit(), f"ifconfig {arguments}: {word} wants a number"
            rest = rest[1:]
        else:
            assert word in keywords, f"ifconfig {arguments}: {word!r} is not an ifconfig keyword here"


def _route(arguments: list[str], grammar: Grammar) -> None:
    """route [-options] command [[modifiers] args]"""
    rest = list(arguments)
    while rest and rest[0].startswith("-") and rest[0] in grammar.route_options:
        rest.pop(0)
    assert rest and rest[0] in grammar.route_commands, f"route {arguments}: no known command"
    command, rest = rest[0], rest[1:]
    assert rest and rest[0] in ("-inet", "-inet6"), f"route {arguments}: the family must come first"
    family, rest = FAMILIES[rest[0]], rest[1:]
    flags: set[str] = set()
    positional: list[str] = []
    gateway = None
    while rest:
        word, rest = rest[0], rest[1:]
        if word == "-gateway":
            assert rest, f"route {arguments}: -gateway wants an address"
            gateway, rest = rest[0], rest[1:]
        elif word.startswith("-"):
            assert word in grammar.route_flags, f"route {arguments}: {word!r} is not a route modifier"
            flags.add(word)
        else:
            positional.append(word)
    assert positional, f"route {arguments}: no destination"
    destination, rest_positional = positional[0], positional[1:]
    if command == "get":
        assert destination == "default" or _is_address(destination, family, prefix="-host" not in flags), \
            f"route {arguments}"
        assert not rest_positional and gateway is None and flags <= {"-host"}, \
            f"route {arguments}: get takes a destination"
        return
    assert _is_address(destination, family, prefix="-host" not in flags), \
        f"route {arguments}: {destination!r} is no {'host' if '-host' in flags else 'destination'} of that family"
    if gateway is None and rest_positional:
        gateway, rest_positional = rest_positional[0], rest_positional[1:]
    assert not rest_positional, f"route {arguments}: too many arguments"
    if command == "delete":
        assert gateway is None and flags <= {"-host"}, f"route {arguments}: delete names the destination only"
        return
    if "-interface" in flags:
        assert gateway is not None and INTERFACE.fullmatch(gateway), f"route {arguments}: -interface wants a name"
    else:
        assert gateway is not None, f"route {arguments}: no gateway"
        assert gateway == "$gateway" or _is_address(gateway.split("%")[0], family, prefix=False), \
            f"route {arguments}: {gateway!r} is no gateway of that family"


def _sh(arguments: list[str], grammar: Grammar) -> None:
    """sh -c string [name [argument ...]]: the script parses, and every route
    or ifconfig in it (or run by it as "$@") is in grammar."""
    assert len(arguments) >= 2 and arguments[0] == "-c", f"sh {arguments}: only sh -c script"
    script, names = arguments[1], arguments[2:]
    parsed = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert parsed.returncode == 0, f"sh -c {script!r} does not parse: {parsed.stderr}"
    commands = embedded_commands(script)
    assert commands, f"sh -c {script!r}: no route or ifconfig in it"
    for command in commands:
        if command[1:] == ["$@"]:  # sh -c '... route "$@" ...' NAME ARGUMENTS: route ARGUMENTS
            assert len(names) > 1, f"sh {arguments}: nothing for \"$@\""
            check([command[0], *names[1:]], grammar)
        else:
            check(command, grammar)


def embedded_commands(script: str) -> list[list[str]]:
    """Each route and ifconfig call in ``script``, up to the next shell operator."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    commands = []
    for index, token in enumerate(tokens):
        if token not in ("route", "ifconfig"):
            continue
        command = [token]
        for following in tokens[index + 1:]:
            if set(following) <= set("();<>|&"):
                break
            command.append(following)
        if command[-1].isdigit():  # the 2 of 2>/dev/null
            command.pop()
        commands.append(command)
    return commands


def _is_address(text: str, family: int, prefix: bool, interface: bool = False) -> bool:
    """An address of ``family``; with ``prefix`` a network (route) or, with
    ``interface``, an address with its prefix length (ifconfig) will do too."""
    try:
        if prefix and "/" in text:
            value = ipaddress.ip_interface(text) if interface else ipaddress.ip_network(text, strict=True)
        else:
            value = ipaddress.ip_address(text)
    except ValueError:
        return False
    return value.version == family
