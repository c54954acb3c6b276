"""Partitioning map output: the key of a line, its stable partition, and `distribute`.

Covers `kubemr.partition`: `key_of` with one and two key fields and with
missing separators; `partition_of` against CRC-32 values fixed here (so a
change of hash, which would send keys to different reducers across versions
and machines, fails); and `distribute`, which must keep every line exactly
once, end the last line, and send equal keys to the same sink; and
`distribute_sorted`, which must give exactly what `distribute` gives on
sorted input, whether key runs are long (moved whole) or short (line by line),
with multi-byte separators and several key fields.
"""

from __future__ import annotations

import io
import threading
import zlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubemr.partition import (
    distribute,
    distribute_sorted,
    key_of,
    make_splitter,
    partition_of,
    split_sorted,
)


@pytest.mark.parametrize(
    ("line", "sep", "fields", "key"),
    [
        (b"apple\t1", b"\t", 1, b"apple"),
        (b"apple\t1\tx", b"\t", 1, b"apple"),
        (b"apple", b"\t", 1, b"apple"),
        (b"", b"\t", 1, b""),
        (b"\t1", b"\t", 1, b""),
        (b"a,b,c,d", b",", 2, b"a,b"),
        (b"a,b", b",", 2, b"a,b"),
        (b"a", b",", 2, b"a"),
        (b"a,,c", b",", 2, b"a,"),
        (b"a\tb,c", b",", 1, b"a\tb"),
        (b"a b c d", b" ", 3, b"a b c"),
        (b"\xff\xfe\tv", b"\t", 1, b"\xff\xfe"),
    ],
)
def test_key_of(line: bytes, sep: bytes, fields: int, key: bytes) -> None:
    assert key_of(line, sep, fields) == key


@pytest.mark.parametrize(
    ("line", "partitions", "expected"),
    [
        # zlib.crc32: b"apple" -> 2838417488, b"the" -> 1011183078, b"kubemr" -> 1403519548
        (b"apple\t1", 7, 2838417488 % 7),
        (b"apple\t1", 7, 4),
        (b"the\t99", 4, 2),
        (b"the", 7, 3),
        (b"kubemr\tx", 10000, 9548),
        (b"\tvalue", 5, 0),
        (b"anything", 1, 0),
    ],
)
def test_partition_of_is_a_fixed_crc32(line: bytes, partitions: int, expected: int) -> None:
    assert partition_of(line, partitions) == expected


@pytest.mark.parametrize("key", [b"apple", b"the", b"\xff", b"a,b", b"x" * 1000])
@pytest.mark.parametrize("partitions", [1, 2, 3, 16, 9973])
def test_partition_of_matches_zlib_crc32(key: bytes, partitions: int) -> None:
    assert partition_of(key + b"\tv", partitions) == zlib.crc32(key) % partitions
    if b"," not in key:
        two = partition_of(key + b",v,w", partitions, b",", 2)
        assert two == zlib.crc32(key + b",v") % partitions


def test_partition_ignores_the_value() -> None:
    assert len({partition_of(b"k\t" + str(i).encode(), 13) for i in range(200)}) == 1


def test_splitter_agrees_with_partition_of() -> None:
    lines = [b"k%d\tv" % i for i in range(300)] + [b"a,b,c", b"", b"noval"]
    for fields in (1, 2):
        buckets = make_splitter(5, b"\t", fields)(lines)
        for index, bucket in enumerate(buckets):
            for line in bucket:
                assert partition_of(line, 5, b"\t", fields) == index
        assert sorted(line for b in buckets for line in b) == sorted(lines)


