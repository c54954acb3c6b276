"""Hadoop Streaming's reporter protocol: stderr lines that become counters and status.

Covers `kubemr.reporter`: `parse_line` for counter, status, malformed and
ordinary lines (and that no line whatsoever makes it raise), and the counter
arithmetic (`add`, `merge`, `total`) with the bounds that keep a runaway
command from growing the job's counters without limit.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubemr.reporter import (
    Counter,
    Counters,
    Malformed,
    Status,
    add,
    format_counters,
    merge,
    parse_line,
    total,
)


@pytest.mark.parametrize(
    ("line", "counter"),
    [
        (b"reporter:counter:Words,Seen,3\n", Counter("Words", "Seen", 3)),
        (b"reporter:counter:Words,Seen,3", Counter("Words", "Seen", 3)),
        (b"reporter:counter:Words,Seen,3\r\n", Counter("Words", "Seen", 3)),
        (b"reporter:counter: My Group , a name , 12 \n", Counter("My Group", "a name", 12)),
        (b"reporter:counter:g,n,-4\n", Counter("g", "n", -4)),
        (b"reporter:counter:g,n,0\n", Counter("g", "n", 0)),
        (b"reporter:counter:g,n," + b"9" * 30 + b"\n", Counter("g", "n", int("9" * 30))),
        ("reporter:counter:Wörter,gesehen,1\n".encode(), Counter("Wörter", "gesehen", 1)),
    ],
)
def test_counter_lines(line: bytes, counter: Counter) -> None:
    assert parse_line(line) == counter


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"reporter:status:reading part 3\n", "reading part 3"),
        (b"reporter:status:  padded  \r\n", "padded"),
        (b"reporter:status:", ""),
        (b"reporter:status:50%, then more: ok\n", "50%, then more: ok"),
        (b"reporter:status:\xff\xfe\n", "\ufffd\ufffd"),
    ],
)
def test_status_lines(line: bytes, message: str) -> None:
    assert parse_line(line) == Status(message)


@pytest.mark.parametrize(
    "line",
    [
        b"reporter:counter:g,n\n",
        b"reporter:counter:g,n,many\n",
        b"reporter:counter:g,n,1.5\n",
        b"reporter:counter:g,n,\n",
        b"reporter:counter:,n,1\n",
        b"reporter:counter:g,,1\n",
        b"reporter:counter: ,n,1\n",
        b"reporter:counter:g,  ,1\n",
        b"reporter:counter:g,n,1,2\n",
        b"reporter:counter:\n",
        b"reporter:counter:g,n," + b"9" * 5000 + b"\n",
        b"reporter:\n",
        b"reporter:progress:50%\n",
        b"reporter:Counter:g,n,1\n",
    ],
)
def test_malformed_reporter_lines(line: bytes) -> None:
    got = parse_line(line)
    assert isinstance(got, Malformed)
    assert got.line == line.decode().rstrip("\r\n")


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\n",
        b"some warning\n",
        b" reporter:counter:g,n,1\n",
        b"Reporter:counter:g,n,1\n",
        b"reporter counter g n 1\n",
        b"\xff\xfe not text\n",
    ],
)
def test_ordinary_lines(line: bytes) -> None:
    assert parse_line(line) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60) | st.binary(max_size=40).map(lambda b: b"reporter:" + b))
def test_parse_line_never_raises(line: bytes) -> None:
    got = parse_line(line)
    assert got is None or isinstance(got, Counter | Status | Malformed)
    if isinstance(got, Counter):
        assert got.group and got.name


def test_add_and_merge() -> None:
    counters: Counters = {}
    add(counters, "words", "seen", 3)
    add(counters, "words", "seen", 4)
    add(counters, "words", "unique", 1)
    merge(counters, {"words": {"seen": 10}, "kubemr": {"map input lines": 5}})
    assert counters == {"words": {"seen": 17, "unique": 1}, "kubemr": {"map input lines": 5}}


def test_total_of_task_counters() -> None:
    parts = [{"g": {"a": 1}}, {"g": {"a": 2, "b": 3}}, {}, {"h": {"c": 4}}]
    assert total(parts) == {"g": {"a": 3, "b": 3}, "h": {"c": 4}}
    assert total([]) == {}


def test_groups_are_bounded() -> None:
    counters: Counters = {}
    for i in range(150):
        add(counters, f"group-{i}", "n", 1)
    assert len(counters) == 100
    # Counters in groups that made it keep counting.
    add(counters, "group-0", "n", 1)
    assert counters["group-0"]["n"] == 2
    assert "group-120" not in counters


def test_names_per_group_are_bounded() -> None:
    counters: Counters = {}
    for i in range(1500):
        add(counters, "g", f"name-{i}", 1)
    assert len(counters["g"]) == 1000
    add(counters, "g", "name-999", 5)
    assert counters["g"]["name-999"] == 6
    assert "name-1200" not in counters["g"]


def test_format_counters_is_sorted() -> None:
    lines = format_counters({"b": {"z": 1, "a": 2}, "a": {"x": 3}})
    assert lines == ["  a", "    x=3", "  b", "    a=2", "    z=1"]
    assert format_counters({}) == []
