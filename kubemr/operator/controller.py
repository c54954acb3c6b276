"""The operator's loop: list + watch MapReduceJobs, reconcile each, apply the plan.

Level-triggered and restart-safe: it keeps no state that the API does not
hold (only which task failures it has already reported as Events), so a new
operator picks up where a dead one stopped, including a job it left
half-deployed. It relists every `resync` seconds and whenever a watch ends
or expires (410 Gone), so missed events cost at most one resync.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from kubemr.errors import Conflict, JobNotFound, KubemrError, SpecError
from kubemr.kube import AlreadyExists, Gone, Invalid, Kube, KubeConfig, in_cluster_namespace
from kubemr.operator import logs
from kubemr.operator.desired import LABEL, OperatorSettings, names
from kubemr.operator.leader import Election, LeaderElector
from kubemr.operator.logs import job_fields
from kubemr.operator.metrics import Metrics, serve
from kubemr.operator.reconcile import (
    DEPLOY_LEASE_SECONDS,
    Observed,
    Plan,
    reconcile,
    refused,
)

log = logging.getLogger("kubemr.operator")


@dataclass(frozen=True)
class ControllerConfig:
    namespace: str | None = None  # None: every namespace
    resync_seconds: int = 30
    settings: OperatorSettings = field(default_factory=OperatorSettings)
    identity: str = ""


class Controller:
    def __init__(
        self, kube: Kube, config: ControllerConfig, metrics: Metrics | None = None
    ) -> None:
        self.kube = kube
        self.config = config
        self.metrics = metrics or Metrics(stale_after=max(90.0, 3.0 * config.resync_seconds))
        self.me = (
            config.identity or f"{os.environ.get('HOSTNAME', 'operator')}-{uuid.uuid4().hex[:6]}"
        )
        self.stopping = threading.Event()
        # Events already recorded (a watch may show the same state more than once).
        self._reported: set[tuple[str, str, str]] = set()
        # Each job's deployer lease, and when this operator first saw it as it is.
        self._deployers: dict[str, tuple[str, float]] = {}
        # When this operator last wrote each job's status.progress.
        self._progress_at: dict[str, float] = {}

    def run(self) -> None:
        """Reconcile until asked to stop."""
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                items, version = self.kube.list_jobs(self.config.namespace)
                self.metrics.listed(True)
                for obj in items:
                    self.reconcile(obj)
                self._watch(version)
                backoff = 1.0
            except Gone:
                continue
            except KubemrError as exc:
                self.metrics.listed(False)
                log.warning("listing or watching failed (%s); retrying in %.0fs", exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _watch(self, version: str) -> None:
        deadline = time.monotonic() + self.config.resync_seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            timeout = max(1, int(deadline - time.monotonic()))
            for kind, obj in self.kube.watch_jobs(self.config.namespace, version, timeout):
                self.metrics.watch_events.labels(kind).inc()
                self.metrics.beat()
                if self.stopping.is_set():
                    return
                if kind == "BOOKMARK":
                    version = obj["metadata"]["resourceVersion"]
                    continue
                version = obj["metadata"].get("resourceVersion", version)
                if kind in ("ADDED", "MODIFIED"):
                    self.reconcile(obj)
                elif kind == "DELETED":
                    self.forget(str(obj["metadata"].get("uid")))
            self.metrics.beat()

    def forget(self, uid: str) -> None:
        """Drop what this operator remembers of a deleted job."""
        self._deployers.pop(uid, None)
        self._progress_at.pop(uid, None)
        self._reported = {key for key in self._reported if key[0] != uid}
        self.metrics.forget(uid)

    def observe(self, obj: dict[str, Any]) -> Observed:
        ns = obj["metadata"]["namespace"]
        name = obj["metadata"]["name"]
        batch = self.kube.get_batch_job(ns, names(name)["job"])
        pods = self.kube.list_pods(ns, f"{LABEL}={name}") if batch is not None else []
        uid = str(obj["metadata"].get("uid"))
        written = self._progress_at.get(uid)
        return Observed(
            batch_job=batch,
            pods=pods,
            deployer_stale=self._deployer_stale(obj),
            progress_age=float("inf") if written is None else time.monotonic() - written,
        )

    def _deployer_stale(self, obj: dict[str, Any]) -> bool:
        """Whether the job's deployer lease has stayed as it is for its duration since this
        operator first saw it so, by this operator's own clock (never another's)."""
        uid = str(obj["metadata"].get("uid"))
        deployer = (obj.get("status") or {}).get("deployer")
        if not isinstance(deployer, dict):
            self._deployers.pop(uid, None)
            return False
        now = time.monotonic()
        key = json.dumps(deployer, sort_keys=True)
        seen = self._deployers.get(uid)
        if seen is None or seen[0] != key:
            self._deployers[uid] = (key, now)
            return False
        return now - seen[1] >= float(deployer.get("l") or DEPLOY_LEASE_SECONDS)

    def reconcile(self, obj: dict[str, Any]) -> None:
        started = time.monotonic()
        result = self._reconcile(obj)
        self.metrics.reconciled(result, time.monotonic() - started)

    def _reconcile(self, obj: dict[str, Any]) -> str:
        """Reconcile one job from its latest version; returns how it went, for the metrics:
        success, conflict (it changed under us five times) or error."""
        ns = obj["metadata"]["namespace"]
        name = obj["metadata"]["name"]
        for _ in range(5):
            try:
                self.metrics.seen(obj)
                plan = reconcile(obj, self.observe(obj), self.config.settings, self.me, time.time())
                self.apply(obj, plan)
                return "success"
            except Conflict:
                # The job changed under us: decide again from the latest version.
                try:
                    obj = self.kube.get_job(ns, name)
                except JobNotFound:
                    return "success"
            except JobNotFound:
                return "success"
            except SpecError as exc:
                log.warning("%s", exc, extra=job_fields(ns, name))
                return "error"
            except KubemrError as exc:
                log.warning("reconciling failed: %s", exc, extra=job_fields(ns, name))
                return "error"
            except Exception:  # one job must never take the operator down for every other job
                log.exception("reconciling failed unexpectedly", extra=job_fields(ns, name))
                return "error"
        return "conflict"

    def _first(self, *key: str) -> bool:
        k = (key[0], key[1], key[2])
        if k in self._reported:
            return False
        self._reported.add(k)
        return True

    def apply(self, obj: dict[str, Any], plan: Plan) -> None:
        ns = obj["metadata"]["namespace"]
        name = obj["metadata"]["name"]
        for child in plan.create:
            try:
                self.kube.create(child)
                log.info(
                    "created %s %s",
                    child["kind"],
                    child["metadata"]["name"],
                    extra=job_fields(ns, name),
                )
            except AlreadyExists:
                pass
            except Invalid as exc:
                log.warning("%s", exc, extra=job_fields(ns, name))
                self.apply(obj, refused(obj, str(exc), time.time()))
                return
        uid = str(obj["metadata"].get("uid"))
        for patch in plan.patches:
            self.kube.patch_job_status(ns, name, patch)
            if any(op.get("path") == "/status/progress" for op in patch):
                self._progress_at[uid] = time.monotonic()
        for reason, note, warning in plan.events:
            if self._first(uid, reason, note):
                log.info("%s: %s", reason, note, extra=job_fields(ns, name))
                self.kube.event(obj, reason, note, warning)
        for task, attempt, error in plan.task_failures:
            if self._first(uid, task, str(attempt)):
                self.metrics.failed_attempts.inc()
                self.kube.event(obj, "TaskFailed", f"{task} failed: {error}", warning=True)
        if plan.delete_batch_job:
            self.kube.delete_batch_job(ns, names(name)["job"])
        if plan.delete_job:
            log.info("ttlSecondsAfterFinished passed; deleting", extra=job_fields(ns, name))
            self.kube.delete_job(ns, name)


def cmd_operator(args: argparse.Namespace) -> int:
    """`kubemr operator`: settings from the flags and the environment, then `main`."""
    defaults = OperatorSettings()
    lease = os.environ.get("KUBEMR_WORKER_LEASE_SECONDS", "")
    settings = OperatorSettings(
        image=args.image or os.environ.get("KUBEMR_IMAGE") or defaults.image,
        lease_seconds=int(lease) if lease.isdigit() and int(lease) >= 2 else defaults.lease_seconds,
        s3_endpoint=os.environ.get("KUBEMR_S3_ENDPOINT") or None,
    )
    return main(
        args.namespace,
        settings,
        args.kubeconfig,
        args.context,
        args.log_format,
        args.metrics_bind_address,
        args.health_probe_bind_address,
        _election(args),
    )


def _election(args: argparse.Namespace) -> tuple[str | None, float] | None:
    """(namespace, lease seconds) of the leader election --leader-elect asks for."""
    if not args.leader_elect:
        return None
    return args.leader_election_namespace, float(args.leader_elect_lease_duration)


def main(
    namespace: str | None,
    settings: OperatorSettings,
    kubeconfig: str | None,
    context: str | None,
    log_format: str | None = None,
    metrics_address: str | None = None,
    probe_address: str | None = None,
    election: tuple[str | None, float] | None = None,
) -> int:
    """`kubemr operator`: run the controller until SIGTERM, serving metrics and probes at
    the addresses given."""
    logs.configure(log_format)
    in_cluster = kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    kube = Kube(KubeConfig(kubeconfig=kubeconfig, context=context, in_cluster=in_cluster))
    controller = Controller(kube, ControllerConfig(namespace=namespace, settings=settings))
    servers = serve(controller.metrics, metrics_address, probe_address)
    elector = None
    if election is not None:
        where, seconds = election
        lease_ns = where or (in_cluster_namespace() if in_cluster else None) or "kubemr-system"
        elector = LeaderElector(
            kube,
            Election(
                lease_ns,
                controller.me,
                lease_seconds=seconds,
                renew_deadline=seconds * 2 / 3,
                retry=max(0.5, seconds / 7.5),
            ),
        )

    def stop(signum: int, frame: FrameType | None) -> None:
        controller.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("kubemr operator %s watching %s", controller.me, namespace or "all namespaces")
    code = 0
    if elector is None or elector.acquire(controller.stopping):
        if elector is not None:
            controller.metrics.leader.set(1)
            elector.keep(controller.stopping, on_lost=controller.stopping.set)
        controller.run()
        if elector is not None and elector.lost.is_set():
            log.error("stopped: this operator is no longer the leader")
            code = 1  # restarted, it stands for election again
        elif elector is not None:
            elector.release()
        controller.metrics.leader.set(0)
    for server in servers:
        server.stop()
    return code
