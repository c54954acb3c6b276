"""Planning: inputs -> splits, and reading a split back as whole lines.

Covers `kubemr.plan`: `classify`, `list_inputs` (with a lister function,
the interface planning takes), `cut` (packing small objects, cutting large
ones, compressed and opaque inputs, empty files), the split JSON and plan
documents, and `read_split`. The key property: however a file is cut, reading
every split and concatenating gives back exactly the file's lines, each once,
in order.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import json
import lzma
from collections.abc import Callable
from typing import BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubemr.errors import InputError, NotFound, StorageError, TemporaryStorageError
from kubemr.plan import (
    Segment,
    Split,
    classify,
    cut,
    dump_plan,
    list_inputs,
    load_plan,
    plan_splits,
    read_split,
)
from kubemr.storage.base import ObjectInfo, Storage


class Trickle(io.BytesIO):
    """A byte stream that hands out at most `step` bytes per read, as a network stream may."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self.step = step

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0 or size > self.step:
            size = self.step
        return super().read(size)


class MemoryStorage(Storage):
    """Objects held in a dict; stands in for file:// or s3:// storage at kubemr's own
    `Storage` interface, so split reading is tested without disk or network."""

    def __init__(self, objects: dict[str, bytes] | None = None, step: int = 1 << 20) -> None:
        self.objects = dict(objects or {})
        self.step = step
        self.reads: list[tuple[str, int, int | None]] = []

    def stat(self, url: str) -> ObjectInfo:
        if url not in self.objects:
            raise NotFound(f"{url} does not exist")
        return ObjectInfo(url, len(self.objects[url]))

    def list(self, url: str) -> list[ObjectInfo]:
        if url in self.objects:
            return [self.stat(url)]
        root = url if url.endswith("/") else url + "/"
        found = [self.stat(u) for u in sorted(self.objects) if u.startswith(root)]
        if not found:
            raise NotFound(f"nothing under {url}")
        return found

    def open_read(self, url: str, start: int = 0, end: int | None = None) -> BinaryIO:
        self.reads.append((url, start, end))
        data = self.objects[url]
        return Trickle(data[start:end], self.step)

    def put_file(self, path: str, url: str) -> None:
        with open(path, "rb") as f:
            self.objects[url] = f.read()

    def put_bytes(self, data: bytes, url: str) -> None:
        self.objects[url] = data

    def get_bytes(self, url: str) -> bytes:
        if url not in self.objects:
            raise NotFound(f"{url} does not exist")
        return self.objects[url]

    def copy(self, src: str, dst: str) -> None:
        self.objects[dst] = self.objects[src]

    def exists(self, url: str) -> bool:
        return url in self.objects

    def delete_prefix(self, url: str) -> None:
        for key in [u for u in self.objects if u.startswith(url)]:
            del self.objects[key]


def read_all(split: Split, storage: Storage) -> bytes:
    return b"".join(read_split(split, lambda url: storage))


