"""A stand-in for Linux's ``ip`` (and ``sysctl``) as a command runner, keeping
the routing rules and routes of one namespace, so that Linux plans can be
applied, killed and applied again in-process.

It answers as the kernel does (checked in a namespace on Linux 6.18 with
iproute2 6.1): ``rule add`` of a rule equal to one there, protocol included,
fails with "File exists"; ``rule delete`` removes the first rule (in order of
priority) that matches every selector given, a selector not given matching
anything (so without ``protocol`` it takes another's rule); ``route add`` of a
destination already in that table fails with "File exists"; routes through
a device go when the device goes; ``ip -j -N rule show`` prints JSON with
numbers for tables and protocols.
"""

from __future__ import annotations

import json
import subprocess

TABLES = {"main": 254, "local": 255, "default": 253}
# Each rule as ``ip rule`` shows it: a dict of its selectors and action.
BUILT_IN = [{"priority": 0, "table": 255, "protocol": 2}, {"priority": 32766, "table": 254, "protocol": 2},
            {"priority": 32767, "table": 253, "protocol": 2}]
VALUED = {"fwmark", "table", "priority", "suppress_prefixlength", "protocol"}


class FakeIp:
    def __init__(self) -> None:
        self.rules = {"-4": [dict(r) for r in BUILT_IN], "-6": [dict(r) for r in BUILT_IN]}
        self.routes: dict[tuple[str, int, str], dict[str, str]] = {}  # (family, table, destination): attributes
        self.ran: list[list[str]] = []

    def __call__(self, command: list[str]) -> subprocess.CompletedProcess:
        self.ran.append(command)
        if command[0] == "sysctl" or command[1] in ("link", "address"):
            return self._done(command)
        if command[:4] == ["nft", "delete", "table", "inet"]:  # a kill switch's table: none here
            return subprocess.CompletedProcess(command, 1, "", "Error: No such file or directory")
        if command[1:3] == ["-j", "-N"] and command[4:] == ["rule", "show"]:
            shown = [self._shown(rule) for rule in sorted(self.rules[command[3]], key=lambda r: r["priority"])]
            return self._done(command, json.dumps(shown))
        family, what, action, words = command[1], command[2], command[3], command[4:]
        if what == "rule":
            return self._rule(command, family, action, self.parse_rule(words))
        if what == "route" and action in ("add", "delete"):
            return self._route(command, family, action, words)
        raise AssertionError(f"the fake ip does not know {command}")

    def add_rule(self, family: str, words: str) -> None:
        """A rule someone else made: ``words`` as after ``ip rule add``."""
        assert self(["ip", family, "rule", "add", *words.split()]).returncode == 0

    def add_route(self, family: str, destination: str, device: str, table: int = 254, proto: int = 4) -> None:
        """A route someone else made (``proto static`` unless said)."""
        self.routes[(family, table, destination)] = {"dev": device, "proto": str(proto)}

    def device_gone(self, device: str) -> None:
        """The TUN device closed (an exit, or kill -9): its routes go with it."""
        self.routes = {key: value for key, value in self.routes.items() if value["dev"] != device}

    @staticmethod
    def parse_rule(words: list[str]) -> dict:
        rule: dict = {}
        while words:
            word, words = words[0], words[1:]
            if word == "not":
                rule["not"] = True
                continue
            assert word in VALUED, f"the fake ip does not know rule selector {word!r}"
            value, words = words[0], words[1:]
            rule[word] = TABLES.get(value) or int(value, 0)
        return rule

    def _rule(self, command: list[str], family: str, action: str, rule: dict) -> subprocess.CompletedProcess:
        rules = self.rules[family]
        if action == "add":
            rule.setdefault("protocol", 0)  # what the kernel keeps for a rule added without one
            if rule in rules:
                return self._failed(command, "RTNETLINK answers: File exists")
            rules.append(rule)
            return self._done(command)
        assert action == "delete"
        for existing in sorted(rules, key=lambda r: r["priority"]):
            if all(existing.get(key) == value for key, value in rule.items()):
                rules.remove(existing)
                return self._done(command)
        return self._failed(command, "RTNETLINK answers: No such file or directory")

    def _route(self, command: list[str], family: str, action: str, words: list[str]) -> subprocess.CompletedProcess:
        destination, options = words[0], dict(zip(words[1::2], words[2::2]))
        key = (family, TABLES.get(options.get("table", "main")) or int(options["table"]), destination)
        if action == "add":
            if key in self.routes:
                return self._failed(command, "RTNETLINK answers: File exists")
            self.routes[key] = {"dev": options["dev"], "proto": options.get("proto", "3")}
            return self._done(command)
        found = self.routes.get(key)
        if found is None or ("proto" in options and found["proto"] != options["proto"]):
            return self._failed(command, "RTNETLINK answers: No such process")
        del self.routes[key]
        return self._done(command)

    @staticmethod
    def _shown(rule: dict) -> dict:
        shown = {"priority": rule["priority"], "src": "all"}
        if rule.get("not"):
            shown["not"] = None
        if "fwmark" in rule:
            shown["fwmark"] = hex(rule["fwmark"])
        shown["table"] = str(rule["table"])
        if "suppress_prefixlength" in rule:
            shown["suppress_prefixlen"] = rule["suppress_prefixlength"]
        shown["protocol"] = str(rule["protocol"])
        return shown

    @staticmethod
    def _done(command: list[str], stdout: str = "") -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(command, 0, stdout, "")

    @staticmethod
    def _failed(command: list[str], stderr: str) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(command, 2, "", stderr)
