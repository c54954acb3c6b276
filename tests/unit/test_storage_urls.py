"""The URL helpers and backend selection of kubemr.storage: pure, no disk or network."""

from __future__ import annotations

import os

import pytest

from kubemr.errors import KubemrError, StorageError
from kubemr.storage import (
    StorageConfig,
    clear_cache,
    is_prefix,
    join,
    scheme,
    split_bucket,
    storage_for,
    to_url,
)
from kubemr.storage.http import HttpStorage
from kubemr.storage.local import LocalStorage, file_path
from kubemr.storage.s3 import S3Storage


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket/key", "s3"),
        ("S3://bucket/key", "s3"),
        ("file:///tmp/x", "file"),
        ("https://example.org/a.txt", "https"),
        ("/tmp/x", ""),
        ("relative/path", ""),
        ("customers-shard-17", ""),
        ("c:foo", ""),
    ],
)
def test_scheme(url: str, expected: str) -> None:
    assert scheme(url) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/data/in.txt", "file:///data/in.txt"),
        ("in.txt", "file:///base/dir/in.txt"),
        ("./sub/in.txt", "file:///base/dir/sub/in.txt"),
        ("../other/in.txt", "file:///base/other/in.txt"),
        ("out/", "file:///base/dir/out/"),
        ("/", "file:///"),
        (".", "file:///base/dir"),
        ("s3://bucket/key", "s3://bucket/key"),
        ("https://example.org/a b", "https://example.org/a b"),
        ("file:///already/a/url", "file:///already/a/url"),
    ],
)
def test_to_url(given: str, expected: str) -> None:
    assert to_url(given, "/base/dir") == expected


def test_to_url_expands_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    assert to_url("~", "/base") == "file:///home/someone"
    assert to_url("~/data/", "/base") == "file:///home/someone/data/"


def test_to_url_relative_base_dir_is_made_absolute() -> None:
    assert to_url("x", "rel") == "file://" + os.path.join(os.getcwd(), "rel", "x")


def test_to_url_rejects_empty() -> None:
    with pytest.raises(StorageError):
        to_url("", "/base")


@pytest.mark.parametrize(
    ("url", "parts", "expected"),
    [
        ("s3://b/out", ("part-0",), "s3://b/out/part-0"),
        ("s3://b/out/", ("part-0",), "s3://b/out/part-0"),
        ("s3://b", ("k",), "s3://b/k"),
        ("s3://b/", ("a", "b", "c"), "s3://b/a/b/c"),
        ("s3://b/", ("a/b", "c"), "s3://b/a/b/c"),
        ("s3://b/", ("map/",), "s3://b/map/"),
        ("s3://b/", ("map/", "x"), "s3://b/map/x"),
        ("file:///", ("tmp",), "file:///tmp"),
        ("file:///data", (), "file:///data"),
        ("s3://b/x", ("a..b",), "s3://b/x/a..b"),
    ],
)
def test_join(url: str, parts: tuple[str, ...], expected: str) -> None:
    assert join(url, *parts) == expected


@pytest.mark.parametrize("part", ["..", "a/../b", "/abs", ".", "a//b", "", "./a", "a/.."])
def test_join_rejects_parts_that_could_escape_or_are_malformed(part: str) -> None:
    with pytest.raises(StorageError):
        join("s3://b/out/", part)


def test_is_prefix() -> None:
    assert is_prefix("s3://b/out/")
    assert is_prefix("file:///")
    assert not is_prefix("s3://b/out")


def test_split_bucket() -> None:
    assert split_bucket("s3://b/a/b") == ("b", "a/b")
    assert split_bucket("s3://b/") == ("b", "")
    assert split_bucket("s3://b") == ("b", "")
    with pytest.raises(StorageError):
        split_bucket("s3:///key")
    with pytest.raises(StorageError):
        split_bucket("file:///x")


def test_file_path() -> None:
    assert file_path("file:///data/x") == "/data/x"
    assert file_path("file://localhost/data/x") == "/data/x"
    assert file_path("file:///data/") == "/data/"
    for bad in ("file://data/x", "file:///data/../etc/passwd", "s3://b/k"):
        with pytest.raises(StorageError):
            file_path(bad)


def test_storage_for_picks_a_backend_by_scheme() -> None:
    assert isinstance(storage_for("file:///tmp/x"), LocalStorage)
    assert isinstance(storage_for("s3://bucket/key"), S3Storage)
    assert isinstance(storage_for("http://example.org/a"), HttpStorage)
    assert isinstance(storage_for("HTTPS://example.org/a"), HttpStorage)


def test_storage_for_reuses_backends_per_scheme_and_config() -> None:
    clear_cache()
    config = StorageConfig(endpoint="http://minio:9000", region="eu-west-1")
    assert storage_for("s3://a/x") is storage_for("s3://b/y")
    assert storage_for("s3://a/x", StorageConfig()) is storage_for("s3://b/y")
    assert storage_for("s3://a/x", config) is storage_for("s3://b/", StorageConfig(**vars(config)))
    assert storage_for("s3://a/x", config) is not storage_for("s3://a/x")
    assert storage_for("file:///a", config) is storage_for("file:///b")
    assert storage_for("http://h/a") is storage_for("https://h/b")
    clear_cache()


@pytest.mark.parametrize("url", ["gs://bucket/key", "ftp://host/file", "/plain/path"])
def test_storage_for_rejects_unknown_schemes_in_one_sentence(url: str) -> None:
    with pytest.raises(StorageError) as raised:
        storage_for(url)
    message = str(raised.value)
    assert isinstance(raised.value, KubemrError)
    assert url in message
    assert "s3://" in message and "file://" in message and "https://" in message
    assert message.endswith(".") and "\n" not in message