def _split_nl(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    return parts


def with_final_newline(data: bytes) -> bytes:
    return data if not data or data.endswith(b"\n") else data + b"\n"


# classify


@pytest.mark.parametrize(
    ("item", "url"),
    [
        ("s3://bucket/prefix/", "s3://bucket/prefix/"),
        ("S3://bucket/key", "S3://bucket/key"),
        ("file:///data/x", "file:///data/x"),
        ("http://example.org/a.txt", "http://example.org/a.txt"),
        ("https://example.org/a.txt", "https://example.org/a.txt"),
        ("/data/in/", "file:///data/in/"),
        ("/x", "file:///x"),
        ("opaque:customers-shard-17", None),
        ("opaque:", None),
        ("opaque:/looks/like/a/path", None),
    ],
)
def test_classify(item: str, url: str | None) -> None:
    assert classify(item) == url


def test_classify_refuses_an_unknown_scheme() -> None:
    with pytest.raises(InputError, match="unknown scheme gs://"):
        classify("gs://bucket/x")


@pytest.mark.parametrize("item", ["customers-shard-17", "relative/path.txt", "user@host:/x", ""])
def test_classify_refuses_a_relative_path_naming_the_opaque_rule(item: str) -> None:
    # Only `kubemr run` resolves relative paths; anything else must not guess that a string
    # which is not a URL is meant as-is (a mistyped path would run and map its own name).
    with pytest.raises(InputError, match=f"relative path.*opaque:{item} to hand"):
        classify(item)


# list_inputs


def lister_of(tree: dict[str, list[ObjectInfo]]) -> Callable[[str], list[ObjectInfo]]:
    """A lister answering from a fixed table; unknown URLs do not exist."""

    def lister(url: str) -> list[ObjectInfo]:
        if url not in tree:
            raise NotFound(f"{url} does not exist")
        return tree[url]

    return lister


def test_list_inputs_keeps_order_and_opaque_strings() -> None:
    a = ObjectInfo("s3://b/a.txt", 3)
    d1, d2 = ObjectInfo("file:///d/1", 1), ObjectInfo("file:///d/2", 2)
    lister = lister_of({"s3://b/a.txt": [a], "file:///d/": [d1, d2]})
    assert list_inputs(("opaque:shard-1", "s3://b/a.txt", "/d/", "opaque:shard-2"), lister) == [
        "shard-1",
        a,
        d1,
        d2,
        "shard-2",
    ]


def test_list_inputs_skips_hidden_names_under_a_prefix() -> None:
    root = "s3://b/_in/"
    names = [
        "a.txt",
        "_SUCCESS",
        ".crc",
        "_kubemr/uid/data/map-0/a1/part-00000",
        "sub/b.txt",
        "sub/.hidden",
        "sub/_tmp/c.txt",
        "x_y.txt",
    ]
    found = [ObjectInfo(root + n, 1) for n in names]
    got = list_inputs((root,), lister_of({root: found}))
    # The `_in` above the prefix is the user's own choice and does not hide anything.
    assert [o.url for o in got if isinstance(o, ObjectInfo)] == [
        root + "a.txt",
        root + "sub/b.txt",
        root + "x_y.txt",
    ]


def test_list_inputs_prefix_without_slash() -> None:
    found = [ObjectInfo("s3://b/dir/_SUCCESS", 0), ObjectInfo("s3://b/dir/part-0", 4)]
    got = list_inputs(("s3://b/dir",), lister_of({"s3://b/dir": found}))
    assert got == [ObjectInfo("s3://b/dir/part-0", 4)]


def test_list_inputs_keeps_a_hidden_object_named_directly() -> None:
    obj = ObjectInfo("file:///data/_special", 5)
    assert list_inputs(("/data/_special",), lister_of({"file:///data/_special": [obj]})) == [obj]


def test_list_inputs_with_only_hidden_objects_is_an_error() -> None:
    found = [ObjectInfo("file:///out/_SUCCESS", 0), ObjectInfo("file:///out/.x", 1)]
    with pytest.raises(InputError, match=r"input /out/ holds no data files"):
        list_inputs(("/out/",), lister_of({"file:///out/": found}))


def test_list_inputs_missing_input_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"input s3://b/nope does not exist") as info:
        list_inputs(("s3://b/nope",), lister_of({}))
    assert isinstance(info.value.__cause__, NotFound)


def test_list_inputs_storage_failure_is_an_input_error() -> None:
    def lister(url: str) -> list[ObjectInfo]:
        raise StorageError("access denied to s3://b/x")

    with pytest.raises(InputError, match=r"input s3://b/x cannot be listed: access denied"):
        list_inputs(("s3://b/x",), lister)


def test_list_inputs_lists_nothing_for_opaque_inputs() -> None:
    def lister(url: str) -> list[ObjectInfo]:
        raise AssertionError(f"listed {url}")

    assert list_inputs(("opaque:a", "opaque:b c", "opaque:"), lister) == ["a", "b c", ""]


