"""The protocol under faults on the real apiserver: workers killed and frozen mid-claim.

Real worker processes (`Worker`, through bench/coordination.py's protocol-only worker)
coordinate 1,200 tasks on a MapReduceJob of the devcluster's kube-apiserver; their
`TaskRunner` (`kubemr.shim.tasks.NoData`) moves no data, takes 50 ms a task and writes
down every attempt it finishes, which stands in for the data path and lets the test see
what ran. One worker is SIGKILLed and one frozen past its lease while they hold claims.
The job must complete; every committed attempt is one that ran, and no attempt number ran
twice, so a taken-over claim was redone under new numbers and the frozen worker, once it
woke, committed nothing of what it had lost. No operator acts meanwhile (one installed by
another test is scaled to 0): it would take the job before the test sets its status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from devcluster_support import Cluster, wait_until

from kubemr import state
from kubemr.kube import Kube, KubeConfig

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
TASKS = 1200
WORKERS = 6


def test_killed_and_frozen_workers_lose_nothing_and_commit_nothing_twice(
    cluster: Cluster,
    namespace: str,
    crd: None,
    tmp_path: Path,
    quiet_cluster_operator: None,
) -> None:
    kube = Kube(KubeConfig(kubeconfig=cluster.kubeconfig))
    name = f"faults-{uuid.uuid4().hex[:6]}"
    kube.create_job(
        namespace,
        {
            "apiVersion": "kubemr.io/v1alpha1",
            "kind": "MapReduceJob",
            "metadata": {"name": name},
            "spec": {
                "replicas": WORKERS,
                "inputs": ["opaque:x"],
                "map": "true",
                "output": "s3://u/o/",
            },
        },
    )
    kube.patch_job_status(
        namespace, name, [{"op": "add", "path": "/status", "value": {"phase": "Pending"}}]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
    env.update(
        KUBECONFIG=cluster.kubeconfig,
        KUBEMR_STORE=f"kube://{namespace}/{name}",
        KUBEMR_LEASE_SECONDS="4",
        KUBEMR_BATCH="32",
        KUBEMR_WORKERS=str(WORKERS),
        KUBEMR_BENCH_TASKS=str(TASKS),
        KUBEMR_BENCH_PAUSE="0.05",
    )
    procs = []
    for i in range(WORKERS):
        log = open(tmp_path / f"w{i}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "coordination.py"), "--worker"],
                env={
                    **env,
                    "KUBEMR_WORKER_ID": f"w{i}",
                    "KUBEMR_BENCH_RAN": str(tmp_path / f"w{i}.ran"),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
    try:

        def holding(worker: str) -> bool:
            st = state.current_stage(kube.get_job(namespace, name))
            return st is not None and st.name == "map" and worker in dict(st.running())

        def wait_holding(worker: str) -> None:
            try:
                wait_until(f"{worker} to hold map tasks", lambda: holding(worker), 60)
            except AssertionError as exc:
                logs = {p.name: p.read_text()[-2000:] for p in sorted(tmp_path.glob("w*.log"))}
                status = kube.get_job(namespace, name).get("status", {})
                raise AssertionError(f"{exc}; phase {status.get('phase')}; logs {logs}") from None

        # Each is caught while it holds a claim; one at a time, since a claim of 32 tasks
        # lasts under 2 s and the map stage about 10 s.
        wait_holding("w0")
        procs[0].send_signal(signal.SIGKILL)
        wait_holding("w1")
        procs[1].send_signal(signal.SIGSTOP)
        time.sleep(10)  # well past the 4 s lease: the others take both claims over
        procs[1].send_signal(signal.SIGCONT)
        for p in procs[1:]:
            p.wait(timeout=180)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    doc = kube.get_job(namespace, name)
    assert doc["status"]["phase"] == "Succeeded", doc["status"].get("message")
    assert state.counts(doc, "map") == (TASKS, TASKS)
    ran: list[tuple[str, int]] = []
    for path in tmp_path.glob("*.ran"):
        for line in path.read_text().splitlines():
            task, attempt = line.split()
            ran.append((task, int(attempt)))
    assert len(ran) == len(set(ran)), "an attempt number ran twice"
    committed = {(f"map-{i}", a) for i, a in enumerate(state.attempts_of(doc, "map"))}
    assert committed <= set(ran), sorted(committed - set(ran))[:5]
    assert any(a >= 2 for _, a in committed), "nothing was taken over"
    frozen = (tmp_path / "w1.log").read_text()
    assert procs[1].returncode == 0, frozen
    assert "abandoned" in frozen or "lost" in frozen, frozen  # it woke to find its claim gone
    kube.close()
