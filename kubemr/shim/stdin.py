"""How a split reaches the map command's stdin, copying as little as possible.

`plan.read_split` defines the bytes a map command reads: each segment's
lines (a byte range moved to line boundaries), each segment ended with a
newline. For segments of plain files on this disk (local runs, `file://`
inputs) the same bytes are found here as exact file ranges, with a few small
reads near the range ends, and then

- a range that runs to the end of its file, when it is the whole split and
  ends with a newline, is the command's stdin itself: an open file, already
  at the range's start; no pipe, no thread, no copy;
- other ranges go through a pipe with `os.sendfile`, which moves the bytes
  inside the kernel (page cache to pipe) instead of through Python.

Anything else (S3, http, compressed, opaque inputs) streams through Python as
before (`feed`).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from kubemr.plan import Split, read_split
from kubemr.shim.attempt import Failure
from kubemr.storage.base import Storage

PROBE = 64 * 1024
COPY = 1024 * 1024


@dataclass(frozen=True)
class FileRange:
    """Bytes [start, end) of a local file, then a newline if `newline`."""

    path: str
    start: int
    end: int
    newline: bool


def _after_newline(fd: int, pos: int, size: int) -> int:
    """The position just after the first newline at or after `pos` (the file's end if none)."""
    while pos < size:
        block = os.pread(fd, PROBE, pos)
        if not block:
            break
        nl = block.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(block)
    return size


def file_range(path: str, start: int, end: int | None) -> FileRange:
    """The bytes `read_split` gives for segment [start, end) of a local file, as one range."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if end is None:
            a, b = min(start, size), size
        else:
            a = 0 if start == 0 else _after_newline(fd, start - 1, size)
            if start > 0 and a >= end:
                return FileRange(path, a, a, False)
            b = _after_newline(fd, end - 1, size) if end > 0 else 0
            b = max(a, b)
        newline = b > a and os.pread(fd, 1, b - 1) != b"\n"
        return FileRange(path, a, b, newline)
    finally:
        os.close(fd)


def local_ranges(split: Split, storage_for: Callable[[str], Storage]) -> list[FileRange] | None:
    """The split as ranges of local files, or None when it is not only plain local files."""
    if split.opaque is not None or not split.segments:
        return None
    ranges: list[FileRange] = []
    for seg in split.segments:
        path = None if seg.compressed else storage_for(seg.url).local_path(seg.url)
        if path is None:
            return None
        try:
            ranges.append(file_range(path, seg.start, seg.end))
        except OSError:
            return None  # the streaming reader reports it, as for any input
    return ranges


def open_whole(ranges: list[FileRange]) -> int | None:
    """A file descriptor that is the split, positioned at its start; None if there is none."""
    if len(ranges) != 1 or ranges[0].newline or ranges[0].start >= ranges[0].end:
        return None
    only = ranges[0]
    fd = os.open(only.path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size != only.end:
            os.close(fd)
            return None
        os.lseek(fd, only.start, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _feeding(sink: IO[bytes], failure: Failure) -> Iterator[None]:
    """How a feeder thread ends: a command that stops reading early is fine, any other error
    is recorded for the main thread, and the command's stdin is closed either way."""
    try:
        yield
    except BrokenPipeError:
        pass
    except BaseException as exc:  # reported by the main thread
        failure.record(exc)
    finally:
        with contextlib.suppress(BrokenPipeError):
            sink.close()


def send_ranges(ranges: list[FileRange], sink: IO[bytes], failure: Failure) -> None:
    """Write the ranges into `sink` (a pipe) with sendfile; a command may stop reading early."""
    with _feeding(sink, failure):
        out = sink.fileno()
        for r in ranges:
            fd = os.open(r.path, os.O_RDONLY)
            try:
                _send(out, fd, r.start, r.end)
            finally:
                os.close(fd)
            if r.newline:
                os.write(out, b"\n")


def _send(out: int, fd: int, pos: int, end: int) -> None:
    while pos < end:
        try:
            sent = os.sendfile(out, fd, pos, min(end - pos, 1 << 30))
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            _copy(out, fd, pos, end)  # no sendfile into a pipe here: copy
            return
        if sent == 0:
            return  # the file shrank
        pos += sent


def _copy(out: int, fd: int, pos: int, end: int) -> None:
    while pos < end:
        block = os.pread(fd, min(COPY, end - pos), pos)
        if not block:
            return
        view = memoryview(block)
        while view:
            view = view[os.write(out, view) :]
        pos += len(block)


def feed(
    split: Split, storage_for: Callable[[str], Storage], sink: IO[bytes], failure: Failure
) -> None:
    """Stream the split into the command's stdin through Python (any storage, any input)."""
    with _feeding(sink, failure):
        for chunk in read_split(split, storage_for):
            sink.write(chunk)
