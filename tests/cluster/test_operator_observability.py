"""What the operator shows a monitoring system, on the devcluster's real apiserver: `kubemr
operator` run as a process here (as a developer runs it against a kubeconfig) serves /readyz,
/healthz and /metrics on the addresses given, logs JSON lines naming the job, and counts what it
reconciled. (The Deployment's probes are declared in manifests/; the devcluster's node does not
run probes.)"""

from __future__ import annotations

import signal

import pytest
from devcluster_support import Cluster, wait_until
from operator_support import OperatorProcess, failing_job, fetch, metric

from kubemr.kube import Kube, KubeConfig

pytestmark = pytest.mark.cluster


def test_probes_metrics_and_json_logs(
    cluster: Cluster, namespace: str, crd: None, quiet_cluster_operator: None
) -> None:
    operator = OperatorProcess(cluster, namespace)
    try:
        metrics_at = wait_until("the metrics address", lambda: operator.served("/metrics"), 30)
        probes_at = wait_until(
            "the probes address", lambda: operator.served("/healthz /readyz"), 30
        )
        assert metrics_at.startswith("127.0.0.1:") and probes_at.startswith("127.0.0.1:")
        wait_until("readiness", lambda: fetch(f"http://{probes_at}/readyz")[0] == 200, 30)
        assert fetch(f"http://{probes_at}/healthz") == (200, "ok\n")
        assert fetch(f"http://{probes_at}/metrics")[0] == 404  # each address serves its own
        name = failing_job(Kube(KubeConfig(kubeconfig=cluster.kubeconfig)), namespace, "observed")

        def counted() -> str | None:
            code, text = fetch(f"http://{metrics_at}/metrics")
            failed = metric(text, "kubemr_jobs", phase="Failed")
            return text if code == 200 and failed == 1.0 else None

        text = wait_until("the failed job in the metrics", counted, 30)
        assert (metric(text, "kubemr_operator_reconcile_total", result="success") or 0) >= 2
        assert (metric(text, "kubemr_operator_watch_events_total", type="ADDED") or 0) >= 1
        assert metric(text, "kubemr_operator_reconcile_time_seconds_count") is not None
        about = wait_until(
            "a log line about the job",
            lambda: [x for x in operator.about(name) if "Failed" in x["msg"]],
            30,
        )
        assert about[0]["namespace"] == namespace and about[0]["level"] in ("info", "warning")
    finally:
        operator.proc.send_signal(signal.SIGTERM)
        code = operator.proc.wait(60)
    assert code == 0
