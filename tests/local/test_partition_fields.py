"""Partitioning on fewer fields than the key (spec.partitionFields, a secondary sort: Hadoop's
KeyFieldBasedPartitioner with `-k1,N`): every record of one partition key goes to one reduce
task, which sees them sorted on the whole key. Real `kubemr run` processes and shell
commands; the reference is computed here from the partitioning contract (CRC-32 of the
partition key) and Python's bytewise sort, as GNU sort's with LC_ALL=C."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import pytest
from conftest import Kubemr


def records(count: int) -> list[bytes]:
    """Hadoop Streaming's documented example (keys a.b.c.d, partitioned on a.b), and more."""
    rng = random.Random(11)
    lines = [b"11.12.1.2", b"11.14.2.3", b"11.11.4.1", b"11.12.1.1", b"11.14.2.2"]
    for _ in range(count):
        fields = [str(rng.randrange(1, 30)) for _ in range(4)]
        lines.append(
            ".".join(fields).encode() + (b".v" + str(rng.randrange(9)).encode()) * rng.randrange(2)
        )
    return lines


def key(line: bytes, fields: int) -> bytes:
    return b".".join(line.split(b".")[:fields])


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("combine", [False, True])
def test_records_of_one_partition_key_meet_in_one_reduce_sorted_on_the_whole_key(
    kubemr: Kubemr, request: pytest.FixtureRequest, where: str, combine: bool
) -> None:
    lines = records(3000)
    (kubemr.tmp / "in").mkdir()
    (kubemr.tmp / "in" / "keys.txt").write_bytes(b"".join(x + b"\n" for x in lines))
    output = str(kubemr.tmp / "out")
    if where == "s3":
        output = request.getfixturevalue("s3_env") + "out/"
    spec = {
        "inputs": [str(kubemr.tmp / "in")],
        "map": "cat",
        "reduce": "cat",
        "separator": ".",
        "keyFields": 4,
        "partitionFields": 2,
        "partitions": 3,
        "splitSize": "8Ki",
        "output": output,
        **({"combine": "cat"} if combine else {}),
    }
    job = kubemr.job("secondary", **spec)
    done = kubemr("run", str(job), "-w", "2", "-q")
    assert done.returncode == 0, done.stderr
    cat = kubemr("results", "secondary")
    urls = cat.stdout.split()
    assert len(urls) == 3
    parts = [
        kubemr("results", "secondary", "--cat").stdout.encode()  # all of them, in order
    ]
    got: list[list[bytes]] = []
    if where == "local":
        got = [Path(u.removeprefix("file://")).read_bytes().splitlines() for u in urls]
    else:
        import os

        import boto3

        s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        for u in urls:
            bucket, _, name = u.removeprefix("s3://").partition("/")
            got.append(s3.get_object(Bucket=bucket, Key=name)["Body"].read().splitlines())
    assert b"".join(b"".join(x + b"\n" for x in part) for part in got) == parts[0]
    want: list[list[bytes]] = [[] for _ in range(3)]
    for line in lines:
        want[zlib.crc32(key(line, 2)) % 3].append(line)
    for p in range(3):  # sorted on the whole key (4 fields), then the whole line
        want[p].sort(key=lambda x: (key(x, 4), x))
    assert got == want
    assert {key(x, 2) for x in got[0]}.isdisjoint({key(x, 2) for x in got[1] + got[2]})


def test_more_partition_fields_than_key_fields_is_refused(kubemr: Kubemr) -> None:
    job = kubemr.job(
        "bad", inputs=["opaque:x"], map="cat", reduce="cat", keyFields=2, partitionFields=3
    )
    done = kubemr("run", str(job))
    assert done.returncode == 2
    assert "spec.partitionFields must be at most spec.keyFields (2), got 3" in done.stderr
