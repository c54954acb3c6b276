"""Streaming map outputs into `sort -m` (kubemr.shim.feed): batches, resumed reads, failures,
a merge that stops early, and reading ahead into the spool; each both ways a feed can go,
one FIFO per segment for `sort -m`, and every segment concatenated into one FIFO for `sort`.

The map outputs are stored with `kubemr.shuffle.store` in the one-object layout of object
storage. `Objects` stands in for an S3 bucket: a local directory behind kubemr's own Storage
interface that reports no local paths (so the layout is the one-object one and every read is
a ranged read), counts reads, and breaks reads on request, as a dropped connection or a
missing object would.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from kubemr import shuffle
from kubemr.errors import StorageError, TemporaryStorageError
from kubemr.shim.feed import Feed
from kubemr.shim.reducer import merge_argv
from kubemr.state import Task
from kubemr.storage.base import ObjectInfo, Storage
from kubemr.storage.local import LocalStorage

SORT = ["sort", "-S", "16M", "-t", "\t", "-k1,1"]


class _Breaking:
    """A stream that raises `error` after `after` bytes."""

    def __init__(self, inner: BinaryIO, after: int, error: Exception) -> None:
        self.inner, self.left, self.error = inner, after, error

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise self.error
        data = self.inner.read(min(size if size > 0 else self.left, self.left))
        self.left -= len(data)
        return data

    def __enter__(self) -> _Breaking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.close()


class Objects(Storage):
    """A local directory as an object store (no local paths), counting and breaking reads."""

    def __init__(self) -> None:
        self.local = LocalStorage()
        self.reads: list[tuple[str, int, int | None]] = []
        self.lock = threading.Lock()
        self.break_after: int | None = None  # each URL's first read stops after this many bytes
        self.broken: set[str] = set()
        self.missing: set[str] = set()

    def open_read(self, url: str, start: int = 0, end: int | None = None) -> BinaryIO:
        data = start >= shuffle.index_size(1)  # not an index
        with self.lock:
            self.reads.append((url, start, end))
            first = data and url not in self.broken
            if data:
                self.broken.add(url)
        if url in self.missing:
            raise StorageError(f"Cannot read {url}: no such object.")
        stream = self.local.open_read(url, start, end)
        if self.break_after is not None and first:
            error = TemporaryStorageError("the connection was reset")
            return _Breaking(stream, self.break_after, error)  # type: ignore[return-value]
        return stream

    def stat(self, url: str) -> ObjectInfo:
        return self.local.stat(url)

    def list(self, url: str) -> list[ObjectInfo]:
        return self.local.list(url)

    def put_file(self, path: str, url: str) -> None:
        self.local.put_file(path, url)

    def put_bytes(self, data: bytes, url: str) -> None:
        self.local.put_bytes(data, url)

    def get_bytes(self, url: str) -> bytes:
        return self.local.get_bytes(url)

    def copy(self, src: str, dst: str) -> None:
        self.local.copy(src, dst)

    def exists(self, url: str) -> bool:
        return self.local.exists(url)

    def delete_prefix(self, url: str) -> None:
        self.local.delete_prefix(url)


def map_outputs(
    tmp: Path, storage: Storage, maps: int, partitions: int, codec: str
) -> tuple[str, list[bytes]]:
    """Store `maps` map outputs; (the workdir, each partition's lines sorted, as a reference)."""
    rng = random.Random(maps * 31 + partitions)
    workdir = (tmp / "work").as_uri() + "/"
    everything: list[list[bytes]] = [[] for _ in range(partitions)]
    for m in range(maps):
        parts: list[list[bytes]] = [[] for _ in range(partitions)]
        for _ in range(rng.randrange(0, 300)):
            key = f"k{rng.randrange(500):03d}".encode()
            line = key + b"\t" + str(rng.randrange(10**6)).encode() + b"\n"
            parts[int(key[1:]) % partitions].append(line)
        files = []
        for p, lines in enumerate(parts):
            lines.sort(key=lambda x: (x.split(b"\t")[0], x))
            everything[p].extend(lines)
            path = tmp / f"m{m}-{p}"
            path.write_bytes(b"".join(lines))
            files.append(str(path))
        shuffle.store(storage, workdir, Task("map", m), 1, files, codec)
    ref = [b"".join(sorted(lines, key=lambda x: (x.split(b"\t")[0], x))) for lines in everything]
    return workdir, ref


def merged(feed: Feed, tmp: Path, stop_after: int | None = None) -> bytes:
    """Run `sort -m` over the feed's inputs; its output (the first `stop_after` bytes: then the
    merge is killed, as when the reduce command stops reading)."""
    argv = merge_argv(SORT, feed, str(tmp / f"list-{time.monotonic_ns()}"))
    merge = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"}
    )
    assert merge.stdout is not None
    feed.start(merge.kill)
    try:
        if stop_after is not None:
            out = merge.stdout.read(stop_after)
            merge.kill()
        else:
            out = merge.stdout.read()
        merge.wait()
    finally:
        feed.close()
    return out


