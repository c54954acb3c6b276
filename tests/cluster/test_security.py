"""Security on a real control plane: credentials stay in their Secret, pods stay locked down,
and a job cannot reach this machine's disk.

The S3 secret key is looked for in everything a job leaves behind: the
MapReduceJob, ConfigMaps, Jobs and pod specs (where S3 credentials may only
be `secretKeyRef`s), Events, status messages, the operator's and workers'
logs, and the task logs stored in S3. Which API calls a worker's identity
may make is tested in test_operator.py (test_worker_identity_reaches_only_its_own_job).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from devcluster_support import Cluster, wait_until
from operator_support import cluster_manifest, create, kubectl, s3_objects, wait_phase

pytestmark = pytest.mark.cluster


def objects(cluster: Cluster, ns: str, kinds: str) -> list[dict[str, Any]]:
    out = kubectl(cluster, "-n", ns, "get", kinds, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def check_pod_locked_down(pod: dict[str, Any]) -> None:
    spec = pod["spec"]
    name = pod["metadata"]["name"]
    assert spec["securityContext"]["runAsNonRoot"] is True, name
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key), (name, key)
    for container in spec["containers"] + spec.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert not sc.get("privileged"), name
        for env in container.get("env", []):
            if env["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert "value" not in env, (name, env["name"])
                assert set(env["valueFrom"]) == {"secretKeyRef"}, (name, env["name"])


def test_credentials_never_leak_and_pods_are_locked_down(
    cluster: Cluster, ns: str, s3: Any, corpus: str, tmp_path: Path
) -> None:
    secret = cluster.env["AWS_SECRET_ACCESS_KEY"]
    good, good_out = cluster_manifest(cluster, "bash-wordcount", corpus, tmp_path)
    bad, bad_out = cluster_manifest(
        cluster,
        "bash-wordcount",
        corpus,
        tmp_path,
        map="echo 'reading s3 failed, giving up' >&2; exit 5",
        maxAttempts=1,
    )
    names = [create(cluster, ns, good), create(cluster, ns, bad)]
    docs = [wait_phase(cluster, ns, name) for name in names]
    assert [d["status"]["phase"] for d in docs] == ["Succeeded", "Failed"]
    wait_until(
        "the Failed event",
        lambda: any(e["reason"] == "Failed" for e in objects(cluster, ns, "events")),
        30,
    )

    pods = objects(cluster, ns, "pods")
    assert pods, "no worker pods to inspect"
    for pod in pods:
        check_pod_locked_down(pod)
    operator_pods = objects(cluster, "kubemr-system", "pods")
    for pod in operator_pods:
        check_pod_locked_down(pod)

    seen: dict[str, str] = {
        "MapReduceJobs": json.dumps(objects(cluster, ns, "mapreducejobs")),
        "ConfigMaps": json.dumps(objects(cluster, ns, "configmaps")),
        "Jobs": json.dumps(objects(cluster, ns, "jobs")),
        "pods": json.dumps(pods),
        "Events": json.dumps(objects(cluster, ns, "events")),
        "operator log": kubectl(
            cluster, "-n", "kubemr-system", "logs", "deployment/kubemr-operator", "--tail=-1"
        ).stdout,
    }
    for pod in pods:
        seen[f"log of {pod['metadata']['name']}"] = kubectl(
            cluster, "-n", ns, "logs", pod["metadata"]["name"], check=False
        ).stdout
    for output in (good_out, bad_out):
        for key, data in s3_objects(s3, output).items():
            if "/logs/" in key:
                seen[f"stored log {key}"] = data.decode(errors="replace")
    assert any(k.startswith("stored log") for k in seen), "no task log stored to inspect"
    assert any("giving up" in text for text in seen.values())  # the inspection sees messages
    leaks = [where for where, text in seen.items() if secret in text]
    assert leaks == [], f"the S3 secret key appears in {leaks}"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"inputs": ["file:///etc/passwd"]}, "spec.inputs[0]"),
        ({"inputs": ["/etc/"]}, "spec.inputs[0]"),
        ({"output": "file:///tmp/out/"}, "spec.output"),
    ],
)
def test_local_paths_are_refused_on_a_cluster(
    cluster: Cluster, ns: str, corpus: str, tmp_path: Path, changes: dict[str, Any], field: str
) -> None:
    path, _ = cluster_manifest(cluster, "bash-wordcount", corpus, tmp_path, **changes)
    name = create(cluster, ns, path)
    status = wait_phase(cluster, ns, name, timeout=60)["status"]
    assert status["phase"] == "Failed"
    assert field in status["message"] and "pods cannot" in status["message"]
    assert not objects(cluster, ns, "jobs")  # nothing was deployed
