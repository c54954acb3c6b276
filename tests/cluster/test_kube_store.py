"""The job store contract against a real kube-apiserver: the MapReduceJob status as the document.

The same suite `SqliteStore` passes (tests/contract_store.py): whole patches
or nothing, a failed `test` is a Conflict (the apiserver's 422), concurrent
compare-and-swaps lose no update.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import pytest
from contract_store import MakeStore, Reopen, StoreContract
from devcluster_support import Cluster, wait_until

from kubemr.kube import Kube, KubeConfig
from kubemr.store.base import Doc, Store
from kubemr.store.kube import KubeStore

pytestmark = pytest.mark.cluster

CRD = Path(__file__).resolve().parents[2] / "manifests" / "crd.yaml"


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    wait_until(
        "the MapReduceJob CRD to be established",
        lambda: (
            "True"
            in cluster.kubectl(
                "get",
                "crd",
                "mapreducejobs.kubemr.io",
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Established')].status}",
            ).stdout
        ),
        60,
    )


class TestKubeStore(StoreContract):
    @pytest.fixture
    def make_store(self, cluster: Cluster, namespace: str, crd: None) -> MakeStore:
        def make(doc: Doc) -> Store:
            kube = Kube(KubeConfig(kubeconfig=cluster.kubeconfig))
            body = copy.deepcopy(doc)
            status = body.pop("status", None)
            body["metadata"] = {**body["metadata"], "name": f"contract-{uuid.uuid4().hex[:8]}"}
            created = kube.create_job(namespace, body)
            store = KubeStore(kube, namespace, created["metadata"]["name"])
            if status is not None:
                store.patch([{"op": "add", "path": "/status", "value": status}])
            return store

        return make

    @pytest.fixture
    def reopen(self, cluster: Cluster) -> Reopen:
        def again(store: Store) -> Store:
            assert isinstance(store, KubeStore)
            kube = Kube(KubeConfig(kubeconfig=cluster.kubeconfig))
            return KubeStore(kube, store.namespace, store.name)

        return again


def test_a_status_patch_cannot_change_the_spec(cluster: Cluster, namespace: str, crd: None) -> None:
    kube = Kube(KubeConfig(kubeconfig=cluster.kubeconfig))
    body = {
        "apiVersion": "kubemr.io/v1alpha1",
        "kind": "MapReduceJob",
        "metadata": {"name": "fixed"},
        "spec": {"inputs": ["s3://b/in/"], "map": "cat", "output": "s3://b/out/"},
    }
    kube.create_job(namespace, body)
    store = KubeStore(kube, namespace, "fixed")
    store.patch([{"op": "replace", "path": "/spec/map", "value": "rm -rf /"}])
    raw = cluster.kubectl("-n", namespace, "get", "mrj", "fixed", "-o", "json").stdout
    assert json.loads(raw)["spec"]["map"] == "cat"
