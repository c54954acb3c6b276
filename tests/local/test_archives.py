"""Archives (spec.archives, Hadoop's -archives): a .tar.gz, .tgz, .tar or .zip from a path,
an http(s) URL or S3, unpacked once per worker and linked into every command directory.
Real `kubemr run` processes and shell commands; http is a server on 127.0.0.1 started here,
S3 a real S3 server on 127.0.0.1."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from conftest import Kubemr

MAP = "cat model/w.txt model/sub/d.txt; ./model/tool.sh; readlink model"


def make_archives(root: Path) -> None:
    """model.tgz and model.zip of the same tree: a text file, a nested one, an executable."""
    tree = {"w.txt": b"weights 42\n", "sub/d.txt": b"deep\n", "tool.sh": b"#!/bin/sh\necho ran\n"}
    with tarfile.open(root / "model.tgz", "w:gz") as t:
        for name, data in tree.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755 if name.endswith(".sh") else 0o644
            t.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(root / "model.zip", "w") as z:
        for name, data in tree.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith(".sh") else 0o644) << 16
            z.writestr(info, data)


def run(kubemr: Kubemr, archives: list[str], workers: int = 2, **spec: object) -> list[str]:
    job = kubemr.job(
        "arc",
        inputs=[f"opaque:{i}" for i in range(6)],
        map=MAP,
        archives=archives,
        output=str(kubemr.tmp / "out"),
        **spec,
    )
    done = kubemr("run", str(job), "-w", str(workers), "-q")
    assert done.returncode == 0, done.stderr
    return [p.read_text() for p in sorted((kubemr.tmp / "out").glob("part-m-*"))]


@pytest.mark.parametrize("name", ["model.tgz", "model.zip#model"])
@pytest.mark.parametrize("mode", ["wrapper", "sidecar"])
def test_an_archive_is_unpacked_once_per_worker_into_every_command_directory(
    kubemr: Kubemr, name: str, mode: str
) -> None:
    make_archives(kubemr.tmp)
    outputs = run(kubemr, [name.replace("model.tgz", "model.tgz#model")], mode=mode)
    assert len(outputs) == 6
    for out in outputs:
        assert out.startswith("weights 42\ndeep\nran\n"), out
    unpacked = {out.splitlines()[-1] for out in outputs}  # where each task's link points
    assert 1 <= len(unpacked) <= 2  # one directory per worker, whatever its tasks
    assert not [p for p in unpacked if Path(p).exists()]  # removed as each worker ended


def test_the_directory_is_named_after_the_archive_or_its_fragment(kubemr: Kubemr) -> None:
    make_archives(kubemr.tmp)
    job = kubemr.job(
        "names",
        inputs=["opaque:x"],
        map="cat model/w.txt zipped/w.txt",
        archives=["model.tgz", "model.zip#zipped"],
        output=str(kubemr.tmp / "out"),
    )
    done = kubemr("run", str(job), "-q")
    assert done.returncode == 0, done.stderr
    assert (kubemr.tmp / "out" / "part-m-00000").read_text() == "weights 42\nweights 42\n"


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static http server on 127.0.0.1 serving a directory: (its URL, the directory)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root
    finally:
        server.shutdown()
        server.server_close()


def test_archives_from_http_and_a_missing_one_fails_saying_which(
    kubemr: Kubemr, http_dir: tuple[str, Path]
) -> None:
    url, root = http_dir
    make_archives(root)
    assert run(kubemr, [f"{url}model.tgz"], workers=1)[0].startswith("weights 42\n")
    job = kubemr.job(
        "gone",
        inputs=["opaque:x"],
        map="true",
        archives=[f"{url}nothing.tgz"],
        maxAttempts=1,
        output=str(kubemr.tmp / "gone"),
    )
    done = kubemr("run", str(job), "-q")
    assert done.returncode == 1
    assert f"archive {url}nothing.tgz cannot be fetched: HTTP 404" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.s3
def test_an_archive_from_s3(kubemr: Kubemr, s3_env: str) -> None:
    import os

    import boto3

    make_archives(kubemr.tmp)
    bucket = s3_env.removeprefix("s3://").strip("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    s3.upload_file(str(kubemr.tmp / "model.tgz"), bucket, "lib/model.tgz")
    assert run(kubemr, [f"{s3_env}lib/model.tgz"])[0].startswith("weights 42\ndeep\nran\n")


def test_an_archive_reaching_outside_its_directory_is_refused(kubemr: Kubemr) -> None:
    with tarfile.open(kubemr.tmp / "evil.tar", "w") as t:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        t.addfile(info, io.BytesIO(b"bad"))
    job = kubemr.job(
        "evil",
        inputs=["opaque:x"],
        map="true",
        archives=["evil.tar"],
        maxAttempts=1,
        output=str(kubemr.tmp / "out"),
    )
    done = kubemr("run", str(job), "-q")
    assert done.returncode == 1
    assert "archive" in done.stderr and "outside the directory it unpacks into" in done.stderr
    assert not list(kubemr.home.rglob("escaped.txt")) and not list(kubemr.tmp.rglob("escaped.txt"))


@pytest.mark.parametrize(
    ("archives", "says"),
    [
        (["missing.tgz"], "archive missing.tgz is not a file"),
        (["notes.txt"], "must end with .tar.gz, .tgz, .tar or .zip"),
        (["a.tgz#x/y"], "not a plain file name"),
        (["a.tgz#run.sh"], "a file of spec.files takes already"),
        (["ftp://h/a.tgz"], "must be an s3://, http(s)://, file:// URL or a path"),
    ],
)
def test_bad_archives_are_refused_before_anything_runs(
    kubemr: Kubemr, archives: list[str], says: str
) -> None:
    (kubemr.tmp / "a.tgz").write_bytes(b"")
    job = kubemr.job(
        "bad", inputs=["opaque:x"], map="true", archives=archives, files={"run.sh": "true\n"}
    )
    done = kubemr("run", str(job))
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
