"""Which reduce task a map output line goes to: a stable hash of its key.

The key is the bytes before the `key_fields`-th separator (the whole line
when it has fewer separators), as Hadoop Streaming's
`stream.map.output.field.separator` and `stream.num.map.output.key.fields`
define it. The hash is CRC-32, never Python's salted `hash`, so every worker
on every machine sends a key to the same partition.

`distribute` handles lines in any order, one at a time. A map task sorts its
output before partitioning it, and `distribute_sorted` uses that: lines with
one key are adjacent, so it finds where each key's run of lines ends with a
few searches in the buffer (galloping, then bisecting) and moves the run as
one slice. Per-line Python work is what limits a partitioner; on typical map
output (many lines per key) this does it once per key instead of once per
line, and it falls back to the line-by-line splitter when keys rarely repeat.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Sequence
from typing import IO, Protocol

CHUNK = 1024 * 1024
SORTED_CHUNK = 4 * 1024 * 1024
#: Below this many lines per key run, `distribute_sorted` goes line by line for a while.
MIN_RUN_LINES = 4
#: How many key runs `distribute_sorted` looks at to decide whether runs are long enough.
PROBE_RUNS = 1024


def sort_keys(sep: bytes, key_fields: int) -> list[str]:
    """GNU sort options that order map output by its key first (fields 1 to `key_fields`,
    a line with fewer separators being all key), then, as GNU sort's last resort, by the
    whole line bytewise: lines of one key are adjacent whatever bytes the key holds, and the
    order is the same on every machine (with LC_ALL=C). Sorting whole lines would split a
    key whenever some key holds a byte below the separator (`a` < `a b,1` < `a,1` with ",")."""
    return [*separator_option(sep), f"-k1,{key_fields}"]


def separator_option(sep: bytes) -> list[str]:
    """GNU sort's field separator option for `sep`."""
    return ["-t", "\\0" if sep == b"\0" else sep.decode("latin-1")]


def whole_lines_suffice(sep: bytes) -> bool:
    """Whether sorting whole lines bytewise is worth trying for this separator.

    When no byte below the separator occurs in the lines (but newlines), whole-line order
    is exactly the order `sort_keys` gives: two keys differ first where their lines do, or
    one key is a prefix of the other, and then the shorter key's line has the separator or
    its end there, which is below any byte the longer key's line has there. A whole-line
    sort is a third cheaper (GNU sort finds no fields), so a map task sorts whole lines and
    checks its output (`LowBytes`), sorting again by key in the rare case it must. Worth it
    for a separator below the space (a tab, \x01), which text rarely holds."""
    return sep[0] < 0x20


class LowBytes:
    """Reads `source`, noting whether a byte below `sep` (but a newline) went by (`found`)."""

    def __init__(self, source: IO[bytes], sep: bytes) -> None:
        self.source = source
        self.found = False
        self._low = [bytes([b]) for b in range(sep[0]) if b != 0x0A]

    def check(self, data: bytes) -> None:
        if not self.found and any(data.find(b) >= 0 for b in self._low):
            self.found = True

    def read(self, size: int = -1, /) -> bytes:
        data = self.source.read(size)
        self.check(data)
        return data

    def close(self) -> None:
        self.source.close()


def has_low_bytes(path: str, sep: bytes) -> bool:
    """Whether the file at `path` holds a byte below `sep` (but a newline)."""
    check = LowBytes(open(path, "rb"), sep)  # noqa: SIM115 - closed below
    try:
        while check.read(SORTED_CHUNK) and not check.found:
            pass
    finally:
        check.close()
    return check.found


def key_of(line: bytes, sep: bytes, key_fields: int) -> bytes:
    """The key of one map output line (without its newline)."""
    if key_fields == 1:
        return line.split(sep, 1)[0]
    parts = line.split(sep, key_fields)
    return sep.join(parts[:key_fields])


def partition_of(line: bytes, partitions: int, sep: bytes = b"\t", key_fields: int = 1) -> int:
    """The partition of one map output line."""
    return zlib.crc32(key_of(line, sep, key_fields)) % partitions


def make_splitter(
    partitions: int, sep: bytes, key_fields: int
) -> Callable[[list[bytes]], list[list[bytes]]]:
    """A function that buckets a batch of lines by partition (the hot loop, kept tight)."""
    crc = zlib.crc32

    if key_fields == 1:

        def split(lines: list[bytes]) -> list[list[bytes]]:
            buckets: list[list[bytes]] = [[] for _ in range(partitions)]
            appends = [b.append for b in buckets]
            for line in lines:
                appends[crc(line.split(sep, 1)[0]) % partitions](line)
            return buckets

        return split

    def split_n(lines: list[bytes]) -> list[list[bytes]]:
        buckets: list[list[bytes]] = [[] for _ in range(partitions)]
        for line in lines:
            buckets[crc(key_of(line, sep, key_fields)) % partitions].append(line)
        return buckets

    return split_n


class Sink(Protocol):
    """Where a partition's lines go: a file, or a combine command's stdin."""

    def write(self, data: bytes, /) -> object: ...


def write_buckets(sinks: Sequence[Sink], buckets: list[list[bytes]]) -> None:
    """Write each bucket of lines (without their newlines) to its sink, one write each."""
    for sink, bucket in zip(sinks, buckets, strict=True):
        if bucket:
            bucket.append(b"")
            sink.write(b"\n".join(bucket))


