"""The shuffle: how a map attempt stores its sorted output, and where a reduce task finds its
partition of it.

On a local disk (any storage with local paths) an attempt stores one file per partition,
`<attempt dir>/part-PPPPP` (`.zst` when compressed, an empty file when the partition is):
a file there costs an inode and no request, and an uncompressed one is merged by `sort -m`
where it lies.

On object storage an attempt stores one object, `<attempt dir>/map.out`, whatever the number
of partitions, as Hadoop and Spark write one file per map task: M map tasks make M objects,
not M x P (a 1 TB job in 64 MiB splits with 1,000 partitions would otherwise PUT 16 million
of them). The object starts with an index of fixed size, so that a reader who knows P reads
it with one ranged GET:

    offset    0  b"kmrmap01"                 the format
              8  codec                       4 bytes: b"none" or b"zstd"
             12  P                           u32, little-endian
             16  P x (end, size)             u64 each: where segment p ends in the object, and
                                             how many bytes it holds uncompressed
      16 + 16 P  segment 0, segment 1, ...   partition p's sorted lines: zstd frames, or the
                                             bytes themselves; nothing when it is empty

A reduce task reads the index of every committed map attempt (kept by the worker for its
next reduce task), then its own segment of each (one ranged GET; none when it is empty), and
streams it decompressed into the merge (`kubemr.shim.feed`). Every attempt writes under its
own name and readers name the committed attempts, so a zombie attempt is never read.

Compression (`spec.mapOutputCompression`): `auto`, the default, is zstd at level 1 on object
storage, where every byte crosses the network twice, and none on a local disk, where it would
only cost CPU (docs/benchmarks.md has the figures); `zstd` and `none` force either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import zstandard

from kubemr import layout
from kubemr.errors import StorageError
from kubemr.spec import AUTO
from kubemr.state import Task
from kubemr.storage.base import Storage

MAGIC = b"kmrmap01"
NONE, ZSTD = "none", "zstd"
ZSTD_LEVEL = 1
_HEAD = struct.Struct("<8s4sI")
_ENTRY = struct.Struct("<QQ")
COPY_CHUNK = 8 * 1024 * 1024
INDEX_THREADS = 16
#: What a worker's spool may hold (see `Spool`), the most it reads ahead from one object for
#: the tasks of its claim, and for tasks beyond it (which it may not get: about what one
#: request costs in time, so reading them is cheaper than asking for them again).
SPOOL_BYTES = 1024 * 1024 * 1024
AHEAD_PER_MAP = 16 * 1024 * 1024
SPECULATIVE_PER_MAP = 256 * 1024
#: How many bytes of map output indexes a worker keeps for its next reduce tasks.
INDEX_CACHE_BYTES = 64 * 1024 * 1024


def one_object(storage: Storage, workdir: str) -> bool:
    """Whether map attempts store one object each (object storage), not a file per partition."""
    return storage.local_path(workdir) is None


def codec_for(setting: str, single_object: bool) -> str:
    """The codec of map outputs: `setting` (spec.mapOutputCompression), `auto` resolved."""
    if setting == AUTO:
        return ZSTD if single_object else NONE
    return setting


def _nonempty(path: str) -> bool:
    """Whether the file at `path` holds bytes (a missing one is left to its reader to say)."""
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:
        return True


def index_size(partitions: int) -> int:
    return _HEAD.size + _ENTRY.size * partitions


@dataclass(frozen=True)
class Index:
    """The index at the start of a map output object."""

    codec: str
    ends: tuple[int, ...]  # where each segment ends, from the start of the object
    sizes: tuple[int, ...]  # uncompressed bytes of each segment

    def segment(self, partition: int) -> tuple[int, int]:
        """Byte range [start, end) of `partition`'s segment in the object."""
        start = self.ends[partition - 1] if partition else index_size(len(self.ends))
        return start, self.ends[partition]

    def encode(self) -> bytes:
        entries = b"".join(_ENTRY.pack(e, s) for e, s in zip(self.ends, self.sizes, strict=True))
        return _HEAD.pack(MAGIC, self.codec.encode(), len(self.ends)) + entries

    @staticmethod
    def decode(data: bytes, partitions: int, url: str) -> Index:
        """Parse the first `index_size(partitions)` bytes of `url`; StorageError if they are not
        the index of a map output with that many partitions."""
        if len(data) < _HEAD.size:
            raise StorageError(f"{url} is not a kubemr map output: it is too short.")
        magic, codec, count = _HEAD.unpack_from(data)
        if magic != MAGIC or codec not in (b"none", b"zstd"):
            raise StorageError(f"{url} is not a kubemr map output (no index at its start).")
        if count != partitions or len(data) < index_size(partitions):
            raise StorageError(
                f"{url} holds {count} partitions, not the {partitions} of this job, "
                "or is cut short."
            )
        pairs = [_ENTRY.unpack_from(data, _HEAD.size + _ENTRY.size * p) for p in range(count)]
        return Index(codec.decode(), tuple(e for e, _ in pairs), tuple(s for _, s in pairs))