def locate(
    storage: Storage,
    workdir: str,
    maps: int,
    p: int,
    partitions: int,
    cache: shuffle.IndexCache,
    **kw: object,
) -> list[shuffle.Segment]:
    return shuffle.locate(storage, workdir, [1] * maps, p, partitions, "none", cache, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=[False, True], ids=["fifo-per-segment", "concatenated"])
def concat(request: pytest.FixtureRequest) -> bool:
    """Whether the feeds of a test concatenate their segments (else one FIFO each)."""
    return bool(request.param)


def feed_of(
    storage: Storage,
    segments: list[shuffle.Segment],
    tmp: Path,
    batch: int,
    spool: shuffle.Spool | None = None,
    concat: bool = False,
) -> Feed:
    local = LocalStorage()

    def storage_of(url: str) -> Storage:
        return storage if "/work/" in url else local

    fifos = str(tmp / f"fifos-{time.monotonic_ns()}")
    feed = Feed(storage_of, segments, fifos, batch, spool, concatenate=concat)
    assert feed.merged is not concat
    return feed


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_more_map_outputs_than_a_batch_merge_to_the_sorted_partition(
    tmp_path: Path, codec: str, concat: bool
) -> None:
    storage = Objects()
    workdir, ref = map_outputs(tmp_path, storage, maps=70, partitions=3, codec=codec)
    cache = shuffle.IndexCache()
    for p in range(3):
        segments = locate(storage, workdir, 70, p, 3, cache)
        assert 50 < len(segments) <= 70  # the empty segments are left out
        feed = feed_of(storage, segments, tmp_path, batch=8, concat=concat)
        assert merged(feed, tmp_path) == ref[p]
        feed.failure.raise_if_any()
    assert sum(1 for _, start, _ in storage.reads if start == 0) == 70  # one index read a map


def test_a_dropped_connection_is_resumed_where_it_broke(tmp_path: Path, concat: bool) -> None:
    storage = Objects()
    workdir, ref = map_outputs(tmp_path, storage, maps=10, partitions=1, codec="zstd")
    segments = locate(storage, workdir, 10, 0, 1, shuffle.IndexCache())
    storage.break_after = 100
    feed = feed_of(storage, segments, tmp_path, batch=4, concat=concat)
    assert merged(feed, tmp_path) == ref[0]
    feed.failure.raise_if_any()
    starts = {seg.url: seg.start for seg in segments}
    resumed = [(u, s) for u, s, _ in storage.reads if s == starts[u] + 100]
    assert len(resumed) == len(segments)  # each read once more, from where it broke


def test_an_unreadable_map_output_stops_the_merge_at_once(tmp_path: Path, concat: bool) -> None:
    storage = Objects()
    workdir, _ = map_outputs(tmp_path, storage, maps=40, partitions=1, codec="none")
    segments = locate(storage, workdir, 40, 0, 1, shuffle.IndexCache())
    storage.missing.add(segments[20].url)
    feed = feed_of(storage, segments, tmp_path, batch=8, concat=concat)
    started = time.monotonic()
    merged(feed, tmp_path)
    assert time.monotonic() - started < 20
    with pytest.raises(StorageError, match="no such object"):
        feed.failure.raise_if_any()


def test_a_damaged_map_output_is_not_merged(tmp_path: Path, concat: bool) -> None:
    storage = Objects()
    workdir, _ = map_outputs(tmp_path, storage, maps=3, partitions=2, codec="none")
    segments = locate(storage, workdir, 3, 0, 2, shuffle.IndexCache())
    seg = segments[1]
    bad = shuffle.Segment(seg.url, seg.codec, seg.start, seg.end, seg.size + 1)
    feed = feed_of(storage, [segments[0], bad, segments[2]], tmp_path, batch=8, concat=concat)
    merged(feed, tmp_path)
    with pytest.raises(StorageError, match="the map output is damaged"):
        feed.failure.raise_if_any()


