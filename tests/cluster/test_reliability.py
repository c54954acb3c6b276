"""Faults on a real control plane: the job completes with `kubemr run`'s exact bytes, or fails
naming the reason.

Worker pods deleted at random, the S3 server and kube-apiserver restarted
mid-job (`hack/devcluster restart`; etcd and MinIO keep their data), a
command that hangs once (killed at `taskTimeoutSeconds` and retried), and a
command that fails on one input only (retried, then the job fails naming it).
"""

from __future__ import annotations

import random
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from devcluster_support import Cluster, wait_until
from operator_support import (
    ROOT,
    cluster_manifest,
    create,
    events,
    get,
    kubectl,
    local_results,
    s3_objects,
    wait_phase,
)

from kubemr import state

pytestmark = pytest.mark.cluster

DEVCLUSTER = ROOT / "hack" / "devcluster"


def worker_pods(cluster: Cluster, ns: str, name: str) -> list[str]:
    out = kubectl(
        cluster,
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        f"kubemr.io/job={name}",
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    )
    return out.stdout.split()


def running_tasks(cluster: Cluster, ns: str, name: str) -> int:
    """Tasks held by a worker now, in unfinished claims of the job's current stage."""
    st = state.current_stage(get(cluster, ns, name))
    if st is None or st.name not in ("map", "reduce"):
        return 0
    return sum(int(e["b"]) - int(e["d"]) for _, e in st.running())


def restart(component: str, pause: float) -> None:
    subprocess.run(
        [str(DEVCLUSTER), "restart", component, str(pause)],
        check=True,
        capture_output=True,
        timeout=180,
    )


def parts(stored: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in stored.items() if k.startswith("part-")}


def test_deleted_pods_and_a_restarted_s3_server_change_nothing(
    cluster: Cluster, ns: str, s3: Any, corpus: str, tmp_path: Path
) -> None:
    path, output = cluster_manifest(
        cluster, "bash-wordcount", corpus, tmp_path, map="sleep 6; ./map.sh", replicas=3
    )
    name = create(cluster, ns, path)
    rng = random.Random(name)
    wait_until("a running task", lambda: running_tasks(cluster, ns, name) > 0, 120)
    pod = rng.choice(wait_until("worker pods", lambda: worker_pods(cluster, ns, name), 60))
    kubectl(cluster, "-n", ns, "delete", "pod", pod, "--grace-period=0", "--force")
    restart("minio", 3)  # while the other workers read and write their data
    status = get(cluster, ns, name)["status"]
    assert status["phase"] not in ("Succeeded", "Failed"), status.get("message")
    pods = worker_pods(cluster, ns, name)
    if pods and running_tasks(cluster, ns, name):
        kubectl(cluster, "-n", ns, "delete", "pod", rng.choice(pods), "--grace-period=0", "--force")
    doc = wait_phase(cluster, ns, name, timeout=300)
    assert doc["status"]["phase"] == "Succeeded", doc["status"].get("message")
    assert parts(s3_objects(s3, output)) == local_results("bash-wordcount", tmp_path)


def phase(cluster: Cluster, ns: str, name: str) -> str:
    return str(get(cluster, ns, name).get("status", {}).get("phase"))


def test_a_restarted_api_server_changes_nothing(
    cluster: Cluster, ns: str, s3: Any, corpus: str, tmp_path: Path
) -> None:
    path, output = cluster_manifest(
        cluster, "bash-wordcount", corpus, tmp_path, map="sleep 6; ./map.sh", replicas=2
    )
    name = create(cluster, ns, path)
    wait_until("a running task", lambda: running_tasks(cluster, ns, name) > 0, 120)
    restart("kube-apiserver", 3)
    assert phase(cluster, ns, name) not in ("Succeeded", "Failed")
    doc = wait_phase(cluster, ns, name, timeout=300)
    assert doc["status"]["phase"] == "Succeeded", doc["status"].get("message")
    assert parts(s3_objects(s3, output)) == local_results("bash-wordcount", tmp_path)


def test_a_hung_command_is_retried_and_one_bad_input_fails_the_job_naming_it(
    cluster: Cluster, ns: str, s3: Any, corpus: str, tmp_path: Path
) -> None:
    hang = (
        'if [ "$KUBEMR_ATTEMPT" = 1 ]; then case "$KUBEMR_INPUT" in *data.txt*) sleep 600;; esac; '
        "fi; ./map.sh"
    )
    hung_path, hung_output = cluster_manifest(
        cluster, "bash-wordcount", corpus, tmp_path, map=hang, taskTimeoutSeconds=5
    )
    bad = (
        'case "$KUBEMR_INPUT" in *system.txt*) echo "bad record in $KUBEMR_TASK" >&2; exit 3;; '
        "esac; ./map.sh"
    )
    bad_path, bad_output = cluster_manifest(
        cluster, "bash-wordcount", corpus, tmp_path, map=bad, maxAttempts=2
    )
    hung, failing = create(cluster, ns, hung_path), create(cluster, ns, bad_path)
    expected: dict[str, dict[str, bytes]] = {}
    local = threading.Thread(
        target=lambda: expected.update(ok=local_results("bash-wordcount", tmp_path))
    )
    local.start()

    doc = wait_phase(cluster, ns, failing, timeout=300)
    status = doc["status"]
    assert status["phase"] == "Failed"
    assert status["failedTask"].startswith("map-")
    assert "system.txt" in status["message"] and "failed 2 of 2 attempts" in status["message"]
    assert "exited with code 3" in status["message"]
    assert f"bad record in {status['failedTask']}" in status["message"]
    assert not [k for k in s3_objects(s3, bad_output) if k.startswith(("part-", "_SUCCESS"))]

    doc = wait_phase(cluster, ns, hung, timeout=300)
    assert doc["status"]["phase"] == "Succeeded", doc["status"].get("message")
    retried = [i for i, a in enumerate(state.attempts_of(doc, "map")) if a >= 2]
    assert retried, doc["status"]["map"]
    wait_until(
        "a TaskFailed event for the timeout",
        lambda: any(
            e["reason"] == "TaskFailed" and "timed out after 5s" in e.get("message", "")
            for e in events(cluster, ns, hung)
        ),
        60,
    )
    local.join()
    assert parts(s3_objects(s3, hung_output)) == expected["ok"]
