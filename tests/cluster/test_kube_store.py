"""The job store contract against a real kube-apiserver: the MapReduceJob status as the document.

The same suite `SqliteStore` passes (tests/contract_store.py): whole patches
or nothing, a failed `test` is a Conflict (the apiserver's 422), concurrent
compare-and-swaps lose no update.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from typing import Any

import pytest
from contract_store import MakeStore, Reopen, StoreContract
from devcluster_support import Cluster

from kubemr.errors import Refused
from kubemr.kube import Kube, KubeConfig
from kubemr.store.base import Doc, Store
from kubemr.store.kube import KubeStore
from kubemr.store.writes import Writer

pytestmark = pytest.mark.cluster


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


def job_store(cluster: Cluster, namespace: str, status: dict[str, Any]) -> KubeStore:
    kube = Kube(KubeConfig(kubeconfig=cluster.kubeconfig))
    body = {
        "apiVersion": "kubemr.io/v1alpha1",
        "kind": "MapReduceJob",
        "metadata": {"name": f"writes-{uuid.uuid4().hex[:8]}"},
        "spec": {"inputs": ["s3://b/in/"], "map": "cat", "output": "s3://b/out/"},
    }
    created = kube.create_job(namespace, body)
    store = KubeStore(kube, namespace, created["metadata"]["name"])
    store.patch([{"op": "add", "path": "/status", "value": status}])
    return store


def test_a_lost_race_is_told_from_a_patch_that_can_never_apply(
    cluster: Cluster, namespace: str, crd: None
) -> None:
    """kube-apiserver answers a failed `test` and a malformed patch with the same 422: the
    writer checks the preconditions itself, backs off on a lost race, and refuses the
    malformed patch with a sentence after a few tries instead of retrying for ever."""
    store = job_store(cluster, namespace, {"phase": "Mapping", "n": 0})
    stale = store.get()
    store.patch([{"op": "replace", "path": "/status/n", "value": 1}])
    writer = Writer(store)
    cas = [
        {"op": "test", "path": "/status/n", "value": 0},
        {"op": "replace", "path": "/status/n", "value": 9},
    ]
    new, latest = writer.send(stale, lambda d: cas, retry_races=False)
    assert new is None and latest["status"]["n"] == 1 and writer.conflicts == 1
    broken = [
        {"op": "test", "path": "/status/phase", "value": "Mapping"},
        {"op": "remove", "path": "/status/no-such-member"},
    ]
    started = time.monotonic()
    with pytest.raises(Refused, match="preconditions hold"):
        writer.send(store.get(), lambda d: broken)
    assert time.monotonic() - started < 30
    status = store.get()["status"]
    assert status["phase"] == "Mapping" and status["n"] == 1  # (the operator adds progress)


def test_patches_the_apiserver_refuses_for_good_are_refused_at_once(
    cluster: Cluster, namespace: str, crd: None
) -> None:
    store = job_store(cluster, namespace, {"phase": "Mapping"})
    writer = Writer(store)
    invalid = [{"op": "replace", "path": "/status", "value": "not an object"}]
    with pytest.raises(Refused, match="invalid"):
        writer.send(store.get(), lambda d: invalid)
    huge = [{"op": "add", "path": "/status/blob", "value": "x" * (1600 * 1024)}]
    with pytest.raises(Refused, match="too large"):
        writer.send(store.get(), lambda d: huge)
    body = [{"op": "add", "path": "/status/blob", "value": "x" * (3 * 1024 * 1024)}]
    with pytest.raises(Refused, match="too large"):
        writer.send(store.get(), lambda d: body)
    assert writer.conflicts == 0


def test_changed_follows_the_object_through_a_watch(
    cluster: Cluster, namespace: str, crd: None
) -> None:
    """A waiting worker learns of a write by another within a moment, without a GET."""
    store = job_store(cluster, namespace, {"phase": "Mapping", "n": 0})
    other = KubeStore(Kube(KubeConfig(kubeconfig=cluster.kubeconfig)), store.namespace, store.name)
    seen = store.get()
    store.changed(seen, 0.5)  # starts the watch
    calls: list[str] = []
    original = store.kube.get_job

    def counting_get(namespace: str, name: str) -> dict[str, Any]:
        calls.append(name)
        return original(namespace, name)

    store.kube.get_job = counting_get  # type: ignore[method-assign]
    timer = threading.Timer(
        0.5, lambda: other.patch([{"op": "replace", "path": "/status/n", "value": 3}])
    )
    timer.start()
    started = time.monotonic()
    try:
        new = store.changed(seen, 30.0)
        while new["status"]["n"] != 3 and time.monotonic() - started < 30:
            new = store.changed(new, 30.0)  # the operator's write of progress came first
    finally:
        timer.join()
    assert new["status"]["n"] == 3 and calls == []
    store.close()
    other.close()
