"""The kubelet's HTTPS log endpoint, so ``kubectl logs`` works against the agent.

kube-apiserver proxies ``pods/log`` to ``https://<node>:<port>/containerLogs/
<namespace>/<pod>/<container>`` with its kubelet client certificate; this
server checks that certificate against the cluster CA and serves the
container's log file (``follow``, ``previous``, ``tailLines`` and
``limitBytes`` are honoured).
"""

from __future__ import annotations

import http.server
import logging
import ssl
import threading
import time
import urllib.parse
from collections import deque
from pathlib import Path
from typing import Protocol

from .pods import PodWorker

log = logging.getLogger("nodeagent.logs")


class Pods(Protocol):
    def find(self, namespace: str, name: str) -> PodWorker | None: ...


def _tail(path: Path, lines: int) -> bytes:
    with path.open("rb") as f:
        return b"".join(deque(f, maxlen=lines))


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``GET /containerLogs/...``; everything else is 404."""

    pods: Pods

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404, "only /containerLogs is served by the devcluster node agent")
            return
        _, namespace, name, container = parts
        query = urllib.parse.parse_qs(url.query)

        def flag(key: str) -> bool:
            return query.get(key, ["false"])[0] in ("true", "1")

        worker = self.pods.find(namespace, name)
        path = worker.log_file(container, flag("previous")) if worker else None
        if worker is None or path is None or not path.exists():
            self.send_error(404, f"no log for container {container} of pod {namespace}/{name}")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        limit = int(query.get("limitBytes", ["0"])[0]) or None
        if "tailLines" in query:
            data = _tail(path, int(query["tailLines"][0]))
            self.wfile.write(data[:limit] if limit else data)
            offset = path.stat().st_size
        else:
            with path.open("rb") as f:
                data = f.read(limit) if limit else f.read()
            self.wfile.write(data)
            offset = len(data)
        if not flag("follow") or flag("previous"):
            return
        while True:
            running = worker.is_running(container) and worker.log_file(container, False) == path
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            if chunk:
                self.wfile.write(chunk)
                self.wfile.flush()
                offset += len(chunk)
            elif not running:
                return
            else:
                time.sleep(0.2)


def serve(pods: Pods, port: int, cert: str, key: str, ca: str) -> None:
    """Serve logs on 127.0.0.1:port in a background thread."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    handler = type("BoundHandler", (Handler,), {"pods": pods})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="logs", daemon=True).start()