def distribute(
    source: IO[bytes],
    sinks: Sequence[Sink],
    sep: bytes,
    key_fields: int,
    stop: threading.Event | None = None,
) -> int:
    """Copy lines from `source` to `sinks[partition]`; returns the number of lines.

    A last line without a newline gets one. Sinks are not closed here.
    """
    split = make_splitter(len(sinks), sep, key_fields)
    carry = b""
    count = 0
    while True:
        chunk = source.read(CHUNK)
        if not chunk:
            break
        if stop is not None and stop.is_set():
            return count
        lines = (carry + chunk).split(b"\n")
        carry = lines.pop()
        count += len(lines)
        write_buckets(sinks, split(lines))
    if carry:
        count += 1
        write_buckets(sinks, split([carry]))
    return count


def _run_end(buf: bytes, lo: int, prefix: bytes) -> int:
    """Where the run of lines that start with `prefix` ends, in sorted `buf` (complete lines).

    `lo` is the start of a line that starts with `prefix` (a key and its separator). In
    lines sorted by key, those starting with one such prefix are contiguous, so the run is found
    by galloping forward from `lo`, then bisecting, on line starts.
    """
    find, startswith = buf.find, buf.startswith
    n = len(buf)
    hi = n  # n, or the start of a line known not to start with prefix
    step = 64
    while lo + step < n:
        s = find(b"\n", lo + step) + 1
        if s >= n:
            break
        if not startswith(prefix, s):
            hi = s
            break
        lo = s
        step <<= 1
    while hi - lo > 96:
        mid = (lo + hi) >> 1
        nl = find(b"\n", mid, hi - 1)
        if nl < 0:
            nl = buf.rfind(b"\n", lo, mid)
            if nl < 0:
                return hi  # lo's line runs up to hi
        s = nl + 1
        if startswith(prefix, s):
            lo = s
        else:
            hi = s
    s = find(b"\n", lo) + 1
    while s < hi and startswith(prefix, s):
        s = find(b"\n", s) + 1
    return s


def split_sorted(
    buf: bytes, partitions: int, sep: bytes, key_fields: int, probe: int = 0
) -> tuple[list[list[bytes]], int]:
    """Bucket sorted complete lines by partition, a run of equal keys at a time.

    Returns the pieces for each partition (in input order) and where it stopped: the end
    of `buf`, or, when `probe` is set and the first `probe` runs average fewer than
    `MIN_RUN_LINES` lines, the end of those runs (the rest is cheaper line by line).
    """
    crc = zlib.crc32
    find, startswith = buf.find, buf.startswith
    width = len(sep)
    pieces: list[list[bytes]] = [[] for _ in range(partitions)]
    n = len(buf)
    i = 0
    start = 0  # start of the piece being gathered for partition `current`
    current = -1
    runs = 0
    while i < n:
        eol = find(b"\n", i)
        j = find(sep, i, eol)
        fields = 1
        while j >= 0 and fields < key_fields:
            j = find(sep, j + width, eol)
            fields += 1
        end = eol + 1
        if j < 0:
            key = buf[i:eol]  # fewer separators than key fields: the whole line is the key
        else:
            key = buf[i:j]
            prefix = buf[i : j + width]
            if end < n and startswith(prefix, end):
                end = _run_end(buf, end, prefix)
        runs += 1
        if runs == probe and buf.count(b"\n", 0, end) < MIN_RUN_LINES * probe:
            n = end
        p = crc(key) % partitions
        if p != current:
            if current >= 0:
                pieces[current].append(buf[start:i])
            current, start = p, i
        i = end
    if current >= 0:
        pieces[current].append(buf[start:n])
    return pieces, n


def distribute_sorted(
    source: IO[bytes],
    sinks: Sequence[Sink],
    sep: bytes,
    key_fields: int,
    stop: threading.Event | None = None,
) -> int:
    """`distribute` for input sorted by key (`sort_keys`, with `LC_ALL=C`): same result.

    Each sink receives its lines in input order, so its output is sorted too.
    """
    line_split = make_splitter(len(sinks), sep, key_fields)
    carry = b""
    count = 0
    by_line = 0  # chunks left to do line by line
    while True:
        chunk = source.read(SORTED_CHUNK)
        if stop is not None and stop.is_set():
            return count
        if not chunk:
            break
        buf = carry + chunk
        cut = buf.rfind(b"\n") + 1
        carry = buf[cut:]
        if not cut:
            continue
        buf = buf[:cut]
        lines = buf.count(b"\n")
        count += lines
        done = 0
        if not by_line:
            pieces, done = split_sorted(buf, len(sinks), sep, key_fields, PROBE_RUNS)
            for sink, piece in zip(sinks, pieces, strict=True):
                if piece:
                    sink.write(b"".join(piece))
            if done < len(buf):
                by_line = 8  # keys rarely repeat here: line by line for a few chunks
        else:
            by_line -= 1
        if done < len(buf):
            write_buckets(sinks, line_split(buf[done:-1].split(b"\n")))
    if carry:
        count += 1
        write_buckets(sinks, line_split([carry]))
    return count
