"""The shuffle as workers store it: one object per map attempt on S3, files on a local disk,
compressed or not, with results byte-identical to a plain local run every way.

S3 is a real S3 server on 127.0.0.1 (moto's server mode, or AWS_ENDPOINT_URL's); the workers
are `kubemr shim` processes sharing a SQLite job document, as pods share the MapReduceJob.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import Kubemr, run_as_pods, sh

from kubemr import shuffle

MAP_SH = "tr -cs 'A-Za-z' '\\n' | awk 'NF { print $0 \"\\t1\" }'"
REDUCE_SH = (
    "awk -F '\\t' '$1 != w { if (NR > 1) print w \"\\t\" s; w = $1; s = 0 } { s += $2 } "
    'END { if (NR) print w "\\t" s }\''
)


def corpus(root: Path, files: int = 6) -> list[Path]:
    root.mkdir(exist_ok=True)
    words = sh("ls /usr/bin | head -n 400").split()
    paths = []
    for i in range(files):
        path = root / f"in-{i}.txt"
        path.write_bytes(b"\n".join(words[i * 7 :] + words[: i * 7]) * 20)
        paths.append(path)
    return paths


def job_spec(inputs: list[str], output: str, **extra: Any) -> dict[str, Any]:
    spec = {
        "inputs": inputs,
        "map": MAP_SH,
        "reduce": REDUCE_SH,
        "partitions": 3,
        "splitSize": "8Ki",
        "output": output,
        "keepIntermediate": True,
        **extra,
    }
    return {
        "apiVersion": "kubemr.io/v1alpha1",
        "kind": "MapReduceJob",
        "metadata": {"name": "sh"},
        "spec": spec,
    }


def reference(kubemr: Kubemr, name: str, inputs: list[Path], **extra: Any) -> dict[str, bytes]:
    """The results of `kubemr run` (run `name`), with intermediate data on the local disk."""
    out = kubemr.tmp / f"out-{name}"
    job = kubemr.job(name, **job_spec([str(p) for p in inputs], str(out), **extra)["spec"])
    proc = kubemr("run", str(job), "-w", "2")
    assert proc.returncode == 0, proc.stderr
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*"))}


def objects(prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket, _, key = prefix.removeprefix("s3://").partition("/")
    found: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[item["Key"][len(key) :]] = body
    return found


@pytest.mark.s3
@pytest.mark.parametrize("compression", ["auto", "none"])
def test_on_s3_each_map_attempt_stores_one_indexed_object(
    kubemr: Kubemr, s3_env: str, compression: str
) -> None:
    inputs = corpus(kubemr.tmp / "in")
    expected = reference(kubemr, "ref", inputs)
    doc = job_spec([str(p) for p in inputs], f"{s3_env}out/", mapOutputCompression=compression)
    final = run_as_pods(kubemr, doc)
    stored = objects(f"{s3_env}out/")
    assert {k: v for k, v in stored.items() if k.startswith("part-")} == expected
    maps = int(final["status"]["map"]["n"])
    assert maps >= 4  # several splits, so several map outputs to merge
    data = sorted(k for k in stored if "/data/map-" in k)
    assert len(data) == maps and all(k.endswith("/a1/map.out") for k in data), data
    codec = "zstd" if compression == "auto" else "none"
    for key in data:
        index = shuffle.Index.decode(stored[key], 3, key)
        assert index.codec == codec
        assert sum(index.sizes) > 0 and index.ends[-1] == len(stored[key])
        if codec == "none":
            # Segment p is partition p's sorted lines, as they are.
            start, end = index.segment(1)
            lines = stored[key][start:end].splitlines()
            assert lines == sorted(lines) and end - start == index.sizes[1]


def test_on_a_local_disk_compressed_runs_give_the_same_results(kubemr: Kubemr) -> None:
    inputs = corpus(kubemr.tmp / "in")
    plain = reference(kubemr, "plain", inputs)
    packed = reference(kubemr, "packed", inputs, mapOutputCompression="zstd")
    assert packed == plain
    for name, suffix in (("plain", ""), ("packed", ".zst")):
        runs = sorted((kubemr.run_dir(name) / "work" / "data").glob("map-*/a*/*"))
        assert {p.name for p in runs} == {f"part-0000{i}{suffix}" for i in range(3)}
        if suffix:  # zstd frames, each
            assert all(p.read_bytes()[:4] == b"\x28\xb5\x2f\xfd" for p in runs)


@pytest.mark.s3
def test_on_s3_a_map_output_with_bytes_below_the_separator_is_sorted_by_key(
    kubemr: Kubemr, s3_env: str
) -> None:
    """A line holding a byte below the tab makes a map task sort its spilled partitions
    again by key (see partition.whole_lines_suffice): the results match a local run's."""
    lines = [b"a\t1", b"a\x01x\t5", b"a", b"b\x02\t7", b"a b\t0", b"c\tz", b"a\t0"] * 40
    (kubemr.tmp / "in").mkdir()
    data = kubemr.tmp / "in" / "low.txt"
    data.write_bytes(b"".join(line + b"\n" for line in lines))
    spec = job_spec([str(data)], "", map="cat", reduce="cat", splitSize="1Ki")["spec"]
    expected = reference(kubemr, "lowref", [data], map="cat", reduce="cat", splitSize="1Ki")
    spec["output"] = f"{s3_env}out/"
    run_as_pods(
        kubemr,
        {
            "apiVersion": "kubemr.io/v1alpha1",
            "kind": "MapReduceJob",
            "metadata": {"name": "low"},
            "spec": spec,
        },
    )
    stored = objects(f"{s3_env}out/")
    assert {k: v for k, v in stored.items() if k.startswith("part-")} == expected
    assert sum(v.count(b"\n") for k, v in expected.items()) == len(lines)


def test_on_a_local_disk_empty_compressed_runs_are_empty_files(kubemr: Kubemr) -> None:
    """With more partitions than keys, most runs are empty: compressed, they are empty files
    (no zstd frame to read), which reduce tasks skip; the results are the uncompressed ones."""
    (kubemr.tmp / "in").mkdir()
    inputs = [kubemr.tmp / "in" / f"f{i}.txt" for i in range(2)]
    for i, path in enumerate(inputs):
        path.write_text(f"alpha beta gamma{i}\n" * 50)
    plain = reference(kubemr, "plain", inputs, partitions=40)
    packed = reference(kubemr, "packed", inputs, partitions=40, mapOutputCompression="zstd")
    assert packed == plain
    runs = sorted((kubemr.run_dir("packed") / "work" / "data").glob("map-*/a*/part-*.zst"))
    empty = [p for p in runs if p.stat().st_size == 0]
    assert empty and len(empty) < len(runs)
    assert all(p.read_bytes()[:4] == b"\x28\xb5\x2f\xfd" for p in runs if p not in empty)