# cut


def obj(name: str, size: int) -> ObjectInfo:
    return ObjectInfo(f"s3://b/{name}", size)


def seg(name: str, start: int, end: int | None) -> Segment:
    return Segment(f"s3://b/{name}", start, end)


def test_cut_packs_small_objects() -> None:
    splits = cut([obj("a", 10), obj("b", 15), obj("c", 10)], 25)
    assert splits == [
        Split(segments=(seg("a", 0, 10), seg("b", 0, 15))),
        Split(segments=(seg("c", 0, 10),)),
    ]


def test_cut_cuts_large_objects_into_equal_ranges() -> None:
    splits = cut([obj("big", 100)], 30)
    assert splits == [Split(segments=(seg("big", s, s + 25),)) for s in (0, 25, 50, 75)]


def test_cut_large_object_ends_the_pack_around_it() -> None:
    splits = cut([obj("a", 5), obj("big", 61), obj("b", 5)], 30)
    assert splits[0] == Split(segments=(seg("a", 0, 5),))
    assert [s.segments[0] for s in splits[1:-1]] == [
        seg("big", 0, 21),
        seg("big", 21, 42),
        seg("big", 42, 61),
    ]
    assert splits[-1] == Split(segments=(seg("b", 0, 5),))


def test_cut_object_of_exactly_split_size_is_not_cut() -> None:
    assert cut([obj("a", 30)], 30) == [Split(segments=(seg("a", 0, 30),))]
    assert len(cut([obj("a", 31)], 30)) == 2


def test_cut_never_cuts_compressed_objects() -> None:
    splits = cut([obj("a.gz", 1000), obj("b.gz", 10), obj("c.txt", 10)], 30)
    assert splits == [
        Split(segments=(seg("a.gz", 0, None),)),
        Split(segments=(seg("b.gz", 0, None), seg("c.txt", 0, 10))),
    ]
    assert splits[0].segments[0].compressed and not splits[1].segments[1].compressed


def test_cut_skips_empty_objects() -> None:
    assert cut([obj("empty", 0)], 30) == []
    assert cut([obj("empty", 0), obj("a", 3), obj("e.gz", 0)], 30) == [
        Split(segments=(seg("a", 0, 3),))
    ]


def test_cut_opaque_inputs_are_one_split_each_in_order() -> None:
    splits = cut([obj("a", 5), "shard-1", "shard-2", obj("b", 5)], 30)
    assert splits == [
        Split(segments=(seg("a", 0, 5),)),
        Split(opaque="shard-1"),
        Split(opaque="shard-2"),
        Split(segments=(seg("b", 0, 5),)),
    ]


def test_cut_nothing() -> None:
    assert cut([], 1024) == []


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=0, max_value=500)), min_size=0, max_size=12
    ),
    st.integers(min_value=1, max_value=200),
)
def test_cut_covers_every_byte_once_within_the_size(
    objects: list[tuple[bool, int]], split_size: int
) -> None:
    items: list[ObjectInfo | str] = [
        obj(f"o{i}.gz" if gz else f"o{i}", size) for i, (gz, size) in enumerate(objects)
    ]
    sizes = {o.url: o.size for o in items if isinstance(o, ObjectInfo)}
    covered: dict[str, list[tuple[int, int]]] = {}
    for split in cut(items, split_size):
        assert split.segments and split.opaque is None
        total = 0
        for s in split.segments:
            end = sizes[s.url] if s.end is None else s.end
            assert s.end is None or not s.compressed
            covered.setdefault(s.url, []).append((s.start, end))
            total += end - s.start
        gz_alone = len(split.segments) == 1 and split.segments[0].compressed
        assert total <= split_size or gz_alone
    for url, size in sizes.items():
        ranges = sorted(covered.get(url, []))
        if size == 0:
            assert not ranges
            continue
        assert ranges[0][0] == 0 and ranges[-1][1] == size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_plan_splits_lists_then_cuts() -> None:
    lister = lister_of({"s3://b/in/": [obj("in/a", 40), obj("in/_SUCCESS", 0)]})
    assert plan_splits(("s3://b/in/", "opaque:x"), lister, 25) == [
        Split(segments=(seg("in/a", 0, 20),)),
        Split(segments=(seg("in/a", 20, 40),)),
        Split(opaque="x"),
    ]


