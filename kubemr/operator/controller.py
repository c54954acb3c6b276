"""The operator's loop: reconcile each MapReduceJob that changed, apply the plan.

Caches of the MapReduceJobs and of the batch Jobs and pods it owns (kept by
list+watch, `informer`) put the key of every job that changed, or whose
workers did, on a work queue; the loop takes one key at a time, decides from
the caches (`reconcile`, pure) and applies the plan. Every job is queued
again each `resync` seconds. Level-triggered and restart-safe: it keeps no
state that the API does not hold (only which task failures it has already
reported as Events), so a new operator picks up where a dead one stopped,
including a job it left half-deployed.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from kubemr.errors import Conflict, JobNotFound, KubemrError, SpecError
from kubemr.kube import AlreadyExists, Invalid, Kube, KubeConfig, in_cluster_namespace
from kubemr.operator import logs
from kubemr.operator.desired import LABEL, OperatorSettings, names
from kubemr.operator.informer import Informer, Key, WorkQueue, key_of
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
        self.queue = WorkQueue()
        self.informers: dict[str, Informer] = {}
        self._uids: dict[Key, str] = {}  # of the jobs reconciled, to forget them when gone

    def start_informers(self) -> None:
        """Start the caches of MapReduceJobs, worker Jobs and worker pods (`informer`)."""
        ns = self.config.namespace
        kube = self.kube

        def owner(obj: dict[str, Any]) -> Key | None:
            job = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL)
            return (key_of(obj)[0], str(job)) if job else None

        def track(kind: str, what: str) -> Informer:
            return Informer(
                what,
                lambda: kube.list_owned(kind, ns, LABEL),
                lambda version, timeout: kube.watch_owned(kind, ns, LABEL, version, timeout),
                owner,
                self.queue.add,
                self.stopping,
            )

        def watch_jobs(version: str, timeout: int) -> Iterator[tuple[str, dict[str, Any]]]:
            for kind, obj in kube.watch_jobs(ns, version, timeout):
                self.metrics.watch_events.labels(kind).inc()
                yield kind, obj

        self.informers = {
            "jobs": Informer(
                "MapReduceJobs",
                lambda: kube.list_jobs(ns),
                watch_jobs,
                key_of,
                self.queue.add,
                self.stopping,
            ),
            "batch": track("jobs", "worker Jobs"),
            "pods": track("pods", "worker pods"),
        }
        for informer in self.informers.values():
            informer.start()

    def run(self) -> None:
        """Reconcile until asked to stop: one job at a time, as the queue hands them out, and
        every job again each resync."""
        self.start_informers()
        jobs = self.informers["jobs"]
        resync_at = time.monotonic() + self.config.resync_seconds
        while not self.stopping.is_set():
            informers = self.informers.values()
            self.metrics.listed(
                all(i.synced.is_set() for i in informers)
                and not any(i.failing.is_set() for i in informers)
            )
            self.metrics.queue_depth.set(len(self.queue))
            if time.monotonic() >= resync_at:
                for every in jobs.cached():
                    self.queue.add(every)
                resync_at = time.monotonic() + self.config.resync_seconds
            key = self.queue.get(timeout=1.0)
            if key is not None:
                self.process(key)

    def process(self, key: Key) -> None:
        """Reconcile the job `key` as the cache has it, or forget it if it is gone."""
        obj = self.informers["jobs"].get(key)
        if obj is None:
            uid = self._uids.pop(key, None)
            if uid is not None:
                self.forget(uid)
            return
        self._uids[key] = str(obj["metadata"].get("uid"))
        self.reconcile(obj)

    def forget(self, uid: str) -> None:
        """Drop what this operator remembers of a deleted job."""
        self._deployers.pop(uid, None)
        self._progress_at.pop(uid, None)
        self._reported = {key for key in self._reported if key[0] != uid}
        self.metrics.forget(uid)

    def observe(self, obj: dict[str, Any]) -> Observed:
        """What the job's owned objects look like: from the caches once they are filled, else
        (before, or when no informers run) asked of the API server."""
        ns = obj["metadata"]["namespace"]
        name = obj["metadata"]["name"]
        batch_cache, pod_cache = self.informers.get("batch"), self.informers.get("pods")
        batch: dict[str, Any] | None
        if batch_cache and pod_cache and batch_cache.synced.is_set() and pod_cache.synced.is_set():
            batch = batch_cache.get((ns, names(name)["job"]))
            pods = pod_cache.owned_by((ns, name)) if batch is not None else []
        else:
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
    if elector is None:
        controller.run()
    else:
        code = lead(controller, elector)
    for server in servers:
        server.stop()
    return code


def lead(controller: Controller, elector: LeaderElector) -> int:
    """Run the controller while this process holds the leader Lease: wait for it (a ready
    standby), reconcile until stopped or the Lease is lost, then release it. Returns the exit
    code: 1 when the Lease was lost (restarted, the process stands for election again)."""
    metrics = controller.metrics
    metrics.standing_by(True)
    if not elector.acquire(controller.stopping, metrics.beat):
        return 0
    metrics.standing_by(False)
    metrics.leader.set(1)
    elector.keep(controller.stopping, on_lost=controller.stopping.set)
    controller.run()
    metrics.leader.set(0)
    if elector.lost.is_set():
        log.error("stopped: this operator is no longer the leader")
        return 1
    elector.release()
    return 0