def test_a_merge_that_stops_reading_releases_every_writer(tmp_path: Path, concat: bool) -> None:
    storage = Objects()
    workdir, ref = map_outputs(tmp_path, storage, maps=60, partitions=1, codec="none")
    segments = locate(storage, workdir, 60, 0, 1, shuffle.IndexCache())
    feed = feed_of(storage, segments, tmp_path, batch=8, concat=concat)
    started = time.monotonic()
    out = merged(feed, tmp_path, stop_after=50)
    assert out == ref[0][:50]
    assert time.monotonic() - started < 20  # close() did not wait for writers forever
    feed.failure.raise_if_any()  # the merge stopping is not a failure of the feed


def test_the_first_task_of_a_claim_reads_ahead_for_the_others(tmp_path: Path, concat: bool) -> None:
    storage = Objects()
    workdir, ref = map_outputs(tmp_path, storage, maps=12, partitions=5, codec="zstd")
    cache = shuffle.IndexCache()

    def run(p: int, spool: shuffle.Spool) -> bytes:
        segments = locate(storage, workdir, 12, p, 5, cache, spool=spool, upto=3)
        feed = feed_of(storage, segments, tmp_path, batch=8, spool=spool, concat=concat)
        out = merged(feed, tmp_path)
        feed.failure.raise_if_any()
        return out

    spool = shuffle.Spool(str(tmp_path / "spool"))
    spool.clear()
    assert run(0, spool) == ref[0]
    reads = len(storage.reads)
    assert reads == 12 + 12  # the indexes, then one read of each map output
    assert len(os.listdir(spool.directory)) == 12  # what follows partition 0, one file each
    # The claim's next tasks, then (small, so read too) the ones after it: no more reads.
    assert [run(p, spool) for p in (1, 2, 3, 4)] == ref[1:]
    assert len(storage.reads) == reads
    assert os.listdir(spool.directory) == []  # each file removed once its last part is merged

    assert run(0, spool) == ref[0] and len(os.listdir(spool.directory)) == 12
    spool.prune(5)  # a claim starting after every partition kept: they are not needed
    assert os.listdir(spool.directory) == []
    assert run(1, spool) == ref[1] and len(storage.reads) == reads + 12 + 12

    small = shuffle.Spool(str(tmp_path / "small"), budget=12)  # 1 byte a map output
    small.clear()
    assert run(0, small) == ref[0] and run(1, small) == ref[1]
    own = sum(len(locate(storage, workdir, 12, p, 5, cache)) for p in (0, 1))  # not empty
    assert len(storage.reads) == reads + 12 * 2 + own and os.listdir(small.directory) == []


