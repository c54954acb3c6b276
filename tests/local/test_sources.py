"""Inputs and outputs beyond the local disk: S3 (a real S3 server on 127.0.0.1) and http(s).

Also runs workers exactly as pods run them (`kubemr shim` processes sharing a
job document, with no local workdir), so intermediate data goes through S3.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml
from conftest import REPO, Kubemr, run_as_pods

WORDCOUNT = REPO / "examples" / "bash-wordcount"
CORPUS = sorted(p for p in (WORDCOUNT / "corpus").iterdir() if not p.name.startswith("_"))


def s3_client():  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def split_url(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def put_corpus(prefix: str) -> None:
    bucket, key = split_url(prefix)
    client = s3_client()
    for path in CORPUS:
        client.put_object(Bucket=bucket, Key=f"{key}corpus/{path.name}", Body=path.read_bytes())
    client.put_object(Bucket=bucket, Key=f"{key}corpus/_ignored", Body=b"not input\n")


def s3_listing(prefix: str) -> dict[str, bytes]:
    bucket, key = split_url(prefix)
    client = s3_client()
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
        for obj in page.get("Contents", []):
            name = obj["Key"][len(key) :]
            out[name] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def local_reference(kubemr: Kubemr) -> dict[str, bytes]:
    proc = kubemr("run", str(WORDCOUNT / "job.yaml"), "-w", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip())
    return {p.name: p.read_bytes() for p in out.glob("part-*")}


def wordcount_job(kubemr: Kubemr, name: str, inputs: list[str], output: str | None) -> Path:
    spec = {
        "inputs": inputs,
        "map": "./map.sh",
        "combine": "./reduce.sh",
        "reduce": "./reduce.sh",
        "partitions": 2,
        "splitSize": "32Ki",
        "files": {
            "map.sh": (WORDCOUNT / "map.sh").read_text(),
            "reduce.sh": (WORDCOUNT / "reduce.sh").read_text(),
        },
    }
    if output:
        spec["output"] = output
    return kubemr.job(name, **spec)


def test_s3_inputs_and_output(kubemr: Kubemr, s3_env: str) -> None:
    put_corpus(s3_env)
    job = wordcount_job(kubemr, "s3wc", [f"{s3_env}corpus/"], f"{s3_env}out/")
    proc = kubemr("run", str(job), "-w", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"{s3_env}out/")
    stored = s3_listing(f"{s3_env}out/")
    assert set(stored) == {"_SUCCESS", "part-r-00000", "part-r-00001"}
    reference = local_reference(kubemr)
    for name, data in reference.items():
        assert stored[name] == data
    cat = kubemr("results", "s3wc", "--cat")
    assert cat.stdout.encode() == reference["part-r-00000"] + reference["part-r-00001"]


def test_missing_s3_input_is_refused_before_start(kubemr: Kubemr, s3_env: str) -> None:
    job = wordcount_job(kubemr, "s3missing", [f"{s3_env}nothing-here/"], f"{s3_env}out/")
    proc = kubemr("run", str(job))
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_workers_as_pods_run_them_move_data_through_s3(kubemr: Kubemr, s3_env: str) -> None:
    """`kubemr shim` processes sharing one job document, with no local workdir: the way
    worker pods run."""
    put_corpus(s3_env)
    job = wordcount_job(kubemr, "pods", [f"{s3_env}corpus/"], f"{s3_env}out/")
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["keepIntermediate"] = False
    status = run_as_pods(kubemr, doc)["status"]
    assert status["workdir"].startswith(f"{s3_env}out/_kubemr/")
    stored = s3_listing(f"{s3_env}out/")
    reference = local_reference(kubemr)
    for name, data in reference.items():
        assert stored[name] == data
    # Intermediate data is removed after success; the plan and task logs stay.
    assert not [k for k in stored if "/data/" in k]
    assert [k for k in stored if k.startswith("_kubemr/") and "plan-a1.json" in k]
    assert status["counters"]["wordcount"]["words"] > 0


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on 127.0.0.1 (no Range support, as many servers)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass

    server = Quiet(("127.0.0.1", 0), handler)
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_http_inputs_are_fetched_and_split(kubemr: Kubemr, http_root: tuple[str, Path]) -> None:
    base, root = http_root
    for path in CORPUS:
        (root / path.name).write_bytes(path.read_bytes())
    inputs = [f"{base}/{p.name}" for p in CORPUS]
    job = wordcount_job(kubemr, "httpwc", inputs, None)
    proc = kubemr("run", str(job), "-w", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    got = {p.name: p.read_bytes() for p in Path(proc.stdout.strip()).glob("part-*")}
    assert got == local_reference(kubemr)


def test_unreachable_url_is_refused_before_start(kubemr: Kubemr) -> None:
    started = time.monotonic()
    job = kubemr.job("unreachable", inputs=["http://127.0.0.1:9/nothing.txt"], map="cat")
    proc = kubemr("run", str(job))
    assert proc.returncode == 2, proc.stderr
    assert "127.0.0.1:9" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 60


def test_http_not_found_names_the_input(kubemr: Kubemr, http_root: tuple[str, Path]) -> None:
    base, _ = http_root
    job = kubemr.job("http404", inputs=[f"{base}/missing.txt"], map="cat")
    proc = kubemr("run", str(job))
    assert proc.returncode == 2
    assert "missing.txt does not exist" in proc.stderr
