"""Hadoop Streaming's own documented examples, run on its LocalJobRunner and with kubemr.

    .venv/bin/python bench/hadoop_parity.py [--lines 20000]

Each example of the Hadoop Streaming documentation below runs on Hadoop Streaming 3.4.2
(its jars fetched from Maven Central by bench/wordcount.py into ~/.cache/kubemr-bench the
first time; skipped with one line when Java or Maven is missing) and as `kubemr run` with
the fields that stand for its `-D` options, on the same generated input, and the results
are compared as far as the two may agree:

- KeyFieldBasedPartitioner (`-D mapreduce.partition.keypartitioner.options=-k1,2` with
  4 key fields and `.` as separator; kubemr: `keyFields: 4`, `partitionFields: 2`): every
  partition key in one output part, and each partition key's lines in the same order.
  Which part a key lands in differs (Hadoop hashes with Java's hashCode, kubemr with
  CRC-32).
- KeyFieldBasedComparator (`-D mapreduce.partition.keycomparator.options=-k2,2nr`;
  kubemr: `keyComparator: -k2,2nr`): the same sequence of keys. Hadoop orders lines whose
  keys compare equal as its sort leaves them; kubemr by the whole line.
- NLineInputFormat (`-D mapreduce.input.lineinputformat.linespermap=N`; kubemr:
  `linesPerMap: N`): as many map tasks, each with N lines (Hadoop hands the mapper
  `offset<TAB>line`, kubemr the line: the mapper counts lines).
- Compressed output (`-D mapreduce.output.fileoutputformat.compress=true` with GzipCodec;
  kubemr: `outputCompression: gzip`): the same counts once decompressed.

Hadoop's text output writes `key<TAB>value`, where the key is the line up to the 4th
separator: lines are compared with that tab put back as the separator and a trailing tab
dropped. Prints one line per example, and exits 1 if one differs.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wordcount import hadoop_lib

Lines = list[bytes]


def hadoop(lib: Path, work: Path, name: str, args: list[str], **settings: Any) -> list[Lines]:
    """Hadoop Streaming on its LocalJobRunner; the lines of each output part, in order."""
    out = work / f"hadoop-{name}"
    base = {
        "mapreduce.framework.name": "local",
        "fs.defaultFS": "file:///",
        "hadoop.tmp.dir": str(work / "hadoop-tmp"),
        **settings,
    }
    argv = ["java", "-cp", f"{lib}/*", "org.apache.hadoop.streaming.HadoopStreaming"]
    for key, value in base.items():
        argv += ["-D", f"{key}={value}"]
    argv += [*args, "-output", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"Hadoop ({name}) failed:\n{done.stderr[-3000:]}")
    return [read(p) for p in sorted(out.glob("part-*"))]


def kubemr(work: Path, name: str, **spec: Any) -> list[Lines]:
    """`kubemr run` of a manifest with `spec`; the lines of each result, in order."""
    out = work / f"kubemr-{name}"
    doc = {
        "apiVersion": "kubemr.io/v1alpha1",
        "kind": "MapReduceJob",
        "metadata": {"name": name},
        "spec": {**spec, "output": str(out)},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "KUBEMR_HOME": str(work / "kubemr-home")}
    argv = [sys.executable, "-m", "kubemr", "run", str(path), "-q", "--run-dir", str(work / name)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"kubemr ({name}) failed:\n{done.stderr[-3000:]}")
    return [read(p) for p in sorted(out.glob("part-*"))]


def read(path: Path) -> Lines:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.splitlines()


def as_lines(lines: Lines, sep: bytes) -> Lines:
    """Hadoop's `key<TAB>value` back to the line it came from."""
    return [line.rstrip(b"\t").replace(b"\t", sep, 1) for line in lines]


def field(line: bytes, sep: bytes, n: int) -> bytes:
    return b"".join(line.split(sep)[:n]) if n else line


def keyed_lines(records: int, rng: random.Random) -> bytes:
    """Lines of four `.`-separated numeric fields (the documentation's example), and more."""
    lines = [b"11.12.1.2", b"11.14.2.3", b"11.11.4.1", b"11.12.1.1", b"11.14.2.2"]
    for _ in range(records):
        lines.append(b".".join(str(rng.randrange(1, 40)).encode() for _ in range(4)))
    return b"".join(x + b"\n" for x in lines)


def secondary_sort(lib: Path, work: Path, data: Path) -> str:
    sep = b"."
    ours = kubemr(
        work, "partitioner", inputs=[str(data)], map="cat", reduce="cat", separator=".",
        keyFields=4, partitionFields=2, partitions=12,
    )  # fmt: skip
    theirs = hadoop(
        lib, work, "partitioner",
        ["-input", str(data), "-mapper", "cat", "-reducer", "cat", "-partitioner",
         "org.apache.hadoop.mapred.lib.KeyFieldBasedPartitioner"],
        **{"stream.map.output.field.separator": ".", "stream.num.map.output.key.fields": 4,
           "map.output.key.field.separator": ".",
           "mapreduce.partition.keypartitioner.options": "-k1,2", "mapreduce.job.reduces": 12},
    )  # fmt: skip
    theirs = [as_lines(part, sep) for part in theirs]

    def by_key(parts: list[Lines]) -> dict[bytes, tuple[int, Lines]]:
        found: dict[bytes, tuple[int, Lines]] = {}
        for i, part in enumerate(parts):
            for line in part:
                k = b".".join(line.split(sep)[:2])
                where, seen = found.setdefault(k, (i, []))
                assert where == i, f"partition key {k!r} in parts {where} and {i}"
                seen.append(line)
        return found

    a, b = by_key(ours), by_key(theirs)
    same = {k: v[1] for k, v in a.items()} == {k: v[1] for k, v in b.items()}
    keys = len(a)
    return f"{'same' if same else 'DIFFERENT'}: {keys} partition keys, each in one part, in order"


