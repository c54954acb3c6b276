"""Inputs -> splits -> map tasks.

An input is a string: a URL (`s3://`, `file://`, `http(s)://`) or an
absolute path names data (relative paths are made absolute before planning,
against the manifest's directory); a prefix or directory means every object
under it (names starting with `_` or `.` skipped, as Hadoop does). An input
written `opaque:TEXT` is no data: TEXT is handed to the map command as-is.

Data is cut into splits of at most `split_size` bytes. A large object is cut
into equal byte ranges; the reader (`read_split`) moves each range's ends to
line boundaries, as Hadoop's TextInputFormat does, so every line is read by
exactly one split. Small objects are packed together into one split.
Compressed objects (`.gz`, `.bz2`, `.xz`, `.zst`: kubemr.compression) are
read decompressed and never cut. Planning needs only names and
sizes; no data is read until a map task runs.

With `spec.linesPerMap` N (Hadoop's NLineInputFormat) every N lines of an
input are one split instead (`cut_lines`): planning reads each input once to
find where every N-th line ends, and each split is the byte range of its
lines, read as above. This is how a list of URLs, object keys or IDs is
spread over map tasks, one line each with N = 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from kubemr.compression import codec_of, decompressed
from kubemr.errors import InputError, NotFound, StorageError, TemporaryError
from kubemr.spec import KNOWN_SCHEMES, OPAQUE, opaque_text, scheme_of
from kubemr.storage.base import ObjectInfo, Storage

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Segment:
    """Bytes [start, end) of one object; `end` None means to its end (whole compressed objects)."""

    url: str
    start: int
    end: int | None

    @property
    def compressed(self) -> bool:
        return codec_of(self.url) is not None


@dataclass(frozen=True)
class Split:
    """The input of one map task: segments of data, or one opaque string."""

    segments: tuple[Segment, ...] = ()
    opaque: str | None = None

    def describe(self) -> str:
        """A short human description for messages: the input and byte range."""
        if self.opaque is not None:
            return repr(self.opaque)
        if not self.segments:
            return "no data"
        first = self.segments[0]
        text = first.url
        if first.end is not None and (first.start > 0 or len(self.segments) == 1):
            text += f" bytes {first.start}-{first.end}"
        if len(self.segments) > 1:
            text += f" and {len(self.segments) - 1} more"
        return text

    def input_env(self) -> str:
        """The value of $KUBEMR_INPUT: the opaque string, or the input URLs one per line."""
        if self.opaque is not None:
            return self.opaque
        seen: list[str] = []
        for seg in self.segments:
            if seg.url not in seen:
                seen.append(seg.url)
        return "\n".join(seen)

    def to_json(self) -> Any:
        if self.opaque is not None:
            return {"o": self.opaque}
        return {"s": [[s.url, s.start, s.end] for s in self.segments]}

    @staticmethod
    def from_json(value: Any) -> Split:
        if "o" in value:
            return Split(opaque=str(value["o"]))
        return Split(segments=tuple(Segment(str(u), int(a), b) for u, a, b in value["s"]))


def classify(item: str) -> str | None:
    """The URL an input names, or None when it is `opaque:TEXT` for the map command."""
    if opaque_text(item) is not None:
        return None
    scheme = scheme_of(item)
    if scheme in KNOWN_SCHEMES:
        return item
    if scheme is not None:
        raise InputError(
            f"input {item} has the unknown scheme {scheme}://; use s3:// or http(s)://."
        )
    if item.startswith("/"):
        return "file://" + item
    raise InputError(
        f"input {item} is a relative path, which only `kubemr run` resolves (against the "
        f"manifest's directory); give an absolute path or a URL, or write opaque:{item} to hand "
        "the string to the map command as-is."
    )


def _hidden(url: str, root: str) -> bool:
    rel = url[len(root) :] if url.startswith(root) else url.rsplit("/", 1)[-1]
    return any(part.startswith(("_", ".")) for part in rel.split("/") if part)


Lister = Callable[[str], list[ObjectInfo]]


def list_inputs(inputs: tuple[str, ...], lister: Lister) -> list[ObjectInfo | str]:
    """Resolve every input to the objects it names (in order), or keep it as an opaque string."""
    out: list[ObjectInfo | str] = []
    for item in inputs:
        url = classify(item)
        if url is None:
            out.append(item.removeprefix(OPAQUE))
            continue
        try:
            found = lister(url)
        except NotFound as exc:
            raise InputError(f"input {item} does not exist; check the path or URL.") from exc
        except TemporaryError:
            raise  # storage briefly away: the planner tries again
        except StorageError as exc:
            raise InputError(f"input {item} cannot be listed: {exc}") from exc
        if len(found) == 1 and found[0].url == url:
            out.append(found[0])
            continue
        root = url if url.endswith("/") else url + "/"
        visible = [o for o in found if not _hidden(o.url, root)]
        if not visible:
            raise InputError(
                f"input {item} holds no data files (names starting with '_' or '.' are skipped)."
            )
        out.extend(visible)
    return out


def cut(items: list[ObjectInfo | str], split_size: int) -> list[Split]:
    """Cut resolved inputs into splits of at most `split_size` bytes (compressed objects whole)."""
    splits: list[Split] = []
    pack: list[Segment] = []
    pack_size = 0

    def flush() -> None:
        nonlocal pack, pack_size
        if pack:
            splits.append(Split(segments=tuple(pack)))
        pack, pack_size = [], 0

    for item in items:
        if isinstance(item, str):
            flush()
            splits.append(Split(opaque=item))
            continue
        if item.size == 0:
            continue
        if codec_of(item.url) is not None:
            if pack_size + item.size > split_size:
                flush()
            pack.append(Segment(item.url, 0, None))
            pack_size += item.size
            continue
        if item.size > split_size:
            flush()
            pieces = -(-item.size // split_size)
            step = -(-item.size // pieces)
            for start in range(0, item.size, step):
                end = min(start + step, item.size)
                splits.append(Split(segments=(Segment(item.url, start, end),)))
            continue
        if pack_size + item.size > split_size:
            flush()
        pack.append(Segment(item.url, 0, item.size))
        pack_size += item.size
    flush()
    return splits


def cut_lines(
    items: list[ObjectInfo | str], lines: int, open_read: Callable[[str], BinaryIO]
) -> list[Split]:
    """Cut resolved inputs into splits of `lines` lines each (the last of an input may hold
    fewer), reading each input once for where its lines end; opaque inputs one split each."""
    splits: list[Split] = []
    for item in items:
        if isinstance(item, str):
            splits.append(Split(opaque=item))
            continue
        if item.size == 0:
            continue
        if codec_of(item.url) is not None:
            raise InputError(
                f"input {item.url} is compressed, and spec.linesPerMap cuts inputs at line "
                "offsets, which a compressed file does not have; decompress it, or drop "
                "spec.linesPerMap."
            )
        start = 0
        for end in _every_nth_line_end(open_read(item.url), lines):
            if end < item.size:
                splits.append(Split(segments=(Segment(item.url, start, end),)))
                start = end
        if start < item.size:
            splits.append(Split(segments=(Segment(item.url, start, item.size),)))
    return splits


def _every_nth_line_end(stream: BinaryIO, n: int) -> Iterator[int]:
    """The offsets just past every n-th newline of `stream` (closed at the end)."""
    with stream:
        pos = 0  # of the chunk's start
        left = n  # newlines until the next offset
        while chunk := stream.read(CHUNK):
            count = chunk.count(b"\n")
            if count < left:
                left -= count
            else:
                at = -1
                while True:
                    at = chunk.find(b"\n", at + 1)
                    if at < 0:
                        break
                    left -= 1
                    if left == 0:
                        yield pos + at + 1
                        left = n
            pos += len(chunk)


def plan_splits(
    inputs: tuple[str, ...],
    lister: Lister,
    split_size: int,
    lines_per_map: int | None = None,
    open_read: Callable[[str], BinaryIO] | None = None,
) -> list[Split]:
    """Inputs to splits: the whole of planning (`open_read` reads inputs, for linesPerMap)."""
    items = list_inputs(inputs, lister)
    if lines_per_map is not None:
        assert open_read is not None
        return cut_lines(items, lines_per_map, open_read)
    return cut(items, split_size)


def dump_plan(splits: list[Split], extra: dict[str, Any]) -> bytes:
    """The plan document stored beside the job: splits plus what a replay needs."""
    return json.dumps({**extra, "splits": [s.to_json() for s in splits]}).encode()


def load_plan(data: bytes) -> tuple[list[Split], dict[str, Any]]:
    doc = json.loads(data)
    splits = [Split.from_json(v) for v in doc.pop("splits")]
    return splits, doc


def read_split(split: Split, storage_for: Callable[[str], Storage]) -> Iterator[bytes]:
    """The bytes a map command reads on stdin for `split`, streamed in chunks.

    Each segment ends with a newline, so lines of two packed objects never merge.
    """
    if split.opaque is not None:
        yield split.opaque.encode() + b"\n"
        return
    for seg in split.segments:
        last = b"\n"
        for chunk in _read_segment(seg, storage_for(seg.url)):
            if chunk:
                last = chunk
                yield chunk
        if not last.endswith(b"\n"):
            yield b"\n"


def _read_segment(seg: Segment, storage: Storage) -> Iterator[bytes]:
    if seg.compressed:
        with storage.open_read(seg.url, 0) as raw:
            yield from decompressed(raw, seg.url)
        return
    if seg.end is None:
        with storage.open_read(seg.url, seg.start) as f:
            while chunk := f.read(CHUNK):
                yield chunk
        return
    yield from _line_range(seg.url, seg.start, seg.end, storage)


def _line_range(url: str, start: int, end: int, storage: Storage) -> Iterator[bytes]:
    """The lines that start in [start, end): skip the partial first line, finish the last one."""
    begin = max(start - 1, 0)
    with storage.open_read(url, begin) as f:
        pos = begin
        if start > 0:
            # Skip through the first newline at or after start-1: the line it ends
            # belongs to the previous split.
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    return
                nl = chunk.find(b"\n")
                if nl >= 0:
                    pos += nl + 1
                    rest = chunk[nl + 1 :]
                    break
                pos += len(chunk)
            if pos >= end:
                return
        else:
            rest = b""
        # Emit everything up to the newline that ends the line holding byte end-1.
        while True:
            if not rest:
                rest = f.read(CHUNK)
                if not rest:
                    return
            if pos + len(rest) < end:
                yield rest
                pos += len(rest)
                rest = b""
                continue
            nl = rest.find(b"\n", end - pos - 1)
            if nl >= 0:
                yield rest[: nl + 1]
                return
            yield rest
            while chunk := f.read(CHUNK):
                nl = chunk.find(b"\n")
                if nl >= 0:
                    yield chunk[: nl + 1]
                    return
                yield chunk
            return