def test_a_low_limit_of_open_files_makes_smaller_merge_batches() -> None:
    """GNU sort refuses a --batch-size beyond what the limit of open files allows."""
    import sys

    code = (
        "import resource; from kubemr.shim.feed import merge_batch, BATCH; "
        "print(merge_batch(), BATCH); "
        "h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (100, h)); print(merge_batch())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    first, low = out.decode().splitlines()
    batch, most = map(int, first.split())
    assert batch <= most and int(low) == (100 - 64) // 3


def test_without_dev_shm_the_fifos_go_into_the_attempts_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where /dev/shm is missing (feed.SHM stands in for it, pointed at nothing), the FIFOs
    are made under the directory the reduce task gives, and removed with the feed."""
    from kubemr.shim import feed as feed_module

    monkeypatch.setattr(feed_module, "SHM", str(tmp_path / "no-shm"))
    storage = Objects()
    workdir, ref = map_outputs(tmp_path, storage, maps=5, partitions=1, codec="zstd")
    segments = locate(storage, workdir, 5, 0, 1, shuffle.IndexCache())
    feed = Feed(lambda url: storage, segments, str(tmp_path / "runs"), 8)
    assert all(p.startswith(str(tmp_path / "runs")) for p in feed.paths)
    assert merged(feed, tmp_path) == ref[0]
    feed.failure.raise_if_any()
    assert os.listdir(tmp_path / "runs") == []


def test_small_segments_are_concatenated_and_sorted_large_ones_merged() -> None:
    """The choice a reduce task makes: many small segments (many partitions) go into one FIFO
    and are sorted; segments of unknown size, one alone, or large ones get a FIFO each."""
    from kubemr.shim.feed import LARGEST_CONCATENATED, SMALL_SEGMENTS, concatenates

    def segs(*sizes: int) -> list[shuffle.Segment]:
        return [
            shuffle.Segment(f"s3://b/m{i}", "none", 0, max(s, 0), s) for i, s in enumerate(sizes)
        ]

    assert concatenates(segs(*[2_600] * 200))  # P = 256 over 128 MiB of 200 map outputs
    assert concatenates(segs(0, 0, SMALL_SEGMENTS * 2))  # small on average
    assert not concatenates(segs(*[640_000] * 200))  # P = 1: a merge of sorted runs
    assert not concatenates(segs(100, -1))  # a size not known
    assert not concatenates(segs(100))  # one segment: nothing to merge either way
    assert not concatenates(segs(*[0] * 99, LARGEST_CONCATENATED + 1))  # one too large to hold


def test_a_concatenated_feed_of_empty_segments_ends(tmp_path: Path) -> None:
    """Segments with no bytes of their own (the first task of a claim may read only ahead):
    the FIFO is still opened and closed, so the sort sees its end rather than waiting."""
    storage = Objects()
    workdir, _ = map_outputs(tmp_path, storage, maps=4, partitions=1, codec="none")
    segments = locate(storage, workdir, 4, 0, 1, shuffle.IndexCache())
    empty = [shuffle.Segment(s.url, s.codec, s.start, s.start, 0) for s in segments]
    feed = feed_of(storage, empty, tmp_path, batch=8, concat=True)
    started = time.monotonic()
    assert merged(feed, tmp_path) == b""
    assert time.monotonic() - started < 20
    feed.failure.raise_if_any()


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_a_spill_written_piece_by_piece_is_stored_and_read_back_whole(
    tmp_path: Path, codec: str, concat: bool
) -> None:
    """The partitioner writes each partition in many pieces, interleaved, into one spill; the
    object packs each partition's pieces together (compressed as one frame, or several for
    more than `shuffle.COPY_CHUNK`), and every partition reads back as it was written."""
    storage = Objects()
    workdir = (tmp_path / "work").as_uri() + "/"
    spill = shuffle.Spill(str(tmp_path / "spill"), 3)
    sinks = spill.sinks()
    want = [bytearray() for _ in range(3)]
    rng = random.Random(5)
    for i in range(300):
        p = rng.choice([0, 2])  # partition 1 is left empty
        line = f"k{i:05d}\t{rng.randrange(10**9)}\n".encode()
        sinks[p].write(line)
        want[p] += line
    big = b"".join(f"z{i:08d}\tx\n".encode() for i in range(shuffle.COPY_CHUNK // 11 + 1000))
    sinks[2].write(big)  # one piece larger than COPY_CHUNK
    want[2] += big
    spill.close()
    shuffle.store(storage, workdir, Task("map", 0), 1, spill, codec)
    cache = shuffle.IndexCache()
    for p in (0, 2):
        segments = shuffle.locate(storage, workdir, [1], p, 3, codec, cache)
        twice = [segments[0], segments[0]]  # two map outputs holding the same lines
        feed = feed_of(storage, twice, tmp_path, batch=8, concat=concat)
        assert merged(feed, tmp_path) == b"".join(sorted(bytes(want[p]).splitlines(True) * 2))
        feed.failure.raise_if_any()
    assert shuffle.locate(storage, workdir, [1], 1, 3, codec, cache) == []


@pytest.mark.parametrize("damage", ["size", "bytes"])
def test_a_damaged_segment_read_ahead_into_the_spool_is_not_merged(
    tmp_path: Path, damage: str
) -> None:
    """Segments in local files (the spool) are read in one piece and decoded whole; one that
    decodes to another size than its index says, or does not decode, fails the attempt."""
    import zstandard

    good = zstandard.ZstdCompressor().compress(b"a\t1\nb\t1\n")
    path = tmp_path / "kept"
    path.write_bytes(good + (b"x" * len(good) if damage == "bytes" else good))
    url = path.as_uri()
    segments = [
        shuffle.Segment(url, "zstd", 0, len(good), 8),
        shuffle.Segment(url, "zstd", len(good), 2 * len(good), 9 if damage == "size" else 8),
    ]
    feed = feed_of(Objects(), segments, tmp_path, batch=8, concat=True)
    merged(feed, tmp_path)
    with pytest.raises(StorageError, match="the map output is damaged"):
        feed.failure.raise_if_any()
