"""What the operator tells a monitoring system: Prometheus metrics and health probes.

As controller-runtime operators do, `kubemr operator` can serve `/metrics`
(`--metrics-bind-address`, the Prometheus text format) and `/healthz` and
`/readyz` (`--health-probe-bind-address`, for the Deployment's liveness and
readiness probes). Both are off unless an address is given; the Deployment in
manifests/ turns them on at :8080 and :8081.

Metrics, in controller-runtime's names where one exists:

    kubemr_operator_reconcile_total{result}      reconciles: success, error, conflict
    kubemr_operator_reconcile_errors_total       reconciles that ended in an error
    kubemr_operator_reconcile_time_seconds       how long each took (histogram)
    kubemr_operator_watch_events_total{type}     watch events received: ADDED, MODIFIED...
    kubemr_jobs{phase}                           MapReduceJobs by phase, as last seen
    kubemr_tasks_completed_total{stage}          map and reduce tasks committed
    kubemr_task_attempts_failed_total            failed attempts (each TaskFailed Event)
    kubemr_operator_workqueue_depth              jobs waiting to be reconciled
    kubemr_operator_leader                       1 while it holds the leader Lease

Liveness is the reconcile loop's heartbeat (it beats at least every second
while it waits for work); readiness is every cache filled (the jobs, worker
Jobs and pods listed) and none retrying after a failed list or watch; a
replica waiting for the leader Lease is ready (so a rolling update, whose old
replica holds the Lease, can finish).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kubemr import state

log = logging.getLogger("kubemr.operator")


class Metrics:
    """The operator's metrics and health, in a registry of their own."""

    def __init__(self, stale_after: float = 90.0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "kubemr_operator_reconcile", "Reconciles by result.", ["result"], registry=r
        )
        self.errors = Counter(
            "kubemr_operator_reconcile_errors", "Reconciles that ended in an error.", registry=r
        )
        self.duration = Histogram(
            "kubemr_operator_reconcile_time_seconds", "Time per reconcile.", registry=r
        )
        self.watch_events = Counter(
            "kubemr_operator_watch_events", "Watch events by type.", ["type"], registry=r
        )
        self.jobs = Gauge("kubemr_jobs", "MapReduceJobs by phase.", ["phase"], registry=r)
        self.tasks = Counter(
            "kubemr_tasks_completed", "Map and reduce tasks committed.", ["stage"], registry=r
        )
        self.failed_attempts = Counter(
            "kubemr_task_attempts_failed", "Failed task attempts.", registry=r
        )
        self.queue_depth = Gauge(
            "kubemr_operator_workqueue_depth", "Jobs waiting to be reconciled.", registry=r
        )
        self.leader = Gauge(
            "kubemr_operator_leader", "1 while this operator holds the leader Lease.", registry=r
        )
        self.stale_after = stale_after
        self._lock = threading.Lock()
        self._phases: dict[str, str] = {}
        self._known: set[str] = set()
        self._done: dict[tuple[str, str], int] = {}
        self._beat = time.monotonic()
        self._listed = False
        self._failing = False
        self._standby = False

    # -- what the controller reports ---------------------------------------------------------

    def beat(self) -> None:
        """The watch loop is alive."""
        self._beat = time.monotonic()

    def listed(self, ok: bool) -> None:
        """Whether every cache is filled and none is retrying a failed list or watch."""
        self.beat()
        with self._lock:
            self._listed = self._listed or ok
            self._failing = not ok

    def seen(self, doc: Mapping[str, Any]) -> None:
        """The latest version of a job: its phase, and the tasks committed since last seen."""
        uid = str(doc.get("metadata", {}).get("uid"))
        phase = str(state.status_of(doc).get("phase") or "New")
        with self._lock:
            self._phases[uid] = phase
            for stage in ("map", "reduce"):
                try:
                    done, _ = state.counts(doc, stage)
                except Exception:  # a status no decider can read: counted when it can be
                    continue
                before = self._done.get((uid, stage), 0)
                if done > before:
                    self.tasks.labels(stage).inc(done - before)
                self._done[(uid, stage)] = done
            self._set_phases()

    def forget(self, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)
            for stage in ("map", "reduce"):
                self._done.pop((uid, stage), None)
            self._set_phases()

    def _set_phases(self) -> None:
        counts: dict[str, int] = {}
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        self._known |= set(counts)
        for phase in self._known:  # a phase no job is in any more shows 0, not nothing
            self.jobs.labels(phase).set(counts.get(phase, 0))

    def reconciled(self, result: str, seconds: float) -> None:
        self.reconciles.labels(result).inc()
        self.duration.observe(seconds)
        if result == "error":
            self.errors.inc()

    # -- what the probes ask -----------------------------------------------------------------

    def alive(self) -> bool:
        return time.monotonic() - self._beat <= self.stale_after

    def standing_by(self, waiting: bool) -> None:
        """Waiting for the leader Lease (or not any more). A standby is ready: it is healthy
        and doing what it should, and a rolling update must not wait for it to lead (the
        old replica holds the Lease until the new one is ready), as controller-runtime's
        readiness does not depend on leading either."""
        self.beat()
        with self._lock:
            self._standby = waiting

    def ready(self) -> bool:
        with self._lock:
            if self._standby:
                return self.alive()
            return self._listed and not self._failing and self.alive()


class Server:
    """/metrics, /healthz and /readyz over HTTP, on a thread of their own."""

    def __init__(self, metrics: Metrics, address: str, paths: tuple[str, ...]) -> None:
        host, _, port = address.rpartition(":")
        metrics_ref, served = metrics, paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path not in served:
                    self._answer(404, b"not found\n", "text/plain")
                elif path == "/metrics":
                    self._answer(200, generate_latest(metrics_ref.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = metrics_ref.alive()
                    self._answer(200 if ok else 500, b"ok\n" if ok else b"stalled\n", "text/plain")
                else:
                    ok = metrics_ref.ready()
                    self._answer(
                        200 if ok else 503, b"ok\n" if ok else b"not ready\n", "text/plain"
                    )

            def _answer(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the operator's own log

        self.httpd = ThreadingHTTPServer((host or "0.0.0.0", int(port or 0)), Handler)
        self.httpd.daemon_threads = True
        bound_host, bound_port = self.httpd.server_address[:2]
        self.address = f"{bound_host!s}:{bound_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> Server:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(metrics: Metrics, metrics_address: str | None, probe_address: str | None) -> list[Server]:
    """Start the servers the addresses ask for: one for both when they are the same address,
    unless its port is 0 (each then gets a port of its own, of the kernel's choosing)."""
    wanted: list[tuple[str, list[str]]] = []
    for address, paths in (
        (metrics_address, ["/metrics"]),
        (probe_address, ["/healthz", "/readyz"]),
    ):
        if not address:
            continue
        same = [w for w in wanted if w[0] == address and not address.endswith(":0")]
        if same:
            same[0][1].extend(paths)
        else:
            wanted.append((address, list(paths)))
    servers = []
    for address, paths in wanted:
        server = Server(metrics, address, tuple(paths)).start()
        log.info("serving %s on %s", " ".join(paths), server.address)
        servers.append(server)
    return servers
