"""The map output format (kubemr.shuffle): its index, the codec choice, the index cache and
the spool's bookkeeping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubemr import shuffle
from kubemr.errors import StorageError
from kubemr.state import Task
from kubemr.storage.local import LocalStorage


def test_the_index_round_trips_and_places_each_segment() -> None:
    head = shuffle.index_size(3)
    assert head == 16 + 16 * 3
    index = shuffle.Index("zstd", (head + 5, head + 5, head + 12), (40, 0, 90))
    data = index.encode()
    assert len(data) == head
    assert shuffle.Index.decode(data + b"segments", 3, "u") == index
    assert [index.segment(p) for p in range(3)] == [
        (head, head + 5),
        (head + 5, head + 5),
        (head + 5, head + 12),
    ]


def test_an_index_of_another_job_or_none_at_all_is_refused() -> None:
    data = shuffle.Index("none", (48, 48), (0, 0)).encode()
    with pytest.raises(StorageError, match="holds 2 partitions, not the 3 of this job"):
        shuffle.Index.decode(data + b"\0" * 16, 3, "s3://b/map.out")
    with pytest.raises(StorageError, match="not a kubemr map output"):
        shuffle.Index.decode(b"x" * 48, 2, "s3://b/map.out")
    with pytest.raises(StorageError, match="too short"):
        shuffle.Index.decode(b"kmr", 2, "s3://b/map.out")


def test_auto_compresses_what_goes_to_object_storage_only() -> None:
    assert shuffle.codec_for("auto", single_object=True) == "zstd"
    assert shuffle.codec_for("auto", single_object=False) == "none"
    assert shuffle.codec_for("zstd", single_object=False) == "zstd"
    assert shuffle.codec_for("none", single_object=True) == "none"


def test_the_index_cache_reads_each_index_once_and_stays_within_its_bytes(
    tmp_path: Path,
) -> None:
    storage = LocalStorage()
    urls = []
    for m in range(4):
        part = tmp_path / f"p{m}"
        part.write_bytes(b"a\t1\n" * (m + 1))
        url = (tmp_path / f"m{m}.out").as_uri()
        index = shuffle.Index("none", (shuffle.index_size(1) + part.stat().st_size,), (0,))
        (tmp_path / f"m{m}.out").write_bytes(index.encode() + part.read_bytes())
        urls.append(url)
    cache = shuffle.IndexCache(limit=2 * shuffle.index_size(1))
    first = cache.get(storage, urls[0], 1)
    os.unlink(urls[0].removeprefix("file://"))
    assert cache.get(storage, urls[0], 1) == first  # from the cache, not the (gone) file
    for url in urls[1:]:
        cache.get(storage, url, 1)
    with pytest.raises(StorageError):  # evicted (two fit), so read again: it is gone
        cache.get(storage, urls[0], 1)


def test_the_spool_hands_out_what_it_keeps_and_forgets_what_a_claim_passed(
    tmp_path: Path,
) -> None:
    spool = shuffle.Spool(str(tmp_path / "spool"))
    spool.clear()
    for url, last in (("s3://b/m0", 3), ("s3://b/m1", 6)):
        path = spool.path(url, 1)
        Path(path).write_bytes(b"x" * 100)
        spool.keep(url, shuffle.Kept(path, 1000, 1100, last))
    assert spool.take("s3://b/m0", 990, 1010, 1) is None  # not all of it was kept
    seg = spool.take("s3://b/m0", 1010, 1040, 2)
    assert seg is not None and (seg.start, seg.end, seg.last_of_spool) == (10, 40, False)
    assert seg.url == "file://" + spool.path("s3://b/m0", 1)
    last = spool.take("s3://b/m0", 1040, 1100, 3)
    assert last is not None and last.last_of_spool  # the feed removes the file after its merge
    assert spool.take("s3://b/m0", 1040, 1100, 3) is None  # handed out once
    orphan = spool.path("s3://b/m2", 1)  # taken by a task that failed before its merge
    Path(orphan).write_bytes(b"x")
    spool.prune(7)  # a claim starting at 7: what was kept for partitions up to 6 goes
    assert spool.take("s3://b/m1", 1000, 1010, 4) is None
    assert not os.path.exists(spool.path("s3://b/m1", 1)) and not os.path.exists(orphan)
    assert spool.path("s3://b/m0", 2) != spool.path("s3://b/m1", 2) != spool.path("s3://b/m1", 3)


def test_on_a_local_disk_a_map_attempt_stores_a_file_per_partition(tmp_path: Path) -> None:
    storage = LocalStorage()
    work = (tmp_path / "work").as_uri() + "/"
    files = []
    for p in range(3):
        path = tmp_path / f"part-{p}"
        path.write_bytes(f"k{p}\t1\n".encode())
        files.append(str(path))
    shuffle.store(storage, work, Task("map", 4), 2, files, "none")
    stored = sorted((tmp_path / "work" / "data" / "map-4" / "a2").iterdir())
    assert [p.name for p in stored] == ["part-00000", "part-00001", "part-00002"]
    assert stored[2].read_bytes() == b"k2\t1\n"
    segments = shuffle.locate(storage, work, [1] * 4 + [2], 1, 3, "none", shuffle.IndexCache())
    assert segments[4].path == str(stored[1])  # merged where it lies, not streamed