class Spill:
    """Every partition's sorted lines of one map attempt in one local file, in the order the
    partitioner writes them, with where each piece went: on object storage the attempt
    stores one object anyway, and P local files would cost P file creations (a millisecond
    each on some disks) for nothing. `sinks` are what the partitioner writes to."""

    def __init__(self, path: str, partitions: int) -> None:
        self.path = path
        self.partitions = partitions
        self.pieces: list[list[tuple[int, int]]] = [[] for _ in range(partitions)]
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._pos = 0

    def sinks(self) -> list[SpillSink]:
        return [SpillSink(self, p) for p in range(self.partitions)]

    def write(self, partition: int, data: bytes) -> None:
        if data:
            self._file.write(data)
            self.pieces[partition].append((self._pos, len(data)))
            self._pos += len(data)

    def close(self) -> None:
        self._file.close()

    def extract(self, files: Sequence[str]) -> list[str]:
        """Write partition p's lines to `files[p]`, for each p; the spill is removed."""
        with open(self.path, "rb") as src:
            for pieces, path in zip(self.pieces, files, strict=True):
                with open(path, "wb") as dst:
                    for offset, n in pieces:
                        dst.write(os.pread(src.fileno(), n, offset))
        os.unlink(self.path)
        return list(files)


class SpillSink:
    """One partition's way into a `Spill`."""

    def __init__(self, spill: Spill, partition: int) -> None:
        self.spill = spill
        self.partition = partition

    def write(self, data: bytes, /) -> int:
        self.spill.write(self.partition, data)
        return len(data)

    def close(self) -> None:
        pass  # the spill is closed once every partition is written


def store(
    storage: Storage,
    workdir: str,
    task: Task,
    attempt: int,
    files: Sequence[str] | Spill,
    codec: str,
) -> None:
    """Store the sorted partitions of one map attempt (`files[p]` for partition p, which may
    be consumed, or a Spill on object storage), in the layout of `storage` (see the module
    docstring)."""
    if isinstance(files, Spill):
        parts = [(files.path, pieces) for pieces in files.pieces]
    elif one_object(storage, workdir):
        sizes = [os.path.getsize(local) for local in files]
        parts = [(local, [(0, n)] if n else []) for local, n in zip(files, sizes, strict=True)]
    else:
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL) if codec == ZSTD else None
        for p, local in enumerate(files):
            if cctx is not None:
                packed = local + ".zst"
                if os.path.getsize(local) == 0:  # empty stays empty: readers skip it
                    os.rename(local, packed)
                else:
                    with open(local, "rb") as src, open(packed, "wb") as dst:
                        cctx.copy_stream(src, dst)
                    os.unlink(local)
                local = packed
            url = layout.map_run(workdir, task, attempt, p, codec)
            storage.put_file(local, url)
        return
    packed = os.path.join(os.path.dirname(parts[0][0]), "map.out")
    _pack(parts, packed, codec)
    for local in {local for local, _ in parts}:
        os.unlink(local)
    storage.put_file(packed, layout.map_output(workdir, task, attempt))


def _pack(parts: Sequence[tuple[str, Sequence[tuple[int, int]]]], packed: str, codec: str) -> None:
    """Write the object `packed`: the index, then each partition's bytes, which are the pieces
    (offset, length) of the file named with them, `COPY_CHUNK` at a time. Each file is opened
    once and one compressor serves every partition (with many partitions, opening a file or
    making a compressor per partition cost more than compressing the bytes)."""
    ends, sizes = [], []
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL) if codec == ZSTD else None
    sources: dict[str, int] = {}
    try:
        with open(packed, "wb", buffering=0) as dst:
            out = _PackedFile(dst.fileno(), index_size(len(parts)))
            for path, pieces in parts:
                sizes.append(sum(n for _, n in pieces))
                if not pieces:  # an empty partition: an empty segment, not an empty frame
                    ends.append(out.pos)
                    continue
                src = sources.get(path)
                if src is None:
                    src = sources[path] = os.open(path, os.O_RDONLY)
                if cctx is not None and len(pieces) == 1 and pieces[0][1] <= COPY_CHUNK:
                    offset, n = pieces[0]  # the usual case: one frame at once
                    data = os.pread(src, n, offset)
                    if len(data) != n:
                        raise OSError(f"{path} is shorter than what was written to it")
                    out.write(cctx.compress(data))
                else:
                    frame = cctx.compressobj() if cctx is not None else None
                    for offset, n in pieces:
                        while n:
                            if frame is not None:
                                data = os.pread(src, min(n, COPY_CHUNK), offset)
                                out.write(frame.compress(data))
                                copied = len(data)
                            else:
                                copied = out.copy_from(src, min(n, COPY_CHUNK), offset)
                            if not copied:
                                raise OSError(f"{path} is shorter than what was written to it")
                            offset, n = offset + copied, n - copied
                    if frame is not None:
                        out.write(frame.flush())
                ends.append(out.pos)
            out.flush()
            os.pwrite(dst.fileno(), Index(codec, tuple(ends), tuple(sizes)).encode(), 0)
    finally:
        for fd in sources.values():
            os.close(fd)