# Split JSON and the plan document


SPLITS = [
    Split(opaque="customers-shard-17"),
    Split(segments=(seg("a.txt", 0, 10), seg("b.gz", 0, None))),
    Split(segments=(seg("c", 1 << 33, (1 << 33) + 7),)),
    Split(opaque=""),
]


@pytest.mark.parametrize("split", SPLITS)
def test_split_json_round_trip(split: Split) -> None:
    assert Split.from_json(json.loads(json.dumps(split.to_json()))) == split


def test_dump_and_load_plan() -> None:
    extra = {"map": "cat", "partitions": 3, "inputs": ["s3://b/"]}
    splits, got = load_plan(dump_plan(SPLITS, extra))
    assert splits == SPLITS
    assert got == extra
    assert load_plan(dump_plan([], {})) == ([], {})


def test_split_describe_and_input_env() -> None:
    assert Split(opaque="shard 1").describe() == "'shard 1'"
    assert Split(opaque="shard 1").input_env() == "shard 1"
    assert Split().describe() == "no data"
    whole = Split(segments=(seg("a", 0, 10),))
    assert whole.describe() == "s3://b/a bytes 0-10"
    middle = Split(segments=(seg("a", 10, 20),))
    assert middle.describe() == "s3://b/a bytes 10-20"
    packed = Split(segments=(seg("a", 0, 10), seg("b", 0, 5), seg("a", 0, 1)))
    assert packed.describe() == "s3://b/a and 2 more"
    assert packed.input_env() == "s3://b/a\ns3://b/b"
    assert Split(segments=(seg("z.gz", 0, None),)).describe() == "s3://b/z.gz"


# read_split


def test_read_split_opaque() -> None:
    assert read_all(Split(opaque="shard-1"), MemoryStorage()) == b"shard-1\n"


def test_read_split_packed_objects_never_merge_lines() -> None:
    storage = MemoryStorage({"m://a": b"one\ntwo", "m://b": b"three\n", "m://c": b"four"})
    split = Split(segments=(Segment("m://a", 0, 7), Segment("m://b", 0, 6), Segment("m://c", 0, 4)))
    assert read_all(split, storage) == b"one\ntwo\nthree\nfour\n"


def test_read_split_whole_object_to_its_end() -> None:
    storage = MemoryStorage({"m://a": b"x\ny"})
    assert read_all(Split(segments=(Segment("m://a", 0, None),)), storage) == b"x\ny\n"


@pytest.mark.parametrize(
    ("data", "bounds", "expected"),
    [
        # The line holding byte start-1 belongs to the previous split.
        (b"aa\nbb\ncc\n", [0, 3, 9], [b"aa\n", b"bb\ncc\n"]),
        (b"aa\nbb\ncc\n", [0, 2, 9], [b"aa\n", b"bb\ncc\n"]),
        (b"aa\nbb\ncc\n", [0, 4, 9], [b"aa\nbb\n", b"cc\n"]),
        # A split that holds no line start reads nothing.
        (b"a" * 20 + b"\n", [0, 5, 10, 21], [b"a" * 20 + b"\n", b"", b""]),
        (b"\n\n\n", [0, 1, 2, 3], [b"\n", b"\n", b"\n"]),
        (b"ab", [0, 1, 2], [b"ab\n", b""]),
    ],
)
def test_read_split_line_boundaries(data: bytes, bounds: list[int], expected: list[bytes]) -> None:
    storage = MemoryStorage({"m://f": data})
    got = [
        read_all(Split(segments=(Segment("m://f", a, b),)), storage)
        for a, b in itertools.pairwise(bounds)
    ]
    assert got == expected


