"""How a split reaches the map command's stdin: the file itself, sendfile, or streaming.

`kubemr.shim.stdin` must give a map command exactly the bytes
`plan.read_split` defines (lines moved to range boundaries, every segment
ended with a newline), whichever way it delivers them. Checked here against
`read_split` on files with long and short lines, with and without a final
newline, cut at every kind of boundary; and end to end: a whole-file split
is the command's stdin as a regular file, a part of a file comes through a
pipe, and both give the same results.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest
from conftest import Kubemr, results

from kubemr.plan import Segment, Split, cut, read_split
from kubemr.shim.attempt import Failure
from kubemr.shim.stdin import file_range, local_ranges, open_whole, send_ranges
from kubemr.storage import storage_for
from kubemr.storage.base import ObjectInfo


def read_ranges(split: Split) -> bytes:
    ranges = local_ranges(split, storage_for)
    assert ranges is not None
    r, w = os.pipe()
    failure = Failure()
    with os.fdopen(w, "wb") as sink, os.fdopen(r, "rb") as source:
        thread = threading.Thread(target=send_ranges, args=(ranges, sink, failure))
        thread.start()
        data = source.read()
        thread.join()
    failure.raise_if_any()
    return data


def sample_file(path: Path, seed: int, final_newline: bool, big: bool) -> Path:
    rng = random.Random(seed)
    lines = [b"x" * rng.choice([0, 1, 5, 40, 300, 70000 if big else 3]) for _ in range(30)]
    path.write_bytes(b"\n".join(lines) + (b"\n" if final_newline else b""))
    return path


@pytest.mark.parametrize("final_newline", [True, False])
@pytest.mark.parametrize("split_size", [7, 100, 4096, 65536, 1 << 30])
def test_ranges_give_what_read_split_gives(
    tmp_path: Path, final_newline: bool, split_size: int
) -> None:
    files = [sample_file(tmp_path / f"f{i}", i, final_newline, split_size > 999) for i in range(3)]
    items: list[ObjectInfo | str] = [ObjectInfo(f"file://{p}", p.stat().st_size) for p in files]
    splits = cut(items, split_size)
    assert splits
    whole = b""
    for split in splits:
        expected = b"".join(read_split(split, storage_for))
        assert read_ranges(split) == expected
        whole += expected
    assert whole.count(b"\n") == sum(p.read_bytes().count(b"\n") for p in files) + (
        0 if final_newline else len(files)
    )


def test_range_ends(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"ab\ncd\nef")
    assert file_range(str(path), 0, 2) == file_range(str(path), 0, 3)
    assert (file_range(str(path), 0, 2).start, file_range(str(path), 0, 2).end) == (0, 3)
    r = file_range(str(path), 3, 8)
    assert (r.start, r.end, r.newline) == (3, 8, True)
    r = file_range(str(path), 4, 5)
    assert (r.start, r.end) == (6, 6)


def test_whole_file_split_is_an_open_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one\ntwo\nthree\n")
    split = Split(segments=(Segment(f"file://{path}", 4, path.stat().st_size),))
    ranges = local_ranges(split, storage_for)
    assert ranges is not None
    fd = open_whole(ranges)
    assert fd is not None
    with os.fdopen(fd, "rb") as f:
        assert f.read() == b"two\nthree\n"
    # No final newline, several segments, or a range short of the end: a pipe.
    path.write_bytes(b"one\ntwo")
    split = Split(segments=(Segment(f"file://{path}", 0, 7),))
    assert open_whole(local_ranges(split, storage_for) or []) is None


MAP = 'if [ -p /dev/stdin ]; then echo "pipe\t1"; else echo "file\t1"; fi; cat'


def test_map_reads_the_input_file_itself_when_the_split_is_whole(kubemr: Kubemr) -> None:
    data = kubemr.tmp / "in.txt"
    data.write_bytes(b"".join(b"k%d\tv\n" % i for i in range(2000)))
    job = kubemr.job("whole", inputs=[str(data)], map=MAP, reduce="cat", splitSize="1Gi")
    done = kubemr("run", str(job), "-w", "1", "-q", "-o", str(kubemr.tmp / "o1"))
    assert done.returncode == 0, done.stderr
    out = results(kubemr.tmp / "o1")
    assert b"file\t1\n" in out and b"pipe" not in out
    # Cut into parts, the middle ones come through a pipe; the lines are the same.
    job = kubemr.job("parts", inputs=[str(data)], map=MAP, reduce="cat", splitSize="4Ki")
    done = kubemr("run", str(job), "-w", "2", "-q", "-o", str(kubemr.tmp / "o2"))
    assert done.returncode == 0, done.stderr
    parts = results(kubemr.tmp / "o2")
    assert b"pipe\t1\n" in parts
    data_lines = sorted(data.read_bytes().splitlines())
    strip = [line for line in parts.splitlines() if not line.startswith((b"pipe", b"file"))]
    assert sorted(strip) == data_lines
    assert sorted(line for line in out.splitlines() if line != b"file\t1") == data_lines


def test_a_command_that_stops_reading_early_is_not_an_error(kubemr: Kubemr) -> None:
    data = kubemr.tmp / "big.txt"
    data.write_bytes(b"line\n" * 400000)
    job = kubemr.job("head", inputs=[str(data)], map="head -n 1", splitSize="1Mi")
    done = kubemr("run", str(job), "-w", "2", "-q", "-o", str(kubemr.tmp / "o"))
    assert done.returncode == 0, done.stderr
    assert results(kubemr.tmp / "o").count(b"line\n") == 2
