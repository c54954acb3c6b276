"""Leader election on the devcluster's real apiserver: two `kubemr operator --leader-elect`
processes, as two replicas of the Deployment would be. One holds the Lease and acts; the other
waits and does nothing; when the leader is killed (SIGKILL: no release) the standby takes over
within the lease duration and handles the next job; a leader stopped cleanly gives the Lease up
at once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
from devcluster_support import Cluster, wait_until
from operator_support import fetch, metric

from kubemr.kube import Kube, KubeConfig

pytestmark = pytest.mark.cluster

LEASE_SECONDS = 4


class Operator:
    """A `kubemr operator` process, its JSON log lines collected."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubemr",
                "operator",
                "-n",
                namespace,
                "--kubeconfig",
                cluster.kubeconfig,
                "--leader-elect",
                "--leader-election-namespace",
                namespace,
                "--leader-elect-lease-duration",
                str(LEASE_SECONDS),
                "--metrics-bind-address",
                "127.0.0.1:0",
                "--health-probe-bind-address",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(json.loads(line))

    def said(self, text: str) -> bool:
        return any(text in x["msg"] for x in list(self.lines))

    def about(self, name: str) -> list[str]:
        return [x["msg"] for x in list(self.lines) if x.get("name") == name]

    def served(self, paths: str) -> str | None:
        found = [x["msg"] for x in list(self.lines) if x["msg"].startswith(f"serving {paths} on ")]
        return found[0].rsplit(" ", 1)[1] if found else None

    def ready(self) -> bool:
        probes = self.served("/healthz /readyz")
        return probes is not None and fetch(f"http://{probes}/readyz")[0] == 200

    def leader_metric(self) -> float | None:
        found = [x["msg"] for x in list(self.lines) if x["msg"].startswith("serving /metrics on ")]
        if not found:
            return None
        return metric(
            fetch(f"http://{found[0].rsplit(' ', 1)[1]}/metrics")[1], "kubemr_operator_leader"
        )


def failing_job(kube: Kube, namespace: str) -> str:
    name = f"led-{uuid.uuid4().hex[:6]}"
    kube.create_job(
        namespace,
        {
            "apiVersion": "kubemr.io/v1alpha1",
            "kind": "MapReduceJob",
            "metadata": {"name": name},
            "spec": {"inputs": ["opaque:x"], "map": "cat"},  # no output: the leader fails it
        },
    )
    return name


def test_one_leader_acts_and_a_standby_takes_over(
    cluster: Cluster,
    namespace: str,
    crd: None,
    quiet_cluster_operator: None,
) -> None:
    kube = Kube(KubeConfig(kubeconfig=cluster.kubeconfig))
    first = Operator(cluster, namespace)
    wait_until("the first operator to lead", lambda: first.said("became the leader"), 30)
    second = Operator(cluster, namespace)
    try:
        wait_until("the second to wait", lambda: second.said("waiting to become the leader"), 30)
        # A standby is ready (a rolling update waits for the new replica's readiness while
        # the old one holds the Lease), and its leader gauge says it does not lead.
        wait_until("the standby to be ready", second.ready, 30)
        assert second.leader_metric() == 0.0
        lease = kube.get_lease(namespace, "kubemr-operator")
        assert lease is not None and lease["spec"]["leaseDurationSeconds"] == LEASE_SECONDS
        assert wait_until("the leader gauge", lambda: first.leader_metric() == 1.0, 10)
        name = failing_job(kube, namespace)
        wait_until("the leader to fail the job", lambda: first.about(name), 30)
        time.sleep(1)
        assert not second.about(name) and not second.said("became the leader")

        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        killed = time.monotonic()
        wait_until("the standby to take over", lambda: second.said("became the leader"), 30)
        took = time.monotonic() - killed
        assert took <= LEASE_SECONDS + 4, took  # the lease, plus a retry and a read
        holder = kube.get_lease(namespace, "kubemr-operator")
        assert holder is not None and holder["spec"]["leaseTransitions"] >= 1
        after = failing_job(kube, namespace)
        wait_until("the new leader to fail the next job", lambda: second.about(after), 30)

        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(30) == 0
        released = kube.get_lease(namespace, "kubemr-operator")
        assert released is not None and released["spec"]["holderIdentity"] in ("", None)
    finally:
        for op in (first, second):
            if op.proc.poll() is None:
                op.proc.kill()
                op.proc.wait(10)
