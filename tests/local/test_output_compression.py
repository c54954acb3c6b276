"""Compressed results (spec.outputCompression): `kubemr run` writes part-r-00000.gz or .zst
whose contents are the uncompressed run's, byte for byte, the same bytes again on a rerun,
for reduce and map-only jobs, on a local disk and on S3, in wrapper and sidecar mode; and
`kubemr results --cat` prints them decompressed. Real `kubemr run` processes and shell
commands; S3 is a real S3 server on 127.0.0.1."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest
import zstandard
from conftest import Kubemr

MAP = "tr -cs 'A-Za-z' '\\n' | awk 'NF { print $0 \"\\t1\" }'"
REDUCE = (
    "awk -F '\\t' '$1 != w { if (NR > 1) print w \"\\t\" s; w = $1; s = 0 } { s += $2 } "
    'END { if (NR) print w "\\t" s }\''
)
SUFFIX = {"none": "", "gzip": ".gz", "zstd": ".zst"}


def decompress(name: str, data: bytes) -> bytes:
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(data)
    return data


def corpus(kubemr: Kubemr) -> Path:
    root = kubemr.tmp / "in"
    root.mkdir(exist_ok=True)

    def word(n: int) -> str:  # letters only: the map keeps nothing else
        return "w" + "".join(chr(ord("a") + int(d)) for d in str(n))

    for i in range(4):
        words = " ".join(word((i * 31 + j * 7) % 997) for j in range(3000))
        (root / f"f{i}.txt").write_text(words + "\n")
    return root


def run(kubemr: Kubemr, name: str, output: str, **spec: Any) -> dict[str, bytes]:
    """`kubemr run` of the word count into `output`; {part name: its stored bytes}."""
    base = {"inputs": [str(corpus(kubemr))], "map": MAP, "splitSize": "8Ki", "output": output}
    job = kubemr.job(name, **{**base, **spec})
    done = kubemr("run", str(job), "-w", "2", "-q")
    assert done.returncode == 0, done.stderr
    listed = kubemr("results", name)
    assert listed.returncode == 0, listed.stderr
    urls = listed.stdout.split()
    if output.startswith("s3://"):
        import os

        import boto3

        client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])

        def fetch(url: str) -> bytes:
            bucket, _, key = url.removeprefix("s3://").partition("/")
            body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            return body

        return {url.rsplit("/", 1)[1]: fetch(url) for url in urls}
    return {url.rsplit("/", 1)[1]: Path(url.removeprefix("file://")).read_bytes() for url in urls}


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
@pytest.mark.parametrize("mode", ["wrapper", "sidecar"])
def test_compressed_results_hold_the_plain_results(kubemr: Kubemr, codec: str, mode: str) -> None:
    spec = {"reduce": REDUCE, "partitions": 3, "mode": mode}
    plain = run(kubemr, "plain", str(kubemr.tmp / "plain"), **spec)
    packed = run(kubemr, "packed", str(kubemr.tmp / "packed"), outputCompression=codec, **spec)
    suffix = SUFFIX[codec]
    assert sorted(packed) == [f"part-r-0000{p}{suffix}" for p in range(3)]
    assert {k.removesuffix(suffix): decompress(k, v) for k, v in packed.items()} == plain
    assert all(packed.values()) and sum(map(len, plain.values())) > 5_000
    cat = kubemr("results", "packed", "--cat")
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout.encode() == b"".join(plain[k] for k in sorted(plain))
    again = run(kubemr, "again", str(kubemr.tmp / "again"), outputCompression=codec, **spec)
    assert again == packed  # the same bytes: nothing in them depends on the run


def test_a_map_only_job_and_an_early_stopping_reduce_write_compressed_results(
    kubemr: Kubemr,
) -> None:
    mapped = run(kubemr, "maponly", str(kubemr.tmp / "m"), outputCompression="gzip")
    plain = run(kubemr, "maponly-plain", str(kubemr.tmp / "mp"))
    assert sorted(mapped) == [f"{k}.gz" for k in sorted(plain)]
    assert {k.removesuffix(".gz"): gzip.decompress(v) for k, v in mapped.items()} == plain
    first = run(
        kubemr,
        "head",
        str(kubemr.tmp / "h"),
        reduce="head -n 1",
        partitions=2,
        outputCompression="zstd",
    )
    lines = [decompress(k, v) for k, v in sorted(first.items())]
    assert [len(x.splitlines()) for x in lines] == [1, 1]


@pytest.mark.s3
def test_compressed_results_on_s3(kubemr: Kubemr, s3_env: str) -> None:
    spec = {"reduce": REDUCE, "partitions": 2}
    plain = run(kubemr, "plain", f"{s3_env}plain/", **spec)
    packed = run(kubemr, "packed", f"{s3_env}packed/", outputCompression="gzip", **spec)
    assert {k.removesuffix(".gz"): gzip.decompress(v) for k, v in packed.items()} == plain


def test_an_unknown_codec_is_refused_before_anything_runs(kubemr: Kubemr) -> None:
    job = kubemr.job("bad", inputs=["opaque:x"], map="cat", outputCompression="lz4")
    done = kubemr("run", str(job))
    assert done.returncode == 2
    assert "spec.outputCompression must be 'none'" in done.stderr and "'lz4'" in done.stderr
    assert "Traceback" not in done.stderr
