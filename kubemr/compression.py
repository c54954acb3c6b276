"""Compressed inputs: which names are compressed, and their bytes read decompressed.

As Hadoop picks a codec by a file's extension, an input object whose name ends
with `.gz`, `.bz2`, `.xz` or `.zst` is read decompressed (and, since none of
these can be cut at a line boundary without reading from the start, is never
cut into several splits). Several concatenated members or frames are read one
after another, as `zcat`, `bzcat`, `xzcat` and `zstdcat` do. Data that is not
in the format its name says, or ends in the middle of a member, is an
InputError naming the input: a truncated file must never pass for a shorter one.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from kubemr.errors import InputError

CHUNK = 1024 * 1024

#: Extension -> the format's name, as messages give it.
CODECS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}


def codec_of(url: str) -> str | None:
    """The compression format `url`'s name says its data is in, or None for plain data."""
    for extension, name in CODECS.items():
        if url.endswith(extension):
            return name
    return None


def decompressed(raw: BinaryIO, url: str) -> Iterator[bytes]:
    """The decompressed bytes of `raw`, the whole object `url`, in chunks."""
    codec = codec_of(url)
    try:
        if codec == "zstd":
            yield from _zstd(raw)
            return
        with _open(codec, raw, url) as reader:
            while chunk := reader.read(CHUNK):
                yield chunk
    except (OSError, EOFError, zlib.error, lzma.LZMAError, _ZstdError) as exc:
        said = str(exc).rstrip(".") or type(exc).__name__
        raise InputError(f"input {url} is not a readable {codec} file: {said}.") from exc


def _open(codec: str | None, raw: BinaryIO, url: str) -> io.BufferedIOBase:
    if codec == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if codec == "bzip2":
        return bz2.BZ2File(raw, mode="rb")
    if codec == "xz":
        return lzma.LZMAFile(raw, mode="rb")  # .xz, and the older .lzma format
    raise ValueError(f"{url} is not compressed")


class _ZstdError(Exception):
    """A zstd frame that is malformed or ends too soon."""


def _zstd(raw: BinaryIO) -> Iterator[bytes]:
    import zstandard  # only for .zst inputs

    context = zstandard.ZstdDecompressor()
    frame = context.decompressobj()
    begun = False  # whether any byte of the current frame was read
    try:
        while chunk := raw.read(CHUNK):
            while chunk:
                begun = True
                out = frame.decompress(chunk)
                if out:
                    yield out
                if frame.eof:  # this frame is complete; the rest of the chunk starts the next
                    chunk = frame.unused_data
                    frame = context.decompressobj()
                    begun = False
                else:
                    chunk = b""
    except zstandard.ZstdError as exc:
        raise _ZstdError(str(exc)) from exc
    if begun:
        raise _ZstdError("the data ends in the middle of a frame (a truncated file?)")
