"""What the operator shows a monitoring system, on the devcluster's real apiserver: `kubemr
operator` run as a process here (as a developer runs it against a kubeconfig) serves /readyz,
/healthz and /metrics on the addresses given, logs JSON lines naming the job, and counts what it
reconciled. (The Deployment's probes are declared in manifests/; the devcluster's node does not
run probes.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest
from devcluster_support import Cluster, wait_until
from operator_support import fetch, metric

from kubemr.kube import Kube, KubeConfig

pytestmark = pytest.mark.cluster


def test_probes_metrics_and_json_logs(
    cluster: Cluster, namespace: str, crd: None, quiet_cluster_operator: None
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubemr",
            "operator",
            "-n",
            namespace,
            "--kubeconfig",
            cluster.kubeconfig,
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
    lines: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(json.loads(line))  # every line is one JSON object

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:

        def address(paths: str) -> str | None:
            said = [x["msg"] for x in list(lines) if x["msg"].startswith(f"serving {paths} on ")]
            return said[0].rsplit(" ", 1)[1] if said else None

        metrics_at = wait_until("the metrics address", lambda: address("/metrics"), 30)
        probes_at = wait_until("the probes address", lambda: address("/healthz /readyz"), 30)
        assert metrics_at.startswith("127.0.0.1:") and probes_at.startswith("127.0.0.1:")
        wait_until("readiness", lambda: fetch(f"http://{probes_at}/readyz")[0] == 200, 30)
        assert fetch(f"http://{probes_at}/healthz") == (200, "ok\n")
        assert fetch(f"http://{probes_at}/metrics")[0] == 404  # each address serves its own
        name = f"observed-{uuid.uuid4().hex[:6]}"
        Kube(KubeConfig(kubeconfig=cluster.kubeconfig)).create_job(
            namespace,
            {
                "apiVersion": "kubemr.io/v1alpha1",
                "kind": "MapReduceJob",
                "metadata": {"name": name},
                "spec": {"inputs": ["opaque:x"], "map": "cat"},  # no output: it fails
            },
        )

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
            lambda: [x for x in list(lines) if x.get("name") == name and "Failed" in x["msg"]],
            30,
        )
        assert about[0]["namespace"] == namespace and about[0]["level"] in ("info", "warning")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
