"""The cluster store: the job document is the MapReduceJob object itself.

Reads get the whole object; patches go to its `/status` subresource as
`application/json-patch+json`. kube-apiserver applies a JSON patch inside its
optimistic-concurrency loop, so `test` + `replace` is a compare-and-swap
against the latest stored object, and a failed `test` comes back as HTTP 422
(with the same generic message as a malformed patch), which `kubemr.kube`
turns into `Conflict`: the caller re-reads and decides again.
"""

from __future__ import annotations

import os
from typing import Any

from kubemr.errors import StoreError
from kubemr.kube import SA_DIR, Kube, KubeConfig
from kubemr.store.base import Doc, Store


class KubeStore(Store):
    """One MapReduceJob, by namespace and name."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name

    @classmethod
    def from_url(cls, url: str) -> KubeStore:
        """`kube://namespace/name`: in a pod, through its service account; else kubeconfig."""
        rest = url.removeprefix("kube://")
        namespace, _, name = rest.partition("/")
        if not namespace or not name or "/" in name:
            raise StoreError(f"{url!r} is not a job store URL; expected kube://namespace/name.")
        in_cluster = os.path.exists(os.path.join(SA_DIR, "token")) and bool(
            os.environ.get("KUBERNETES_SERVICE_HOST")
        )
        return cls(Kube(KubeConfig(in_cluster=in_cluster)), namespace, name)

    def get(self) -> Doc:
        return self.kube.get_job(self.namespace, self.name)

    def patch(self, ops: list[dict[str, Any]]) -> Doc:
        return self.kube.patch_job_status(self.namespace, self.name, ops)

    def close(self) -> None:
        self.kube.close()
