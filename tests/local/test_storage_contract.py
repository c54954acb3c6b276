"""The Storage contract, run against every writable backend.

The same tests run against file:// (a temp dir) and s3:// (a real S3-compatible
server over HTTP, see `s3_server` in tests/conftest.py), so code written
against `Storage` behaves the same locally and on a cluster.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubemr.errors import NotFound, StorageError
from kubemr.storage import Storage, join, storage_for, to_url

MB = 1024 * 1024


@dataclass(frozen=True)
class Root:
    """An empty place to work in: its backend and its URL (ending with '/')."""

    storage: Storage
    url: str

    def at(self, *parts: str) -> str:
        return join(self.url, *parts)

    def put(self, name: str, data: bytes) -> str:
        url = self.at(name)
        self.storage.put_bytes(data, url)
        return url

    def names(self) -> list[str]:
        return [info.url.removeprefix(self.url) for info in self.storage.list(self.url)]


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Root:
    if request.param == "file":
        url = to_url(str(tmp_path / "root") + "/", "/")
    else:
        url = request.getfixturevalue("s3_env")
    return Root(storage_for(url), url)


def read(stream_owner: Storage, url: str, start: int = 0, end: int | None = None) -> bytes:
    with stream_owner.open_read(url, start, end) as stream:
        return stream.read()


# stat, exists, get/put bytes


def test_put_bytes_then_stat_and_get(root: Root) -> None:
    url = root.put("dir/a.txt", b"hello\n")
    assert root.storage.stat(url).size == 6
    assert root.storage.stat(url).url == url
    assert root.storage.get_bytes(url) == b"hello\n"


def test_put_bytes_overwrites(root: Root) -> None:
    url = root.put("a", b"first version")
    root.storage.put_bytes(b"second", url)
    assert root.storage.get_bytes(url) == b"second"
    assert root.names() == ["a"]


def test_stat_and_get_of_a_missing_object_raise_not_found(root: Root) -> None:
    with pytest.raises(NotFound):
        root.storage.stat(root.at("missing"))
    with pytest.raises(NotFound):
        root.storage.get_bytes(root.at("missing"))
    with pytest.raises(NotFound):
        root.storage.open_read(root.at("missing"))


def test_exists(root: Root) -> None:
    root.put("dir/a", b"x")
    assert root.storage.exists(root.at("dir/a"))
    assert not root.storage.exists(root.at("dir/b"))
    assert not root.storage.exists(root.at("dir/"))
    assert not root.storage.exists(root.at("dir"))


def test_a_prefix_url_is_not_an_object(root: Root) -> None:
    root.put("dir/a", b"x")
    with pytest.raises(NotFound):
        root.storage.stat(root.at("dir/"))
    with pytest.raises(StorageError):
        root.storage.put_bytes(b"x", root.at("other/"))


def test_empty_object(root: Root) -> None:
    url = root.put("empty", b"")
    assert root.storage.stat(url).size == 0
    assert root.storage.get_bytes(url) == b""
    assert read(root.storage, url, 0, 10) == b""
    assert root.storage.list(root.url)[0].size == 0


# list


def test_list_is_recursive_and_sorted_by_url(root: Root) -> None:
    for name in ["b", "a/z", "a/b/c", "a/b.txt", "a/b/a", "_SUCCESS", ".hidden"]:
        root.put(name, name.encode())
    listed = root.storage.list(root.url)
    assert [info.url for info in listed] == sorted(info.url for info in listed)
    assert root.names() == sorted(["b", "a/z", "a/b/c", "a/b.txt", "a/b/a", "_SUCCESS", ".hidden"])
    assert {info.url: info.size for info in listed}[root.at("a/b.txt")] == len("a/b.txt")


def test_list_of_a_prefix_with_or_without_the_slash(root: Root) -> None:
    root.put("data/x", b"1")
    root.put("data/sub/y", b"22")
    root.put("data2/z", b"333")
    root.put("dat", b"4444")
    expected = [root.at("data/sub/y"), root.at("data/x")]
    assert [info.url for info in root.storage.list(root.at("data/"))] == expected
    assert [info.url for info in root.storage.list(root.at("data"))] == expected


def test_list_of_one_object_lists_itself(root: Root) -> None:
    url = root.put("data/x.txt", b"12345")
    root.put("data/x.txt2", b"other")
    assert root.storage.list(url) == [root.storage.stat(url)]


def test_list_of_nothing_raises_not_found(root: Root) -> None:
    with pytest.raises(NotFound):
        root.storage.list(root.url)
    root.put("data/x", b"1")
    for missing in ["nothing/", "nothing", "dat", "data/x/"]:
        with pytest.raises(NotFound):
            root.storage.list(root.at(missing))


# open_read


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, b"0123456789"),
        (0, 10, b"0123456789"),
        (0, 1, b"0"),
        (3, 7, b"3456"),
        (3, None, b"3456789"),
        (9, None, b"9"),
        (5, 5, b""),
        (0, 0, b""),
        (4, 100, b"456789"),
        (10, None, b""),
        (10, 20, b""),
        (50, None, b""),
    ],
)
def test_ranged_reads(root: Root, start: int, end: int | None, expected: bytes) -> None:
    url = root.put("digits", b"0123456789")
    assert read(root.storage, url, start, end) == expected


def test_ranged_read_streams_in_small_reads(root: Root) -> None:
    url = root.put("lines", b"".join(b"line %d\n" % i for i in range(1000)))
    with root.storage.open_read(url, 7, None) as stream:
        assert stream.readline() == b"line 1\n"
        assert stream.read(3) == b"lin"
        rest = stream.read()
    assert rest.endswith(b"line 999\n")


def test_invalid_ranges_are_bugs(root: Root) -> None:
    url = root.put("digits", b"0123456789")
    with pytest.raises(ValueError):
        root.storage.open_read(url, -1)
    with pytest.raises(ValueError):
        root.storage.open_read(url, 5, 4)


def test_empty_range_of_a_missing_object_still_raises_not_found(root: Root) -> None:
    with pytest.raises(NotFound):
        root.storage.open_read(root.at("missing"), 3, 3)


# put_file


def test_put_file_stores_the_file(root: Root, tmp_path: Path) -> None:
    local = tmp_path / "upload.txt"
    local.write_bytes(b"payload\n" * 1000)
    url = root.at("out/part-00000")
    root.storage.put_file(str(local), url)
    assert root.storage.get_bytes(url) == b"payload\n" * 1000
    assert root.names() == ["out/part-00000"]


def test_put_file_replaces_and_leaves_no_temporary_names(root: Root, tmp_path: Path) -> None:
    for attempt in range(5):
        local = tmp_path / f"attempt-{attempt}"
        local.write_bytes(b"attempt %d" % attempt)
        root.storage.put_file(str(local), root.at("out/part-00000"))
        root.storage.put_bytes(b"counters %d" % attempt, root.at("out/_counters"))
    assert root.names() == ["out/_counters", "out/part-00000"]
    assert root.storage.get_bytes(root.at("out/part-00000")) == b"attempt 4"
    local_root = root.storage.local_path(root.url)
    if local_root is not None:  # nothing else is left on disk either
        assert sorted(os.listdir(os.path.join(local_root, "out"))) == ["_counters", "part-00000"]


def test_put_file_of_a_missing_local_file(root: Root, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        root.storage.put_file(str(tmp_path / "never-written"), root.at("x"))
    with pytest.raises(NotFound):
        root.storage.list(root.url)


# copy


def test_copy_is_idempotent(root: Root) -> None:
    src = root.put("tmp/attempt-1/part", b"result")
    dst = root.at("final/part-00000")
    root.storage.copy(src, dst)
    root.storage.copy(src, dst)
    assert root.storage.get_bytes(dst) == b"result"
    assert root.storage.get_bytes(src) == b"result"
    assert root.names() == ["final/part-00000", "tmp/attempt-1/part"]


def test_copy_replaces_the_destination(root: Root) -> None:
    src = root.put("new", b"new contents")
    dst = root.put("old", b"old")
    root.storage.copy(src, dst)
    assert root.storage.get_bytes(dst) == b"new contents"


def test_copy_onto_itself_changes_nothing(root: Root) -> None:
    url = root.put("same", b"data")
    root.storage.copy(url, url)
    assert root.storage.get_bytes(url) == b"data"


def test_copy_of_a_missing_object(root: Root) -> None:
    with pytest.raises(NotFound):
        root.storage.copy(root.at("missing"), root.at("dst"))
    assert not root.storage.exists(root.at("dst"))


# delete_prefix


def test_delete_prefix_deletes_only_under_the_prefix(root: Root) -> None:
    for name in ["out/a", "out/sub/b", "out2/c", "outside", "out.txt"]:
        root.put(name, b"x")
    root.storage.delete_prefix(root.at("out/"))
    assert root.names() == ["out.txt", "out2/c", "outside"]


def test_delete_prefix_without_slash_deletes_the_directory_not_its_siblings(root: Root) -> None:
    for name in ["out/a", "out2/c", "outside"]:
        root.put(name, b"x")
    root.storage.delete_prefix(root.at("out"))
    assert root.names() == ["out2/c", "outside"]


def test_delete_prefix_of_one_object(root: Root) -> None:
    url = root.put("one", b"x")
    root.put("one2", b"x")
    root.storage.delete_prefix(url)
    assert root.names() == ["one2"]


def test_delete_prefix_of_nothing_is_fine(root: Root) -> None:
    root.storage.delete_prefix(root.at("nothing/"))
    root.storage.delete_prefix(root.at("nothing"))
    root.storage.delete_prefix(root.url)


def test_delete_prefix_of_many_objects(root: Root) -> None:
    with ThreadPoolExecutor(16) as pool:  # more than one S3 DeleteObjects batch
        list(pool.map(lambda i: root.put(f"many/{i:05d}", b""), range(1100)))
    root.storage.delete_prefix(root.at("many/"))
    with pytest.raises(NotFound):
        root.storage.list(root.url)


# streaming: nothing holds an object whole


def test_large_objects_stream_without_holding_them(root: Root, tmp_path: Path) -> None:
    size = 50 * MB
    local = tmp_path / "big"
    expected = hashlib.sha256()
    with local.open("wb") as out:
        block = bytes(range(256)) * 4096  # 1 MiB
        for i in range(size // len(block)):
            chunk = block[i % 256 :] + block[: i % 256]
            out.write(chunk)
            expected.update(chunk)
    url = root.at("big/input")
    copy_url = root.at("big/copy")

    root.storage.exists(url)  # build the client (and load its API model) before measuring
    tracemalloc.start()
    try:
        root.storage.put_file(str(local), url)
        assert root.storage.stat(url).size == size
        root.storage.copy(url, copy_url)
        assert [info.size for info in root.storage.list(root.at("big/"))] == [size, size]
        got = hashlib.sha256()
        total = 0
        with root.storage.open_read(copy_url) as stream:
            while chunk := stream.read(256 * 1024):
                got.update(chunk)
                total += len(chunk)
        with root.storage.open_read(url, size - 10 * MB, size - MB) as stream:
            while chunk := stream.read(256 * 1024):
                total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size + 9 * MB
    assert got.hexdigest() == expected.hexdigest()
    # S3 uploads keep a few buffers per part in flight (about 2 MiB each, 4 parts at a
    # time): bounded by the transfer's concurrency, never by the object's size.
    assert peak < 16 * MB, f"peak Python allocation {peak / MB:.1f} MiB for a 50 MiB object"
