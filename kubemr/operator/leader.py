"""Leader election with a coordination.k8s.io Lease, as client-go's leaderelection does it.

Several operator replicas may run (a rolling update makes two for a while;
two make a quick takeover when a node dies); only the one holding the Lease
`kubemr-operator` in its namespace reconciles. The others wait, and take the
Lease when its holder has not renewed it for `leaseDurationSeconds`, judged
by their own clock from when they last saw the record change (never by
comparing another machine's timestamps). The holder renews it every
`retry` seconds; if it cannot for `renew_deadline` seconds it stops leading
and the process exits, as controller-runtime's managers do, so that it never
acts on a lease another may now hold. Every write goes through the Lease's
resourceVersion, so of two candidates only one wins a race.

The per-job deploy lease (reconcile.py) stays what guarantees that a job is
deployed once: this election only keeps idle replicas from doing work twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubemr.errors import Conflict, KubemrError
from kubemr.kube import Kube

log = logging.getLogger("kubemr.operator")

LEASE_NAME = "kubemr-operator"


@dataclass(frozen=True)
class Election:
    """client-go's defaults: a 15 s lease, renewed every 2 s, given up after 10 s of failures."""

    namespace: str
    identity: str
    name: str = LEASE_NAME
    lease_seconds: float = 15.0
    renew_deadline: float = 10.0
    retry: float = 2.0


def _micro(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Takes and keeps the Lease; `leading` is set while this process holds it."""

    def __init__(self, kube: Kube, election: Election) -> None:
        self.kube = kube
        self.election = election
        self.leading = threading.Event()
        self.lost = threading.Event()
        self._observed: tuple[str, float] | None = None  # (record as read, when by our clock)

    def _record(self, lease: dict[str, Any] | None) -> str:
        spec = (lease or {}).get("spec") or {}
        return (
            f"{spec.get('holderIdentity')}|{spec.get('renewTime')}|{spec.get('leaseTransitions')}"
        )

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True if this process holds the Lease afterwards."""
        e = self.election
        now = time.time()
        lease = self.kube.get_lease(e.namespace, e.name)
        record = self._record(lease)
        seen_at = time.monotonic()
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, seen_at)
        spec = dict((lease or {}).get("spec") or {})
        holder = spec.get("holderIdentity")
        duration = float(spec.get("leaseDurationSeconds") or e.lease_seconds)
        expired = seen_at - self._observed[1] > duration
        if lease is not None and holder and holder != e.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder != e.identity:
            transitions += 1 if lease is not None else 0
            spec["acquireTime"] = _micro(now)
        spec.update(
            holderIdentity=e.identity,
            leaseDurationSeconds=int(e.lease_seconds),
            renewTime=_micro(now),
            leaseTransitions=transitions,
        )
        metadata: dict[str, Any] = {"name": e.name, "namespace": e.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }
        written = self.kube.write_lease(e.namespace, body)
        self._observed = (self._record(written), time.monotonic())
        return True

    def acquire(
        self, stopping: threading.Event, waiting: Callable[[], None] = lambda: None
    ) -> bool:
        """Wait until this process holds the Lease (True), or `stopping` is set (False);
        `waiting` is called before each try (the liveness heartbeat of a standby)."""
        announced = False
        while not stopping.is_set():
            waiting()
            try:
                if self.try_acquire_or_renew():
                    log.info(
                        "became the leader (Lease %s/%s)",
                        self.election.namespace,
                        self.election.name,
                    )
                    self.leading.set()
                    return True
            except (Conflict, KubemrError) as exc:
                log.info("could not take the leader Lease yet: %s", exc)
            if not announced:
                log.info(
                    "waiting to become the leader (Lease %s/%s)",
                    self.election.namespace,
                    self.election.name,
                )
                announced = True
            stopping.wait(self.election.retry)
        return False

    def keep(self, stopping: threading.Event, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew the Lease every `retry` seconds on a thread; when it cannot for
        `renew_deadline`, or another holds it, stop leading and call `on_lost`."""

        def renew() -> None:
            last_ok = time.monotonic()
            while not stopping.wait(self.election.retry):
                try:
                    if self.try_acquire_or_renew():
                        last_ok = time.monotonic()
                        continue
                    log.error("another operator holds the leader Lease now")
                except (Conflict, KubemrError) as exc:
                    if time.monotonic() - last_ok < self.election.renew_deadline:
                        continue
                    log.error(
                        "could not renew the leader Lease for %.0fs: %s",
                        self.election.renew_deadline,
                        exc,
                    )
                self.leading.clear()
                self.lost.set()
                on_lost()
                return

        thread = threading.Thread(target=renew, name="leader-lease", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """On a clean shutdown, give the Lease up at once (client-go's ReleaseOnCancel), so a
        standby takes over without waiting out the lease."""
        if not self.leading.is_set() or self.lost.is_set():
            return
        e = self.election
        try:
            lease = self.kube.get_lease(e.namespace, e.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != e.identity:
                return
            spec = dict(lease["spec"])
            spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_micro(time.time()))
            lease["spec"] = spec
            self.kube.write_lease(e.namespace, lease)
        except KubemrError as exc:
            log.warning("could not release the leader Lease: %s", exc)
        self.leading.clear()
