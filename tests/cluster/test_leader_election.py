"""Leader election on the devcluster's real apiserver: two `kubemr operator --leader-elect`
processes, as two replicas of the Deployment would be. One holds the Lease and acts; the other
waits and does nothing; when the leader is killed (SIGKILL: no release) the standby takes over
within the lease duration and handles the next job; a leader stopped cleanly gives the Lease up
at once."""

from __future__ import annotations

import signal
import time

import pytest
from devcluster_support import Cluster, wait_until
from operator_support import OperatorProcess, failing_job

from kubemr.kube import Kube, KubeConfig

pytestmark = pytest.mark.cluster

LEASE_SECONDS = 4


def election(namespace: str) -> list[str]:
    return [
        "--leader-elect",
        "--leader-election-namespace",
        namespace,
        "--leader-elect-lease-duration",
        str(LEASE_SECONDS),
    ]


def test_one_leader_acts_and_a_standby_takes_over(
    cluster: Cluster,
    namespace: str,
    crd: None,
    quiet_cluster_operator: None,
) -> None:
    kube = Kube(KubeConfig(kubeconfig=cluster.kubeconfig))
    first = OperatorProcess(cluster, namespace, *election(namespace))
    wait_until("the first operator to lead", lambda: first.said("became the leader"), 30)
    second = OperatorProcess(cluster, namespace, *election(namespace))
    try:
        wait_until("the second to wait", lambda: second.said("waiting to become the leader"), 30)
        # A standby is ready (a rolling update waits for the new replica's readiness while
        # the old one holds the Lease), and its leader gauge says it does not lead.
        wait_until("the standby to be ready", second.ready, 30)
        assert second.leader_metric() == 0.0
        lease = kube.get_lease(namespace, "kubemr-operator")
        assert lease is not None and lease["spec"]["leaseDurationSeconds"] == LEASE_SECONDS
        assert wait_until("the leader gauge", lambda: first.leader_metric() == 1.0, 10)
        name = failing_job(kube, namespace, "led")
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
        after = failing_job(kube, namespace, "led")
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
