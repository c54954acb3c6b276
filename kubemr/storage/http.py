"""`http://` and `https://` storage: read-only inputs fetched from a web server.

A manifest may list `https://example.org/a.txt` as an input; kubemr sizes it,
cuts it into splits and streams each split with a ranged GET, using only the
standard library. Writes are refused: results go to s3:// or a local path.

Sizes: the planner needs every input's size, so `stat` asks with HEAD and,
when HEAD gives no Content-Length (or is not allowed), with a GET whose body
is never read. A server that reports no size on either is refused with a
StorageError saying so; kubemr does not download an input just to count it.

Ranges: a GET for bytes [start, end) sends `Range: bytes=start-(end-1)` and
expects 206 Partial Content. A server that ignores ranges answers 200 with the
whole body; kubemr then skips `start` bytes as they stream past and stops at
`end`, so the result is the same, only slower.

Every request has a timeout. A dropped connection, a timeout, 429 or a 5xx is
a TemporaryStorageError; 404 and 410 are NotFound; any other error status is
a StorageError naming the URL and the status.
"""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.request
from typing import BinaryIO, NoReturn

from kubemr.errors import NotFound, StorageError, TemporaryStorageError
from kubemr.storage.base import ObjectInfo, Storage
from kubemr.storage.streams import check_range, empty, window

TIMEOUT = 30.0
"""Seconds to wait for a connection, or for the next bytes of a response."""

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_USER_AGENT = "kubemr"


class HttpStorage(Storage):
    """Objects on a web server, read with GET; every http(s) URL names one object."""

    def __init__(self, timeout: float = TIMEOUT) -> None:
        self._timeout = timeout

    def stat(self, url: str) -> ObjectInfo:
        try:
            with self._request(url, "HEAD") as response:
                size = _content_length(response)
        except StorageError as exc:
            if _status(exc) not in (405, 501):  # HEAD not allowed: ask with GET below
                raise
            size = None
        if size is None:
            with self._request(url, "GET") as response:
                size = _content_length(response)
        if size is None:
            raise StorageError(
                f"The server does not report the size of {url} (no Content-Length), which "
                "kubemr needs to split it; copy it to S3 or a local path and use that instead."
            )
        return ObjectInfo(url, size)

    def list(self, url: str) -> list[ObjectInfo]:
        return [self.stat(url)]

    def open_read(self, url: str, start: int = 0, end: int | None = None) -> BinaryIO:
        check_range(start, end)
        if end is not None and end == start:
            self._check_exists(url)
            return empty()
        headers = {}
        if start > 0 or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            response = self._request(url, "GET", headers)
        except StorageError as exc:
            if _status(exc) == 416:
                return empty()  # the range starts at or after the end of the object
            raise
        length = None if end is None else end - start
        skip = start
        if response.status == 206:
            skip = _check_content_range(response, url, start)
        elif response.status != 200:
            response.close()
            raise StorageError(f"Unexpected HTTP status {response.status} reading {url}.")
        return window(response, length, skip, translate=lambda exc: _translate_read(exc, url))

    def get_bytes(self, url: str) -> bytes:
        with self.open_read(url) as stream:
            return stream.read()

    def exists(self, url: str) -> bool:
        try:
            self.stat(url)
        except NotFound:
            return False
        return True

    def put_file(self, path: str, url: str) -> None:
        _read_only(url)

    def put_bytes(self, data: bytes, url: str) -> None:
        _read_only(url)

    def copy(self, src: str, dst: str) -> None:
        _read_only(dst)

    def delete_prefix(self, url: str) -> None:
        _read_only(url)

    def _check_exists(self, url: str) -> None:
        """Raise NotFound (or another error) unless `url` can be fetched; read no body."""
        try:
            self._request(url, "HEAD").close()
        except StorageError as exc:
            if _status(exc) not in (405, 501):
                raise
            self._request(url, "GET").close()

    def _request(
        self, url: str, method: str, headers: dict[str, str] | None = None
    ) -> http.client.HTTPResponse:
        """Send one request; the caller closes the response. Errors become kubemr errors."""
        request = urllib.request.Request(
            url, method=method, headers={"User-Agent": _USER_AGENT, **(headers or {})}
        )
        try:
            response = urllib.request.urlopen(request, timeout=self._timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise _status_error(url, exc.code, exc.reason) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise TemporaryStorageError(f"Could not reach {url}: {reason}.") from exc
        if not isinstance(response, http.client.HTTPResponse):
            response.close()
            raise StorageError(f"{url} is not an http(s) URL.")
        return response


class _StatusError(StorageError):
    """A StorageError that remembers the HTTP status behind it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _TemporaryStatusError(_StatusError, TemporaryStorageError):
    """A 429 or 5xx answer."""


class _NotFoundStatusError(_StatusError, NotFound):
    """A 404 or 410 answer."""


def _status_error(url: str, status: int, reason: object) -> StorageError:
    if status in (404, 410):
        return _NotFoundStatusError(f"{url} does not exist (HTTP {status}).", status)
    if status == 429 or status >= 500:
        return _TemporaryStatusError(f"{url} answered HTTP {status} {reason}; try again.", status)
    return _StatusError(
        f"Could not read {url}: the server answered HTTP {status} {reason}.", status
    )


def _status(exc: StorageError) -> int | None:
    return exc.status if isinstance(exc, _StatusError) else None


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _check_content_range(response: http.client.HTTPResponse, url: str, start: int) -> int:
    """How many bytes to skip at the start of a 206 body that should begin at `start`."""
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) > start:
        response.close()
        raise StorageError(
            f"The server sent a partial answer for {url} that does not start at byte {start}."
        )
    return start - int(match.group(1))


def _translate_read(exc: Exception, url: str) -> Exception | None:
    if isinstance(exc, OSError | http.client.HTTPException):
        return TemporaryStorageError(f"The connection broke while reading {url}: {exc}.")
    return None


def _read_only(url: str) -> NoReturn:
    raise StorageError(
        f"http(s) URLs are read-only: cannot write {url}; write to an s3:// URL or a local path."
    )
