"""The node agent's only door to kube-apiserver: JSON over HTTPS with a client cert.

The standard library is enough for the handful of calls a kubelet makes
(get, list, watch, patch status, bind, request a token, delete), and keeps
the agent free of third-party packages.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

Obj = dict[str, Any]


class ApiError(Exception):
    """kube-apiserver answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        message = body
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            pass
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


class Api:
    """A thread-safe client: one keep-alive connection per thread."""

    def __init__(self, server: str, ca: str, cert: str, key: str) -> None:
        url = urllib.parse.urlsplit(server)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 443
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.load_cert_chain(cert, key)
        self._local = threading.local()

    def _connect(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        """Send one request and return the decoded JSON answer."""
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._connect(30)
                self._local.conn = conn
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                text = resp.read().decode()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status >= 400:
                raise ApiError(method, path, resp.status, text)
            return json.loads(text) if text else {}
        raise AssertionError("unreachable")

    def get(self, path: str, query: dict[str, str] | None = None) -> Obj:
        return self.request("GET", path, query=query)

    def merge_patch(self, path: str, body: Obj) -> Obj:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def watch(self, path: str, query: dict[str, str]) -> Iterator[Obj]:
        """Yield watch events until the server ends the stream."""
        query = {**query, "watch": "1", "allowWatchBookmarks": "true"}
        timeout = float(query.get("timeoutSeconds", "300")) + 30
        conn = self._connect(timeout)
        full = f"{path}?{urllib.parse.urlencode(query)}"
        try:
            conn.request("GET", full, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            if resp.status >= 400:
                raise ApiError("WATCH", path, resp.status, resp.read().decode())
            while True:
                try:
                    line = resp.readline()
                except TimeoutError:
                    return
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()