class _PackedFile:
    """The file a map output is packed into, written from byte `pos` on: small writes are
    gathered and written 1 MiB at a time, copies go from file to file in the kernel."""

    def __init__(self, fd: int, pos: int) -> None:
        self.fd = fd
        self.pos = pos
        self._pending = bytearray()
        os.lseek(fd, pos, os.SEEK_SET)

    def write(self, data: bytes) -> None:
        self._pending += data
        self.pos += len(data)
        if len(self._pending) >= 1 << 20:
            self.flush()

    def copy_from(self, src: int, n: int, offset: int) -> int:
        self.flush()
        copied = os.copy_file_range(src, self.fd, n, offset)
        self.pos += copied
        return copied

    def flush(self) -> None:
        _write_all(self.fd, bytes(self._pending))
        self._pending.clear()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@dataclass(frozen=True)
class Ahead:
    """Where a read goes on after its segment: to byte `end` of the object, the segments of
    the partitions up to `last`, into one spool file at `path`."""

    end: int
    last: int
    path: str


@dataclass(frozen=True)
class Segment:
    """Where one map task's part of a partition is: a local file to merge as it is (`path`), or
    bytes [start, end) of `url` (to its end when `end` is None) to stream, `size` bytes once
    decoded with `codec` (-1: not known in advance). With `ahead`, the same read goes on
    into the worker's spool, for the partitions this worker reduces next."""

    url: str
    codec: str
    start: int = 0
    end: int | None = None
    size: int = -1
    path: str | None = None
    ahead: Ahead | None = None
    #: The last segment read from a spool file: remove the file once merged.
    last_of_spool: bool = False


@dataclass(frozen=True)
class Kept:
    """Bytes [start, end) of a map output, read ahead into the local file `path`: the
    segments of partitions up to `last`."""

    path: str
    start: int
    end: int
    last: int