lines = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=1, max_size=3).map(lambda b: b * 700),  # very long lines
    st.sampled_from([b"", b"\r", "h\u00e9llo w\u00f6rld".encode(), b"\xff\xfe\x00bad utf-8"]),
).map(lambda b: b.replace(b"\n", b""))


@st.composite
def files(draw: st.DrawFn) -> bytes:
    """File content: lines joined by LF or CRLF, with or without a final newline; or any bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=800))
    body = draw(st.lists(lines, max_size=25))
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = eol.join(body)
    final_eol = draw(st.booleans())
    if body and final_eol:
        data += eol
    return data


@settings(max_examples=200, deadline=None)
@given(files(), st.integers(min_value=1, max_value=4096), st.integers(min_value=5, max_value=97))
def test_reading_every_split_gives_every_line_once_in_order(
    data: bytes, split_size: int, step: int
) -> None:
    url = "m://in/data.txt"
    storage = MemoryStorage({url: data}, step=step)
    split_size = max(split_size, len(data) // 50)  # keep the example quick
    splits = cut([ObjectInfo(url, len(data))], split_size)
    parts = [read_all(split, storage) for split in splits]
    for part in parts:
        assert not part or part.endswith(b"\n"), "a split ends inside a line"
    assert b"".join(parts) == with_final_newline(data)
    assert [line for part in parts for line in _split_nl(part)] == _split_nl(
        with_final_newline(data)
    )


@settings(max_examples=150, deadline=None)
@given(files(), st.lists(st.integers(min_value=0, max_value=10**4)), st.integers(5, 97))
def test_any_byte_ranges_give_every_line_once_in_order(
    data: bytes, cuts: list[int], step: int
) -> None:
    """Not just the ranges `cut` makes: any partition of the file into ranges."""
    url = "m://f"
    storage = MemoryStorage({url: data}, step=step)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts[:50])})
    got = b"".join(
        read_all(Split(segments=(Segment(url, a, b),)), storage)
        for a, b in itertools.pairwise(bounds)
    )
    assert got == with_final_newline(data)


def test_large_ranges_read_only_from_near_their_start() -> None:
    data = b"".join(b"line %06d\n" % i for i in range(100_000))
    storage = MemoryStorage({"m://big": data})
    splits = cut([ObjectInfo("m://big", len(data))], 64 * 1024)
    assert len(splits) > 10
    assert b"".join(read_all(s, storage) for s in splits) == data
    for split, (url, start, _) in zip(splits, storage.reads, strict=True):
        assert url == "m://big" and start == max(split.segments[0].start - 1, 0)


# compressed inputs


def test_read_split_gzip_is_decompressed() -> None:
    plain = b"".join(b"word %d\n" % i for i in range(5000)) + b"no newline"
    storage = MemoryStorage({"m://a.gz": gzip.compress(plain), "m://b": b"tail"}, step=100)
    split = Split(segments=(Segment("m://a.gz", 0, None), Segment("m://b", 0, 4)))
    assert read_all(split, storage) == plain + b"\ntail\n"


def test_read_split_multi_member_gzip() -> None:
    storage = MemoryStorage({"m://a.gz": gzip.compress(b"a\n") + gzip.compress(b"b\n")})
    assert read_all(Split(segments=(Segment("m://a.gz", 0, None),)), storage) == b"a\nb\n"


def test_read_split_empty_gzip() -> None:
    storage = MemoryStorage({"m://a.gz": gzip.compress(b"")})
    assert read_all(Split(segments=(Segment("m://a.gz", 0, None),)), storage) == b""


def corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"this is not gzip\n", id="not-gzip"),
        pytest.param(gzip.compress(b"x" * 10000)[:-20], id="truncated"),
        pytest.param(corrupt(gzip.compress(bytes(range(256)) * 64)), id="corrupt"),
        pytest.param(gzip.compress(b"abc")[:-8] + b"\0" * 8, id="bad-crc"),
    ],
)
def test_read_split_bad_gzip_is_an_input_error(content: bytes) -> None:
    storage = MemoryStorage({"m://in/a.gz": content})
    with pytest.raises(InputError, match=r"input m://in/a\.gz is not a readable gzip file"):
        read_all(Split(segments=(Segment("m://in/a.gz", 0, None),)), storage)


def _zstd(data: bytes) -> bytes:
    import zstandard

    # With a checksum, as the zstd tool writes by default: corruption is then detectable.
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": _zstd,
}
CODEC_NAMES = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}


@pytest.mark.parametrize("ext", sorted(COMPRESSORS))
def test_every_codec_reads_members_one_after_another(ext: str) -> None:
    """Concatenated members or frames read as one stream, as zcat, bzcat, xzcat, zstdcat do."""
    pack = COMPRESSORS[ext]
    big = b"".join(b"line %d\n" % i for i in range(200_000))  # several MiB: many chunks
    url = f"m://in/a{ext}"
    storage = MemoryStorage({url: pack(big) + pack(b"") + pack(b"last, no newline")}, step=4096)
    assert read_all(Split(segments=(Segment(url, 0, None),)), storage) == (
        big + b"last, no newline\n"
    )
    assert cut([ObjectInfo(url, 10**9)], 1024) == [Split(segments=(Segment(url, 0, None),))]


@pytest.mark.parametrize("ext", sorted(COMPRESSORS))
@pytest.mark.parametrize("damage", ["truncated", "not-compressed", "corrupt"])
def test_every_codec_refuses_damaged_data_naming_the_input(ext: str, damage: str) -> None:
    """A truncated file must never pass for a shorter one."""
    packed = COMPRESSORS[ext](bytes(range(256)) * 4096)
    content = {
        "truncated": packed[: len(packed) * 2 // 3],
        "not-compressed": b"plain text, not compressed at all\n" * 10,
        "corrupt": corrupt(packed),
    }[damage]
    url = f"m://in/a{ext}"
    storage = MemoryStorage({url: content})
    with pytest.raises(
        InputError, match=f"input m://in/a\\{ext} is not a readable {CODEC_NAMES[ext]} file"
    ):
        read_all(Split(segments=(Segment(url, 0, None),)), storage)


def test_list_inputs_lets_a_temporary_failure_be_retried() -> None:
    """Storage briefly away while planning is no fault of the input: the planner tries again
    (a permanent InputError here once failed a job over an S3 restart)."""

    def lister(url: str) -> list[ObjectInfo]:
        raise TemporaryStorageError(f"Could not reach S3 to list {url}: connection refused.")

    with pytest.raises(TemporaryStorageError):
        list_inputs(("s3://b/x",), lister)


def test_cut_lines_ends_each_split_after_every_nth_line() -> None:
    import io

    from kubemr.plan import Segment, Split, cut_lines
    from kubemr.storage.base import ObjectInfo

    data = {"file:///a": b"1\n2\n3\n4\n5\n6\n", "file:///b": b"x\ny", "file:///c": b""}

    def open_read(url: str) -> io.BytesIO:
        return io.BytesIO(data[url])

    items: list[ObjectInfo | str] = [ObjectInfo(u, len(d)) for u, d in data.items()]
    assert cut_lines([*items, "opaque"], 3, open_read) == [
        Split(segments=(Segment("file:///a", 0, 6),)),
        Split(segments=(Segment("file:///a", 6, 12),)),
        Split(segments=(Segment("file:///b", 0, 3),)),
        Split(opaque="opaque"),
    ]
    assert [s.segments[0].end for s in cut_lines(items[:1], 1, open_read)] == [2, 4, 6, 8, 10, 12]
