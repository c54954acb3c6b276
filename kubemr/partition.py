"""Which reduce task a map output line goes to: a stable hash of its key.

The key is the bytes before the `key_fields`-th separator (the whole line
when it has fewer separators), as Hadoop Streaming's
`stream.map.output.field.separator` and `stream.num.map.output.key.fields`
define it. The hash is CRC-32, never Python's salted `hash`, so every worker
on every machine sends a key to the same partition.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import IO

CHUNK = 1024 * 1024


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


def distribute(
    source: IO[bytes],
    sinks: list[IO[bytes]],
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
        for sink, bucket in zip(sinks, split(lines), strict=True):
            if bucket:
                bucket.append(b"")
                sink.write(b"\n".join(bucket))
    if carry:
        count += 1
        for sink, bucket in zip(sinks, split([carry]), strict=True):
            if bucket:
                sink.write(bucket[0] + b"\n")
    return count
