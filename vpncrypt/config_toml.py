"""Reading TOML fast for the one layout that can be long: keygen's [[client]] tables.

tomllib takes about 20 us a [[client]] table; a server with 65,536 clients
would take seconds at every start, reload and keygen run. Tables written in
keygen's exact form (name, client_id, addresses, comments, blank lines) are
read line by line here; anything else, and any error, goes to tomllib, whose
result and messages are the reference (tests/test_config_scale.py holds the
two to each other).
"""

from __future__ import annotations

import re
import tomllib
from typing import Any


# The [[client]] tables as keygen writes them, one line a key: read with these
# instead of tomllib, which takes seconds for 65,536 of them. Anything else
# (another key, an escape, a multi-line value, a line of any other form) sends
# the whole file through tomllib, so this only ever gives what tomllib gives.
_HEADER = re.compile(r"\s*\[\[?\s*[A-Za-z0-9_.-]+\s*\]\]?\s*(#[^\x00-\x08\x0a-\x1f\x7f]*)?")
_COMMENT = r"\s*(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?"
_STRING = r'"([^"\\\x00-\x1f\x7f]*)"'
_CLIENT_LINE = re.compile(
    rf'[ \t]*(?:name[ \t]*=[ \t]*{_STRING}|client_id[ \t]*=[ \t]*(0|[1-9][0-9]{{0,8}})'
    rf'|addresses[ \t]*=[ \t]*\[((?:[ \t]*"[^"\\\x00-\x1f\x7f]*"[ \t]*,)*(?:[ \t]*"[^"\\\x00-\x1f\x7f]*"[ \t]*)?)\])?'
    rf"{_COMMENT}")
_QUOTED = re.compile(r'"([^"]*)"')


class _NotPlain(Exception):
    """A [[client]] line the fast reading does not take: tomllib reads the file."""


def parse_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads(text)``, fast for many [[client]] tables of keygen's form."""
    if "[[client]]" not in text or "\r" in text or '"""' in text or "\'\'\'" in text:
        return tomllib.loads(text)
    try:
        return _parse_clients_fast(text)
    except (_NotPlain, tomllib.TOMLDecodeError):
        return tomllib.loads(text)  # and its error, worded for the whole file


def _parse_clients_fast(text: str, headers: list[tuple[int, str]] | None = None) -> dict[str, Any]:
    """The fast reading; raises _NotPlain for a file it does not take. Each
    line that looks like a table header is added to ``headers`` if given:
    (its index, the header without spaces or comment)."""
    lines = text.split("\n")
    rest: list[str] = []  # every line outside the [[client]] tables (theirs blank, so line numbers stay)
    clients: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for index, line in enumerate(lines):
        if _HEADER.fullmatch(line):
            header = line.split("#", 1)[0].strip().replace(" ", "").replace("\t", "")
            if headers is not None:
                headers.append((index, header))
            if header == "[[client]]":
                current = {}
                clients.append(current)
                rest.append("")
                continue
            current = None
        if current is None:
            rest.append(line)
            continue
        match = _CLIENT_LINE.fullmatch(line)
        if match is None:
            raise _NotPlain
        name, client_id, addresses = match.groups()
        if name is not None:
            key, value = "name", name
        elif client_id is not None:
            key, value = "client_id", int(client_id)
        elif addresses is not None:
            key, value = "addresses", _QUOTED.findall(addresses)
        else:
            rest.append("")  # a blank or comment line
            continue
        if key in current:
            raise _NotPlain  # tomllib says what is wrong
        current[key] = value
        rest.append("")
    data = tomllib.loads("\n".join(rest))
    if "client" in data:
        raise _NotPlain  # a client table or key of another form besides
    data["client"] = clients
    return data


def plain_table_headers(text: str) -> list[tuple[int, str]] | None:
    """Where each table of a file in keygen's form begins: (line index, name)
    in order, the name "client" for each [[client]]; None when the file is not
    in that form (then only a full TOML parser such as tomlkit knows where its
    tables are). The form: ``parse_toml`` reads it fast, every other table is a
    plain top-level ``[name]``, and the headers found line by line are exactly
    the tables the parse found, so no line inside a multi-line value was
    mistaken for a header."""
    read = _read_plain(text)
    return None if read is None else read[1]


def parse_toml_tables(text: str) -> tuple[dict[str, Any], list[tuple[int, str]] | None]:
    """``(parse_toml(text), plain_table_headers(text))`` from one parse.
    Raises tomllib.TOMLDecodeError as parse_toml."""
    read = _read_plain(text)
    return (tomllib.loads(text), None) if read is None else read


def _read_plain(text: str) -> tuple[dict[str, Any], list[tuple[int, str]] | None] | None:
    """What the fast reading gives for ``text`` with plain_table_headers, or
    None if it does not take the file."""
    if "[[client]]" not in text or "\r" in text or '"""' in text or "\'\'\'" in text:
        return None
    found: list[tuple[int, str]] = []
    try:
        data = _parse_clients_fast(text, found)
    except (_NotPlain, tomllib.TOMLDecodeError):
        return None
    return data, _plain_headers(found, data)


def _plain_headers(found: list[tuple[int, str]], data: dict[str, Any]) -> list[tuple[int, str]] | None:
    """plain_table_headers from what _parse_clients_fast read: ``data``, and
    the lines that look like headers, ``found``."""
    headers: list[tuple[int, str]] = []
    for index, name in found:
        if name == "[[client]]":
            headers.append((index, "client"))
        elif name.startswith("[[") or "." in name:
            return None
        else:
            headers.append((index, name[1:-1]))
    tables = [name for _, name in headers if name != "client"]
    found_tables = {key for key, value in data.items() if isinstance(value, dict)}
    if len(tables) != len(set(tables)) or set(tables) != found_tables or \
            len(headers) - len(tables) != len(data["client"]):
        return None
    return headers
