"""http(s):// storage against a real local web server (stdlib `http.server`).

The server below serves a temp dir and can behave like the web servers
kubemr meets in practice, by path prefix:

    /files/...       honours Range (206 + Content-Range), like nginx or S3
    /norange/...     ignores Range and sends the whole body with 200
    /nolength/...    sends no Content-Length at all (HTTP/1.0, close-delimited)
    /headless/...    omits Content-Length on HEAD only (some dynamic servers)
    /status/NNN      answers with status NNN
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubemr.errors import NotFound, StorageError, TemporaryStorageError
from kubemr.storage import storage_for
from kubemr.storage.http import HttpStorage

DIGITS = b"0123456789"


class Handler(BaseHTTPRequestHandler):
    """Serves `root` with the behaviours listed in the module docstring."""

    root: Path

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet

    def _serve(self, body: bool) -> None:
        kind, _, name = self.path.lstrip("/").partition("/")
        if kind == "status":
            self.send_error(int(name))
            return
        path = self.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if kind == "files" and match:
            start = int(match.group(1))
            last = int(match.group(2)) if match.group(2) else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            last = min(last, len(data) - 1)
            part = data[start : last + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{last}/{len(data)}")
            self.send_header("Content-Length", str(len(part)))
            self.end_headers()
            if body:
                self.wfile.write(part)
            return
        self.send_response(200)
        if kind == "nolength":
            self.close_connection = True
        elif kind == "headless" and not body:
            pass
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a web server on 127.0.0.1 serving a temp dir (see the module docstring)."""
    root = tmp_path_factory.mktemp("www")
    (root / "digits").write_bytes(DIGITS)
    (root / "empty").write_bytes(b"")
    (root / "lines").write_bytes(b"".join(b"line %d\n" % i for i in range(10_000)))
    handler = type("RootHandler", (Handler,), {"root": root})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http() -> HttpStorage:
    storage = storage_for("http://example.org/")
    assert isinstance(storage, HttpStorage)
    return storage


def read(http: HttpStorage, url: str, start: int = 0, end: int | None = None) -> bytes:
    with http.open_read(url, start, end) as stream:
        return stream.read()


@pytest.mark.parametrize("kind", ["files", "norange", "headless"])
def test_stat_and_list(http: HttpStorage, web: str, kind: str) -> None:
    url = f"{web}/{kind}/digits"
    assert http.stat(url).size == 10
    assert http.list(url) == [http.stat(url)]
    assert http.exists(url)
    assert http.stat(f"{web}/{kind}/empty").size == 0


def test_a_server_that_reports_no_size_is_refused_with_a_reason(
    http: HttpStorage, web: str
) -> None:
    with pytest.raises(StorageError, match="does not report the size"):
        http.stat(f"{web}/nolength/digits")
    assert read(http, f"{web}/nolength/digits", 2, 5) == b"234"  # reading still works


@pytest.mark.parametrize("kind", ["files", "norange", "nolength"])
@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, DIGITS),
        (0, 10, DIGITS),
        (3, 7, b"3456"),
        (3, None, b"3456789"),
        (9, 10, b"9"),
        (4, 100, b"456789"),
        (5, 5, b""),
        (10, None, b""),
        (50, 60, b""),
    ],
)
def test_ranged_reads(
    http: HttpStorage, web: str, kind: str, start: int, end: int | None, expected: bytes
) -> None:
    assert read(http, f"{web}/{kind}/digits", start, end) == expected


@pytest.mark.parametrize("kind", ["files", "norange"])
def test_ranges_of_an_empty_object(http: HttpStorage, web: str, kind: str) -> None:
    assert read(http, f"{web}/{kind}/empty") == b""
    assert read(http, f"{web}/{kind}/empty", 0, 10) == b""


@pytest.mark.parametrize("kind", ["files", "norange"])
def test_ranged_reads_of_a_larger_object(http: HttpStorage, web: str, kind: str) -> None:
    data = b"".join(b"line %d\n" % i for i in range(10_000))
    start, end = 20_000, 50_000
    with http.open_read(f"{web}/{kind}/lines", start, end) as stream:
        first = stream.readline()
        rest = stream.read()
    assert first + rest == data[start:end]


def test_missing_objects(http: HttpStorage, web: str) -> None:
    url = f"{web}/files/missing"
    for call in (http.stat, http.get_bytes, http.open_read):
        with pytest.raises(NotFound, match="does not exist"):
            call(url)
    assert not http.exists(url)
    with pytest.raises(NotFound):
        http.open_read(url, 3, 3)


def test_error_statuses(http: HttpStorage, web: str) -> None:
    with pytest.raises(StorageError, match="403") as denied:
        http.get_bytes(f"{web}/status/403")
    assert f"{web}/status/403" in str(denied.value)
    assert not isinstance(denied.value, TemporaryStorageError | NotFound)
    with pytest.raises(TemporaryStorageError, match="503"):
        http.stat(f"{web}/status/503")
    with pytest.raises(NotFound):
        http.stat(f"{web}/status/410")


def test_unreachable_servers_are_temporary(http: HttpStorage) -> None:
    with pytest.raises(TemporaryStorageError, match="Could not reach"):
        http.stat("http://127.0.0.1:9/nothing-listens-here")


def test_writes_are_refused(http: HttpStorage, web: str, tmp_path: Path) -> None:
    local = tmp_path / "f"
    local.write_bytes(b"x")
    url = f"{web}/files/new"
    calls: list[Callable[[], None]] = [
        lambda: http.put_file(str(local), url),
        lambda: http.put_bytes(b"x", url),
        lambda: http.copy(f"{web}/files/digits", url),
        lambda: http.delete_prefix(url),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="read-only"):
            call()
    assert local.read_bytes() == b"x"
    assert not http.exists(url)