class Trickle(io.BytesIO):
    """A source that returns at most `step` bytes per read, as a pipe does."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self.step = step

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0 or size > self.step:
            size = self.step
        return super().read(size)


def run(
    data: bytes, sinks: int, sep: bytes = b"\t", fields: int = 1, step: int = 1 << 20
) -> tuple[int, list[bytes]]:
    outs = [io.BytesIO() for _ in range(sinks)]
    count = distribute(Trickle(data, step), list(outs), sep, fields)
    return count, [o.getvalue() for o in outs]


def test_distribute_example() -> None:
    data = b"b\t1\na\t2\nb\t3\nc\t4"
    count, outs = run(data, 3)
    assert count == 4
    expected = [b"", b"", b""]
    for line in (b"b\t1", b"a\t2", b"b\t3", b"c\t4"):
        expected[zlib.crc32(line.split(b"\t")[0]) % 3] += line + b"\n"
    assert outs == expected


def test_distribute_adds_a_final_newline() -> None:
    assert run(b"only line", 1) == (1, [b"only line\n"])
    assert run(b"a\nb\n", 1) == (2, [b"a\nb\n"])


def test_distribute_empty_input() -> None:
    assert run(b"", 4) == (0, [b""] * 4)


def test_distribute_keeps_empty_lines() -> None:
    count, outs = run(b"\n\nk\tv\n\n", 2)
    assert count == 4
    assert outs[zlib.crc32(b"") % 2].count(b"\n") >= 3


def test_distribute_stops_when_asked() -> None:
    stop = threading.Event()
    stop.set()
    out = io.BytesIO()
    assert distribute(io.BytesIO(b"a\nb\n"), [out], b"\t", 1, stop) == 0
    assert out.getvalue() == b""


lines = st.lists(
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")) | st.sampled_from([b"k\tv"]),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    lines,
    st.booleans(),
    st.integers(min_value=1, max_value=7),
    st.sampled_from([b"\t", b",", b"\x00"]),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=1, max_value=40),
)
def test_distribute_keeps_every_line_once_and_groups_keys(
    body: list[bytes], final_newline: bool, sinks: int, sep: bytes, fields: int, step: int
) -> None:
    data = b"\n".join(body) + (b"\n" if final_newline and body else b"")
    count, outs = run(data, sinks, sep, fields, step)
    sent = [line for out in outs for line in out.split(b"\n")[:-1]]
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert count == len(expected)
    assert Counter(sent) == Counter(expected)
    for out in outs:
        assert not out or out.endswith(b"\n")
    # Within one sink lines keep their input order.
    for index, out in enumerate(outs):
        mine = [line for line in expected if zlib.crc32(key_of(line, sep, fields)) % sinks == index]
        assert out.split(b"\n")[:-1] == mine
    # Equal keys are never split across sinks.
    home: dict[bytes, int] = {}
    for index, out in enumerate(outs):
        for line in out.split(b"\n")[:-1]:
            assert home.setdefault(key_of(line, sep, fields), index) == index


def run_sorted(
    data: bytes, sinks: int, sep: bytes = b"\t", fields: int = 1, step: int = 1 << 20
) -> tuple[int, list[bytes]]:
    outs = [io.BytesIO() for _ in range(sinks)]
    count = distribute_sorted(Trickle(data, step), list(outs), sep, fields)
    return count, [o.getvalue() for o in outs]


def test_distribute_sorted_moves_runs_of_a_key_whole() -> None:
    lines = sorted(b"%s\t%d" % (w, i) for w in (b"a", b"b", b"the", b"zz") for i in range(5000))
    data = b"\n".join(lines) + b"\n"
    assert run_sorted(data, 3) == run(data, 3)


def test_distribute_sorted_line_by_line_when_keys_do_not_repeat() -> None:
    lines = sorted(b"%08d\tv" % (i * 7919 % 100003) for i in range(100000))
    data = b"\n".join(lines) + b"\n"
    assert run_sorted(data, 4, step=65536) == run(data, 4)


def test_split_sorted_stops_after_the_probe_when_runs_are_short() -> None:
    data = b"".join(b"%06d\tv\n" % i for i in range(5000))
    pieces, done = split_sorted(data, 2, b"\t", 1, probe=100)
    assert done == 100 * len(b"000000\tv\n")
    got = b"".join(b"".join(p) for p in pieces).splitlines()
    assert sorted(got) == data[:done].splitlines()
    assert split_sorted(data, 2, b"\t", 1)[1] == len(data)


sorted_lines = st.lists(
    st.sampled_from([b"a", b"a\t1", b"a\t2", b"a,b", b"a,b,c", b"a\x01", b"", b"b\tx", b"\t"])
    | st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"")),
    max_size=400,
).map(sorted)


@settings(max_examples=200, deadline=None)
@given(
    sorted_lines,
    st.booleans(),
    st.integers(min_value=1, max_value=5),
    st.sampled_from([b"\t", b",", b"ab", b"aa"]),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=1, max_value=300),
)
def test_distribute_sorted_is_distribute_on_sorted_input(
    body: list[bytes], final_newline: bool, sinks: int, sep: bytes, fields: int, step: int
) -> None:
    data = b"\n".join(body) + (b"\n" if final_newline and body else b"")
    assert run_sorted(data, sinks, sep, fields, step) == run(data, sinks, sep, fields, step)
