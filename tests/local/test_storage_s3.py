"""What s3:// storage promises beyond the shared contract: configuration and error sentences.

Runs against the real S3-compatible servers from tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kubemr.errors import NotFound, StorageError, TemporaryError
from kubemr.storage import StorageConfig, storage_for
from kubemr.storage.s3 import S3Storage

if TYPE_CHECKING:
    from conftest import S3Server

pytestmark = pytest.mark.s3


def test_a_missing_bucket_is_named(s3_env: str, tmp_path: Path) -> None:
    storage = storage_for(s3_env)
    url = "s3://kubemr-no-such-bucket-here/data/"
    with pytest.raises(NotFound, match="bucket 'kubemr-no-such-bucket-here' does not exist"):
        storage.list(url)
    with pytest.raises(NotFound):
        storage.stat(url + "x")
    with pytest.raises(NotFound):
        storage.get_bytes(url + "x")
    with pytest.raises(NotFound, match="does not exist"):
        storage.put_bytes(b"x", url + "x")
    local = tmp_path / "upload"
    local.write_bytes(b"x")
    with pytest.raises(NotFound, match="does not exist"):
        storage.put_file(str(local), url + "x")
    assert not storage.exists(url + "x")
    storage.delete_prefix(url)  # nothing to delete is not an error


def test_bad_credentials_are_explained(
    s3_strict_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    storage = S3Storage(StorageConfig(endpoint=s3_strict_server.endpoint, region="us-east-1"))
    try:
        storage.exists("s3://some-bucket/x")
    except StorageError:
        pass
    else:
        pytest.skip(f"the server at {s3_strict_server.endpoint} does not check credentials")
    for call in (
        lambda: storage.list("s3://some-bucket/"),
        lambda: storage.put_bytes(b"x", "s3://some-bucket/x"),
        lambda: storage.stat("s3://some-bucket/x"),
    ):
        with pytest.raises(StorageError, match="credentials") as raised:
            call()
        assert "some-bucket" in str(raised.value)
        assert not isinstance(raised.value, NotFound | TemporaryError)


def test_missing_credentials_are_explained(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = S3Storage(StorageConfig(endpoint=s3_server.endpoint, region="us-east-1"))
    with pytest.raises(StorageError, match=r"No usable S3 credentials.*'some-bucket'"):
        storage.list("s3://some-bucket/")


def test_custom_endpoints_use_path_style_addressing(
    s3_env: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`localhost` is not an IP, so virtual-host addressing would send bucket.localhost."""
    if "127.0.0.1" not in s3_server.endpoint:
        pytest.skip("needs the moto server on 127.0.0.1")
    endpoint = s3_server.endpoint.replace("127.0.0.1", "localhost")
    from_config = S3Storage(StorageConfig(endpoint=endpoint))
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    from_env = S3Storage()
    for storage in (from_config, from_env):
        settings: Any = storage.client.meta.config
        assert settings.s3 == {"addressing_style": "path"}
        storage.put_bytes(b"x", s3_env + "k")
        assert storage.get_bytes(s3_env + "k") == b"x"


def test_aws_region_is_honoured(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert S3Storage().client.meta.region_name == "eu-central-1"
    explicit = S3Storage(StorageConfig(region="ap-south-1"))
    assert explicit.client.meta.region_name == "ap-south-1"


def test_urls_that_name_no_object(s3_env: str) -> None:
    storage = storage_for(s3_env)
    with pytest.raises(StorageError, match="names a bucket"):
        storage.put_bytes(b"x", s3_env)
    with pytest.raises(NotFound):
        storage.stat(s3_env)


def test_an_unreachable_aws_endpoint_says_how_to_set_another() -> None:
    """A connection error is the one botocore raises (built here: no test may reach AWS)."""
    from botocore.exceptions import EndpointConnectionError

    from kubemr.storage.s3 import _translate

    aws = EndpointConnectionError(endpoint_url="https://b.s3.amazonaws.com/in/a.txt")
    said = _translate(aws, "read", "s3://b/in/a.txt")
    assert isinstance(said, TemporaryError)
    assert "https://b.s3.amazonaws.com/in/a.txt" in str(said)
    assert "spec.storage.endpoint, or KUBEMR_S3_ENDPOINT on the operator" in str(said)
    minio = EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/in/a.txt")
    other = str(_translate(minio, "read", "s3://b/in/a.txt"))
    assert "127.0.0.1:9" in other and "KUBEMR_S3_ENDPOINT" not in other


def test_submit_warns_when_pods_will_not_use_the_upload_endpoint(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubemr.cluster import endpoint_warning
    from kubemr.spec import parse_manifest

    def spec(**storage: str) -> Any:
        body = {"inputs": ["s3://b/in/"], "map": "cat", "output": "s3://b/out/"}
        if storage:
            body["storage"] = storage
        return parse_manifest(
            {"apiVersion": "kubemr.io/v1alpha1", "kind": "MapReduceJob", "spec": body}
        )

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    warning = endpoint_warning(spec(), S3Storage())
    assert warning is not None and s3_server.endpoint in warning
    assert "names no spec.storage.endpoint" in warning
    named = spec(endpoint=s3_server.endpoint)
    assert endpoint_warning(named, S3Storage(StorageConfig(endpoint=s3_server.endpoint))) is None
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert endpoint_warning(spec(), S3Storage(StorageConfig(region="us-east-1"))) is None
