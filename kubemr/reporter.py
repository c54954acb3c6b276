"""Hadoop Streaming's reporter protocol on stderr: counters and status.

A command may write `reporter:counter:GROUP,NAME,N` to add N to a counter
and `reporter:status:MESSAGE` to say what it is doing. Every other stderr
line is ordinary output. A malformed reporter line is kept in the log and
counted under `kubemr,malformed reporter lines`; it never fails a task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Counters = dict[str, dict[str, int]]

MALFORMED = ("kubemr", "malformed reporter lines")
_MAX_GROUPS = 100
_MAX_NAMES = 1000


@dataclass(frozen=True)
class Counter:
    group: str
    name: str
    amount: int


@dataclass(frozen=True)
class Status:
    message: str


@dataclass(frozen=True)
class Malformed:
    line: str


def parse_line(line: bytes) -> Counter | Status | Malformed | None:
    """What a stderr line reports, or None for an ordinary line."""
    if not line.startswith(b"reporter:"):
        return None
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    rest = text[len("reporter:") :]
    if rest.startswith("counter:"):
        parts = [part.strip() for part in rest[len("counter:") :].split(",")]
        if len(parts) == 3 and parts[0] and parts[1]:
            try:
                amount = int(parts[2])
            except ValueError:
                return Malformed(text)
            return Counter(parts[0], parts[1], amount)
        return Malformed(text)
    if rest.startswith("status:"):
        return Status(rest[len("status:") :].strip())
    return Malformed(text)


def add(counters: Counters, group: str, name: str, amount: int) -> None:
    """Add to a counter, within bounds that keep a runaway command from exhausting memory."""
    names = counters.get(group)
    if names is None:
        if len(counters) >= _MAX_GROUPS:
            return
        names = counters[group] = {}
    if name not in names and len(names) >= _MAX_NAMES:
        return
    names[name] = names.get(name, 0) + amount


def merge(into: Counters, more: Mapping[str, Mapping[str, int]]) -> None:
    for group, names in more.items():
        for name, amount in names.items():
            add(into, group, name, int(amount))


def total(parts: Iterable[Mapping[str, Mapping[str, int]]]) -> Counters:
    out: Counters = {}
    for part in parts:
        merge(out, part)
    return out


def counters_block(counters: Mapping[str, Mapping[str, int]]) -> list[str]:
    """`counters:` and the formatted counters, or nothing when there are none."""
    return ["counters:", *format_counters(counters)] if counters else []


def format_counters(counters: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Lines for a terminal: group, then `name=value` indented, sorted."""
    lines: list[str] = []
    for group in sorted(counters):
        lines.append(f"  {group}")
        for name in sorted(counters[group]):
            lines.append(f"    {name}={counters[group][name]}")
    return lines
