"""Fixtures shared by every test directory: a real S3-compatible server.

Tests that touch S3 talk HTTP to a real server; nothing patches boto3. By
default that server is moto's standalone server mode, started here; set
AWS_ENDPOINT_URL (plus the usual AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
AWS_REGION) to run the same tests against another server such as MinIO.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config

import kubemr.storage

pytest.register_assert_rewrite("contract_store")

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

MOTO_REGION = "us-east-1"
MOTO_KEY = "kubemr-test-key"
MOTO_SECRET = "kubemr-test-secret"


@dataclass(frozen=True)
class S3Server:
    """How to reach a running S3-compatible server, and the environment that selects it.

    `env` holds the AWS_* variables that point boto3 (and so kubemr) at this
    server; it is empty when the server came from the user's own environment,
    which is then left as it is.
    """

    endpoint: str
    access_key: str | None
    secret_key: str | None
    region: str
    env: Mapping[str, str] = field(default_factory=dict)

    def client(self) -> S3Client:
        """A boto3 client for test setup and inspection (kubemr itself builds its own)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name unless given) and return its name."""
        name = name or f"kubemr-test-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def remove_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [item["Key"] for item in page.get("Contents", [])]
            if keys:
                objects: list[ObjectIdentifierTypeDef] = [{"Key": key} for key in keys]
                client.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
        client.delete_bucket(Bucket=name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_serving(endpoint: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers, even if it refuses
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not start within 30 s:\n{log.read_text()}")


def _moto(tmp: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[S3Server]:
    """Run `moto_server` on a free local port for as long as the generator is open."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp / f"moto-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(extra_env or {})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _wait_until_serving(endpoint, process, log)
        yield S3Server(
            endpoint=endpoint,
            access_key=MOTO_KEY,
            secret_key=MOTO_SECRET,
            region=MOTO_REGION,
            env={
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": MOTO_KEY,
                "AWS_SECRET_ACCESS_KEY": MOTO_SECRET,
                "AWS_REGION": MOTO_REGION,
            },
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _users_server() -> S3Server | None:
    """The server named by AWS_ENDPOINT_URL in the environment pytest started in, if any."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return None
    return S3Server(
        endpoint=endpoint,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible HTTP server for the whole session.

    moto's server mode (`moto_server`, a real S3 API over HTTP on 127.0.0.1;
    no boto3 patching) stands in for MinIO until the devcluster's MinIO is
    used. When AWS_ENDPOINT_URL is already set, that server (MinIO, say) is
    used instead, with the credentials from the environment.
    """
    users = _users_server()
    if users is not None:
        yield users
        return
    yield from _moto(tmp_path_factory.mktemp("moto"))


@pytest.fixture(scope="session")
def s3_strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3 server that checks credentials (moto does not, unless told to).

    The user's server when AWS_ENDPOINT_URL is set; otherwise a second
    moto_server with authentication on (INITIAL_NO_AUTH_ACTION_COUNT=0), which
    knows no keys at all and so rejects every request.
    """
    users = _users_server()
    if users is not None:
        yield users
        return
    yield from _moto(tmp_path_factory.mktemp("moto-auth"), {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Point the AWS environment at `s3_server` and yield a fresh, empty bucket as `s3://bucket/`.

    Shared AWS config and credential files are hidden (when the server is moto)
    so that nothing from the developer's own setup leaks into the test.
    """
    if s3_server.env:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                monkeypatch.delenv(name)
        for name, value in s3_server.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    kubemr.storage.clear_cache()
    bucket = s3_server.make_bucket()
    try:
        yield f"s3://{bucket}/"
    finally:
        kubemr.storage.clear_cache()
        with contextlib.suppress(Exception):  # a test may have removed it already
            s3_server.remove_bucket(bucket)
