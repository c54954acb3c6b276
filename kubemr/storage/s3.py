"""`s3://` storage: Amazon S3 and S3-compatible servers (MinIO, Ceph, moto).

This is the only module in kubemr that imports boto3 or botocore. It owns the
client settings (retries, timeouts, addressing style) and translates every
library error at the boundary into a kubemr error:

    404, NoSuchKey, NoSuchBucket                 -> NotFound
    5xx, throttling, timeouts, dropped links     -> TemporaryStorageError
    AccessDenied, bad or missing credentials     -> StorageError naming the bucket
    anything else                                -> StorageError

Credentials, endpoint and region come from the standard AWS environment
(`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, profiles, instance roles...), which
boto3 reads itself; `StorageConfig.endpoint` and `.region` override it.
botocore reads the region only from `AWS_DEFAULT_REGION`, so `AWS_REGION`
(what the other AWS SDKs read) is honoured here as a fallback.

Against a custom endpoint, requests use path-style addressing
(`http://host/bucket/key`), which every S3-compatible server understands, and
checksums are only sent where S3 requires them, since not every such server
accepts the newer default checksum headers.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import boto3
import boto3.session
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from kubemr.errors import NotFound, StorageError, TemporaryStorageError
from kubemr.storage.base import ObjectInfo, Storage, StorageConfig
from kubemr.storage.streams import check_range, empty, window
from kubemr.storage.urls import split_bucket

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CopySourceTypeDef

MAX_COPY_OBJECT = 5 * 1024**3
"""The largest object a single CopyObject call may copy; larger ones use a multipart copy."""

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_DENIED = {
    "403",
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "InvalidSecurity",
    "AccountProblem",
}
_TEMPORARY = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}
_CREDENTIALS_HINT = (
    "check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, "
    "or the secret named in spec.storage.secretName)"
)


class S3Storage(Storage):
    """Objects in S3 buckets, addressed by `s3://bucket/key` URLs."""

    def __init__(self, config: StorageConfig | None = None) -> None:
        self._config = config or StorageConfig()
        self._client: S3Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> S3Client:
        """The boto3 client, built on first use (so no credentials are needed until then)."""
        with self._lock:
            if self._client is None:
                self._client = _build_client(self._config)
            return self._client

    @property
    def endpoint_url(self) -> str:
        """Where requests go: the configured endpoint, $AWS_ENDPOINT_URL, or AWS's own."""
        return str(self.client.meta.endpoint_url)

    def stat(self, url: str) -> ObjectInfo:
        bucket, key = _object(url)
        with _errors("read", url):
            head = self.client.head_object(Bucket=bucket, Key=key)
        return ObjectInfo(url, head["ContentLength"])

    def list(self, url: str) -> list[ObjectInfo]:
        bucket, key = split_bucket(url)
        if key and not key.endswith("/"):
            with contextlib.suppress(NotFound):
                return [self.stat(url)]
            key += "/"
        found = [
            ObjectInfo(f"s3://{bucket}/{item['Key']}", item["Size"])
            for item in self._iter_objects(bucket, key, url)
            if not item["Key"].endswith("/")  # "folder" markers are not objects
        ]
        if not found:
            raise NotFound(f"Nothing exists at {url}.")
        found.sort(key=lambda info: info.url)
        return found

    def open_read(self, url: str, start: int = 0, end: int | None = None) -> BinaryIO:
        check_range(start, end)
        bucket, key = _object(url)
        if end is not None and end == start:
            self.stat(url)  # still raise NotFound for a missing object
            return empty()
        request: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if start > 0 or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            with _errors("read", url):
                response = self.client.get_object(**request)
        except StorageError as exc:
            if _code(exc.__cause__) in ("InvalidRange", "416"):
                return empty()  # the range starts at or after the end of the object
            raise
        return window(response["Body"], translate=lambda exc: _translate(exc, "read", url))

    def put_file(self, path: str, url: str) -> None:
        bucket, key = _object(url, write=True)
        try:
            os.stat(path)
        except OSError as exc:
            raise NotFound(f"Cannot store {path} at {url}: {exc.strerror}.") from exc
        with _errors("write", url):
            self.client.upload_file(path, bucket, key, Config=_TRANSFER)

    def put_bytes(self, data: bytes, url: str) -> None:
        bucket, key = _object(url, write=True)
        with _errors("write", url):
            self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def get_bytes(self, url: str) -> bytes:
        with self.open_read(url) as stream:
            return stream.read()

    def copy(self, src: str, dst: str) -> None:
        src_bucket, src_key = _object(src)
        dst_bucket, dst_key = _object(dst, write=True)
        size = self.stat(src).size
        if (src_bucket, src_key) == (dst_bucket, dst_key):
            return
        source: CopySourceTypeDef = {"Bucket": src_bucket, "Key": src_key}
        with _errors("copy to", dst):
            if size <= MAX_COPY_OBJECT:
                self.client.copy_object(CopySource=source, Bucket=dst_bucket, Key=dst_key)
            else:
                self.client.copy(source, dst_bucket, dst_key, Config=_TRANSFER)

    def exists(self, url: str) -> bool:
        try:
            self.stat(url)
        except NotFound:
            return False
        return True

    def delete_prefix(self, url: str) -> None:
        bucket, key = split_bucket(url)
        try:
            if key and not key.endswith("/"):
                with _errors("delete", url):
                    self.client.delete_object(Bucket=bucket, Key=key)
                key += "/"
            batch: list[str] = []
            for item in self._iter_objects(bucket, key, url):
                batch.append(item["Key"])
                if len(batch) == 1000:
                    self._delete(bucket, batch, url)
                    batch = []
            if batch:
                self._delete(bucket, batch, url)
        except NotFound:
            return  # no bucket: nothing to delete

    def _iter_objects(self, bucket: str, prefix: str, url: str) -> Iterator[dict[str, Any]]:
        """Every object (as ListObjectsV2 reports it) whose key starts with `prefix`."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        with _errors("list", url):
            for page in pages:
                for item in page.get("Contents", []):
                    yield dict(item)

    def _delete(self, bucket: str, keys: Sequence[str], url: str) -> None:
        with _errors("delete", url):
            response = self.client.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise StorageError(
                f"Could not delete {len(errors)} objects under {url}, for example "
                f"s3://{bucket}/{first.get('Key')}: {first.get('Code')} {first.get('Message')}."
            )


_TRANSFER = TransferConfig(max_concurrency=4)


def _build_client(config: StorageConfig) -> S3Client:
    session = boto3.session.Session()
    region = config.region or session.region_name or os.environ.get("AWS_REGION") or None

    def make(path_style: bool) -> S3Client:
        settings = Config(
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=10,
            read_timeout=60,
            s3={"addressing_style": "path"} if path_style else {},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return session.client(
            "s3", endpoint_url=config.endpoint, region_name=region, config=settings
        )

    client = make(path_style=config.endpoint is not None)
    if config.endpoint is None and not is_aws(client.meta.endpoint_url):
        client = make(path_style=True)  # the endpoint came from AWS_ENDPOINT_URL or a profile
    return client


def is_aws(endpoint_url: str) -> bool:
    host = urlsplit(endpoint_url).hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn", ".api.aws"))


def _object(url: str, write: bool = False) -> tuple[str, str]:
    """Bucket and key of a URL that must name one object, not a bucket or a prefix."""
    bucket, key = split_bucket(url)
    if not key or key.endswith("/"):
        message = f"{url} names a bucket or a prefix (it ends with '/'), not an object."
        raise StorageError(f"Cannot write: {message}") if write else NotFound(message)
    return bucket, key


@contextlib.contextmanager
def _errors(action: str, url: str) -> Iterator[None]:
    """Translate boto3/botocore errors raised inside into kubemr errors naming `url`."""
    try:
        yield
    except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
        translated = _translate(exc, action, url)
        if translated is None:
            raise
        raise translated from exc


def _translate(exc: BaseException, action: str, url: str) -> StorageError | None:
    """The kubemr error for a boto3/botocore error, or None for anything else."""
    bucket = split_bucket(url)[0]
    if isinstance(exc, S3UploadFailedError):
        cause = exc.__cause__ or exc.__context__
        if cause is not None and cause is not exc:
            found = _translate(cause, action, url)
            if found is not None:
                return found
        return StorageError(f"Could not {action} {url}: {exc}.")
    if isinstance(exc, ClientError):
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = exc.response.get("Error", {}).get("Message") or code
        if code == "NoSuchBucket":
            return NotFound(f"Cannot {action} {url}: the bucket {bucket!r} does not exist.")
        if code in _NOT_FOUND or status == 404:
            return NotFound(f"Cannot {action} {url}: no such object.")
        if code in _DENIED or status in (401, 403):
            detail = f"HTTP {code}" if code.isdigit() else code
            return StorageError(
                f"Access to the bucket {bucket!r} was denied ({detail}) when trying to "
                f"{action} {url}; {_CREDENTIALS_HINT} and their permissions."
            )
        if code in _TEMPORARY or status >= 500 or status == 429:
            return TemporaryStorageError(f"S3 could not {action} {url} right now: {message}.")
        return StorageError(f"S3 refused to {action} {url}: {code}: {message}.")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return StorageError(
            f"No usable S3 credentials to {action} {url} in the bucket {bucket!r}; "
            f"{_CREDENTIALS_HINT}."
        )
    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
        endpoint = str(getattr(exc, "kwargs", {}).get("endpoint_url") or "")
        hint = ""
        if is_aws(endpoint):
            hint = (
                "; no S3 endpoint is set, so this is AWS S3: for another S3 service set "
                "spec.storage.endpoint, or KUBEMR_S3_ENDPOINT on the operator for every job"
            )
        return TemporaryStorageError(f"Could not reach S3 to {action} {url}: {exc}{hint}.")
    if isinstance(exc, ParamValidationError) and "Invalid bucket name" in str(exc):
        return StorageError(
            f"Cannot {action} {url}: {bucket!r} is not a valid bucket name (letters, digits, "
            "'.', '-' and '_' only)."
        )
    if isinstance(exc, BotoCoreError):
        text = str(exc).strip()
        said = text.splitlines()[-1] if text else type(exc).__name__  # the specific line
        return StorageError(f"Could not {action} {url}: {said.rstrip('.')}.")
    return None


def _code(exc: BaseException | None) -> str:
    """The error code of a ClientError ("NoSuchKey", "404"...), or "" for anything else."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""