class Spool:
    """Segments read ahead for this worker's next reduce tasks, one local file per map output.

    On object storage a reduce task would read one range of every map output: M x P requests
    for a job, each a round trip costing more than its bytes when segments are small. But the
    partitions of one map output lie one after the other, and a worker claims consecutive
    reduce tasks, so the first task of a claim reads, with each request, the segments of the
    tasks after it as well (up to `budget` / M bytes per map output), and keeps them here, as
    they are stored, in one file per map output. It also reads a little beyond its claim
    (`SPECULATIVE_PER_MAP`), since its next claim usually starts there and a request costs as
    much time as that many bytes. A kept range counts once it is whole (written aside, then
    renamed); the file is removed once its last partition is merged, or once the worker's
    claims have moved past it. Committed map attempts never change, so nothing kept is stale.
    """

    def __init__(self, directory: str, budget: int = SPOOL_BYTES) -> None:
        self.directory = directory
        self.budget = budget
        self._kept: dict[str, Kept] = {}
        self._lock = threading.Lock()

    def path(self, url: str, partition: int) -> str:
        """Where a read of `url` starting at `partition`'s segment keeps what follows it."""
        name = hashlib.sha256(url.encode()).hexdigest()[:32]
        return os.path.join(self.directory, f"{name}-{partition:05d}")

    def keep(self, url: str, kept: Kept) -> None:
        with self._lock:
            self._kept[url] = kept

    def take(self, url: str, start: int, end: int, partition: int) -> Segment | None:
        """Bytes [start, end) of `url` (partition `partition`'s segment) from a kept file, as
        a segment to stream (its `url` the local file), or None if they were not kept."""
        with self._lock:
            kept = self._kept.get(url)
            if kept is None or not kept.start <= start <= end <= kept.end:
                return None
            last = partition >= kept.last
            if last:
                del self._kept[url]
        local = "file://" + kept.path
        offset = start - kept.start
        return Segment(local, NONE, offset, offset + end - start, last_of_spool=last)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
        os.makedirs(self.directory, exist_ok=True)

    def prune(self, below: int) -> None:
        """Forget what was read ahead only for partitions before `below` (a claim starting
        there takes the first tasks left to do: the others are done, or another worker's),
        and remove files nothing refers to (a task that failed before merging what it took).
        Called between tasks, when nothing is being read ahead."""
        with self._lock:
            gone = [url for url, kept in self._kept.items() if kept.last < below]
            for url in gone:
                del self._kept[url]
            known = {kept.path for kept in self._kept.values()}
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(self.directory, name)
            if path not in known:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def per_map(self, maps: int, claimed: bool) -> int:
        """How many bytes beyond its own segment a task may read ahead from one map output,
        for tasks of its claim (`claimed`) or beyond it."""
        most = AHEAD_PER_MAP if claimed else SPECULATIVE_PER_MAP
        return min(most, self.budget // max(1, maps))


class IndexCache:
    """The indexes of map outputs one worker has read, for its next reduce tasks (thread-safe,
    bounded in bytes; committed attempts never change, so nothing in it goes stale)."""

    def __init__(self, limit: int = INDEX_CACHE_BYTES) -> None:
        self._limit = limit
        self._used = 0
        self._entries: OrderedDict[str, Index] = OrderedDict()
        self._lock = threading.Lock()

    def peek(self, url: str) -> Index | None:
        """The index of `url` if it is cached."""
        with self._lock:
            found = self._entries.get(url)
            if found is not None:
                self._entries.move_to_end(url)
            return found

    def get(self, storage: Storage, url: str, partitions: int) -> Index:
        found = self.peek(url)
        if found is not None:
            return found
        with storage.open_read(url, 0, index_size(partitions)) as f:
            index = Index.decode(f.read(), partitions, url)
        with self._lock:
            if url not in self._entries:
                self._entries[url] = index
                self._used += index_size(partitions)
                while self._used > self._limit and len(self._entries) > 1:
                    _, dropped = self._entries.popitem(last=False)
                    self._used -= index_size(len(dropped.ends))
        return index


def locate(
    storage: Storage,
    workdir: str,
    map_attempts: Sequence[int],
    partition: int,
    partitions: int,
    codec: str,
    cache: IndexCache,
    check: Callable[[], None] = lambda: None,
    spool: Spool | None = None,
    upto: int = 0,
) -> list[Segment]:
    """The segments of `partition` in every committed map attempt, in map task order
    (`map_attempts[i]`: the committed attempt of map task i), empty ones left out unless they
    read ahead or end a spool file. On object storage this reads the indexes (from `cache`
    when it has them; `check` runs before each read, so that a stopped task stops), and, with
    a `spool`, takes segments read ahead into it, or reads ahead the segments of the
    partitions after it: those before `upto` (the rest of the worker's claim), and a few more
    (see `Spool`)."""
    tasks = [Task("map", i) for i in range(len(map_attempts))]
    if not one_object(storage, workdir):
        found = []
        for task, attempt in zip(tasks, map_attempts, strict=True):
            url = layout.map_run(workdir, task, attempt, partition, codec)
            path = storage.local_path(url)
            if codec == NONE:
                found.append(Segment(url, codec, path=path))
            elif path is None or _nonempty(path):  # an empty compressed run is an empty file
                found.append(Segment(url, codec))
        return found
    claimed = spool.per_map(len(tasks), True) if spool is not None else 0
    beyond = spool.per_map(len(tasks), False) if spool is not None else 0

    urls = [layout.map_output(workdir, t, a) for t, a in zip(tasks, map_attempts, strict=True)]
    indexes = [cache.peek(url) for url in urls]
    missing = [i for i, index in enumerate(indexes) if index is None]

    def fetch(i: int) -> None:
        check()
        indexes[i] = cache.get(storage, urls[i], partitions)

    if missing:  # the first task of a worker: read them, several at a time
        with ThreadPoolExecutor(min(INDEX_THREADS, len(missing))) as pool:
            list(pool.map(fetch, missing))

    def segment(i: int) -> Segment | None:
        url, index = urls[i], indexes[i]
        assert index is not None
        start, end = index.segment(partition)
        size = index.sizes[partition]
        if spool is None:
            return Segment(url, index.codec, start, end, size) if end > start else None
        kept = spool.take(url, start, end, partition)
        if kept is not None:  # an empty one too if it is the last: its file is removed then
            keep = end > start or kept.last_of_spool
            return dataclasses.replace(kept, codec=index.codec, size=size) if keep else None
        last, upto_byte = partition, end
        for q in range(partition + 1, partitions):
            q_end = index.segment(q)[1]
            if q_end - end > (claimed if q < upto else beyond):
                break
            last, upto_byte = q, q_end
        ahead = Ahead(upto_byte, last, spool.path(url, partition)) if upto_byte > end else None
        if end == start and ahead is None:
            return None
        return Segment(url, index.codec, start, end, size, ahead=ahead)

    check()
    return [seg for seg in map(segment, range(len(tasks))) if seg is not None]
