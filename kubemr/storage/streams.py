"""Byte streams shared by the backends: a window onto another stream.

Every backend returns `open_read` results as a buffered binary stream that
reads the raw bytes [start, end) of an object and nothing else, and that turns
errors raised while reading (a dropped connection half way through an object)
into kubemr errors. `Window` is that stream, built on whatever the backend
opened (a local file, an HTTP response, an S3 streaming body).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024
"""How many bytes backends read or copy at a time."""


class Readable(Protocol):
    """Anything with `read(n)` and `close()`."""

    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


class Window(io.RawIOBase):
    """At most `length` bytes of `source` (all of it when None), after skipping `skip` bytes.

    `translate` maps an exception raised by the source to the exception to
    raise instead (or returns None to let it through unchanged); the original
    is chained as the cause.
    """

    def __init__(
        self,
        source: Readable,
        length: int | None = None,
        skip: int = 0,
        translate: Callable[[Exception], Exception | None] | None = None,
    ) -> None:
        super().__init__()
        self._source = source
        self._remaining = length
        self._skip = skip
        self._translate = translate

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._remaining == 0:
            return 0
        self._skip_ahead()
        size = len(buffer)
        if self._remaining is not None:
            size = min(size, self._remaining)
        data = self._read(size)
        buffer[: len(data)] = data
        if self._remaining is not None:
            self._remaining -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._source.close()
            finally:
                super().close()

    def _skip_ahead(self) -> None:
        while self._skip > 0:
            data = self._read(min(self._skip, CHUNK))
            if not data:
                self._skip = 0
                self._remaining = 0
                return
            self._skip -= len(data)

    def _read(self, size: int) -> bytes:
        try:
            return self._source.read(size)
        except Exception as exc:
            replacement = self._translate(exc) if self._translate else None
            if replacement is None:
                raise
            raise replacement from exc


def window(
    source: Readable,
    length: int | None = None,
    skip: int = 0,
    translate: Callable[[Exception], Exception | None] | None = None,
) -> BinaryIO:
    """A buffered `Window` (see there), ready to hand to a caller."""
    return io.BufferedReader(Window(source, length, skip, translate), buffer_size=64 * 1024)


def check_range(start: int, end: int | None) -> None:
    """Reject a byte range no caller should ask for (a bug, not a user error)."""
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range [{start}, {end})")


def empty() -> BinaryIO:
    """A stream with no bytes, for empty ranges."""
    return io.BytesIO(b"")