def comparator(lib: Path, work: Path, data: Path) -> str:
    sep = b"."
    ours = kubemr(
        work, "comparator", inputs=[str(data)], map="cat", reduce="cat", separator=".",
        keyFields=4, keyComparator="-k2,2nr", partitions=1,
    )  # fmt: skip
    theirs = hadoop(
        lib, work, "comparator",
        ["-input", str(data), "-mapper", "cat", "-reducer", "cat"],
        **{"mapreduce.job.output.key.comparator.class":
           "org.apache.hadoop.mapreduce.lib.partition.KeyFieldBasedComparator",
           "stream.map.output.field.separator": ".", "stream.num.map.output.key.fields": 4,
           "mapreduce.map.output.key.field.separator": ".",
           "mapreduce.partition.keycomparator.options": "-k2,2nr", "mapreduce.job.reduces": 1},
    )  # fmt: skip
    mine, their = ours[0], as_lines(theirs[0], sep)
    order = [line.split(sep)[1] for line in mine] == [line.split(sep)[1] for line in their]
    same = order and sorted(mine) == sorted(their)
    return f"{'same' if same else 'DIFFERENT'}: {len(mine)} lines, field 2 high to low"


def nlines(lib: Path, work: Path, data: Path, n: int) -> str:
    ours = kubemr(work, "nline", inputs=[str(data)], map="wc -l", linesPerMap=n)
    theirs = hadoop(
        lib, work, "nline",
        ["-input", str(data), "-mapper", "wc -l", "-inputformat",
         "org.apache.hadoop.mapred.lib.NLineInputFormat"],
        **{"mapreduce.input.lineinputformat.linespermap": n, "mapreduce.job.reduces": 0},
    )  # fmt: skip

    def counts(parts: list[Lines]) -> list[int]:
        return sorted(int(line.strip()) for part in parts for line in part if line.strip())

    same = counts(ours) == counts(theirs)
    return f"{'same' if same else 'DIFFERENT'}: {len(counts(ours))} map tasks of {n} lines"


def gzip_output(lib: Path, work: Path, text: Path) -> str:
    mapper = "tr -cs 'A-Za-z' '\\n' | awk 'NF { print $0 \"\\t1\" }'"
    reducer = "awk -F '\\t' '{ s[$1] += $2 } END { for (k in s) print k \"\\t\" s[k] }'"
    (work / "map.sh").write_text(mapper + "\n")
    (work / "reduce.sh").write_text(reducer + "\n")
    ours = kubemr(
        work, "gzip", inputs=[str(text)], map=mapper, reduce=reducer, partitions=2,
        outputCompression="gzip",
    )  # fmt: skip
    theirs = hadoop(
        lib, work, "gzip",
        ["-input", str(text), "-mapper", f"sh {work / 'map.sh'}",
         "-reducer", f"sh {work / 'reduce.sh'}"],
        **{"mapreduce.output.fileoutputformat.compress": "true",
           "mapreduce.output.fileoutputformat.compress.codec":
           "org.apache.hadoop.io.compress.GzipCodec", "mapreduce.job.reduces": 2},
    )  # fmt: skip

    def flat(parts: list[Lines]) -> Lines:
        return sorted(line.rstrip(b"\t") for part in parts for line in part)

    same = flat(ours) == flat(theirs)
    return f"{'same' if same else 'DIFFERENT'}: {len(flat(ours))} counts from .gz parts"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20000, help="generated lines (20000)")
    args = parser.parse_args()
    lib = hadoop_lib()
    if lib is None:
        return 0
    work = Path(tempfile.mkdtemp(prefix="kubemr-hadoop-parity-"))
    try:
        rng = random.Random(1)
        data = work / "keys.txt"
        data.write_bytes(keyed_lines(args.lines, rng))
        text = work / "text.txt"
        words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
        text.write_text("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(args.lines)))
        examples: list[tuple[str, Callable[[], str]]] = [
            ("KeyFieldBasedPartitioner -k1,2", lambda: secondary_sort(lib, work, data)),
            ("KeyFieldBasedComparator -k2,2nr", lambda: comparator(lib, work, data)),
            ("NLineInputFormat linespermap=1000", lambda: nlines(lib, work, data, 1000)),
            ("GzipCodec output", lambda: gzip_output(lib, work, text)),
        ]
        failed = False
        for title, run in examples:
            said = run()
            failed |= said.startswith("DIFFERENT")
            print(f"{title}: {said}", flush=True)
        return 1 if failed else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
