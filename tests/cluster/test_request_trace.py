"""What `kubemr.kube` traces (KUBEMR_TRACE_FILE) for real requests to the devcluster's
apiserver: a read and a patch of a MapReduceJob each with its HTTP status and sizes, and a lost
race traced as the 422 it is while raised as Conflict."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from devcluster_support import Cluster

from kubemr import state
from kubemr.errors import Conflict
from kubemr.kube import TRACE_ENV, TRACE_PREFIX, Kube, KubeConfig

pytestmark = pytest.mark.cluster


def read_trace(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    assert all(line.startswith(TRACE_PREFIX) for line in lines)
    return [json.loads(line[len(TRACE_PREFIX) :]) for line in lines]


def test_reads_patches_and_lost_races_are_traced_with_status_and_sizes(
    cluster: Cluster, namespace: str, crd: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"trace-{uuid.uuid4().hex[:6]}"
    plain = Kube(KubeConfig(kubeconfig=cluster.kubeconfig))
    plain.create_job(
        namespace,
        {
            "apiVersion": "kubemr.io/v1alpha1",
            "kind": "MapReduceJob",
            "metadata": {"name": name},
            "spec": {"inputs": ["opaque:x"], "map": "cat", "output": "s3://b/o/"},
        },
    )
    status = {"phase": "Mapping", "counters": {}, "map": state.new_stage(8)}
    plain.patch_job_status(namespace, name, [{"op": "add", "path": "/status", "value": status}])
    path = tmp_path / "trace"
    monkeypatch.setenv(TRACE_ENV, str(path))
    kube = Kube(KubeConfig(kubeconfig=cluster.kubeconfig))
    got = kube.get_job(namespace, name)
    assert got["status"]["map"] == state.new_stage(8)
    ops = [{"op": "replace", "path": "/status/map/todo", "value": "3-7"}]
    patched = kube.patch_job_status(namespace, name, ops)
    assert patched["status"]["map"]["todo"] == "3-7"  # the parsed response
    with pytest.raises(Conflict):
        kube.patch_job_status(
            namespace, name, [{"op": "test", "path": "/status/phase", "value": "X"}]
        )
    get, patch, lost = read_trace(path)
    assert get["v"] == "GET" and get["code"] == 200
    compact = len(json.dumps(got, separators=(",", ":")).encode())
    assert compact <= get["in"] <= compact + 1, (get, compact)  # the bytes of the response
    assert get["out"] == 0 and "what" not in get and get["ms"] >= 0 and get["t"] > 1e9
    sent = len(json.dumps(patched, separators=(",", ":")).encode())
    assert patch["v"] == "PATCH" and patch["code"] == 200 and sent <= patch["in"] <= sent + 1
    assert patch["out"] == len(json.dumps(ops)) and patch["what"] == "-"
    assert lost["v"] == "PATCH" and lost["code"] == 422 and lost["in"] > 0
