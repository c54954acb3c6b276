"""The cluster store: the job document is the MapReduceJob object itself.

Reads get the whole object; patches go to its `/status` subresource as
`application/json-patch+json`. kube-apiserver applies a JSON patch inside its
optimistic-concurrency loop, so `test` + `replace` is a compare-and-swap
against the latest stored object, and a failed `test` comes back as HTTP 422
(with the same generic message as a malformed patch), which `kubemr.kube`
turns into `Conflict`: the caller re-reads and decides again.

`changed` is served by a watch of the one object (the worker Role allows
exactly that), kept in a background thread and fed as well by the objects
that patches return, so a worker that waits for others costs the apiserver
nothing until the object changes. Every request has a deadline
(`Kube.timeout`, a quarter of the worker's lease), so a hung connection
cannot stall a renewal past its lease.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from typing import Any

from kubemr.errors import JobNotFound, KubemrError, StoreError
from kubemr.kube import SA_DIR, Gone, Kube, KubeConfig
from kubemr.store.base import Doc, Store, newer, version_of

log = logging.getLogger("kubemr.store")

#: How long one watch request lasts before it is renewed (the server ends it then).
WATCH_SECONDS = 240


class KubeStore(Store):
    """One MapReduceJob, by namespace and name."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self._cond = threading.Condition()
        self._latest: Doc | None = None
        self._watching = False  # the watch is connected: `_latest` follows every change
        self._gone = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_url(cls, url: str, timeout: float | None = None) -> KubeStore:
        """`kube://namespace/name`: in a pod, through its service account; else kubeconfig."""
        rest = url.removeprefix("kube://")
        namespace, _, name = rest.partition("/")
        if not namespace or not name or "/" in name:
            raise StoreError(f"{url!r} is not a job store URL; expected kube://namespace/name.")
        in_cluster = os.path.exists(os.path.join(SA_DIR, "token")) and bool(
            os.environ.get("KUBERNETES_SERVICE_HOST")
        )
        config = KubeConfig(kubeconfig=os.environ.get("KUBECONFIG") or None, in_cluster=in_cluster)
        kube = Kube(config) if timeout is None else Kube(config, timeout=timeout)
        return cls(kube, namespace, name)

    def get(self) -> Doc:
        doc = self.kube.get_job(self.namespace, self.name)
        self._offer(doc)
        return copy.deepcopy(doc)

    def patch(self, ops: list[dict[str, Any]]) -> Doc:
        doc = self.kube.patch_job_status(self.namespace, self.name, ops)
        self._offer(doc)
        return copy.deepcopy(doc)

    def latest(self) -> Doc:
        self._start()
        with self._cond:
            if self._watching and self._latest is not None:
                return self._latest
        return self.get()

    def changed(self, since: Doc | None, timeout: float) -> Doc:
        self._start()
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._gone:
                    raise JobNotFound(
                        f"there is no MapReduceJob {self.name} in namespace {self.namespace}."
                    )
                latest = self._latest
                if latest is not None and newer(version_of(latest), version_of(since)):
                    return latest
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._watching and latest is not None:
                return latest  # the watch would have shown a change: there was none
        return self.get()

    def _offer(self, doc: Doc) -> None:
        """Keep `doc` as the latest version if it is later than the one kept."""
        with self._cond:
            if self._latest is None or newer(version_of(doc), version_of(self._latest)):
                self._latest = doc
                self._cond.notify_all()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, daemon=True, name="watch")
            self._thread.start()

    def _watch(self) -> None:
        version: str | None = None
        backoff = 0.5
        while not self._closed.is_set():
            try:
                if version is None:
                    version = version_of(self.get())
                assert version is not None
                with self._cond:
                    self._watching = True
                for kind, obj in self.kube.watch_job(
                    self.namespace, self.name, version, WATCH_SECONDS
                ):
                    if self._closed.is_set():
                        return
                    version = version_of(obj) or version
                    if kind == "DELETED":
                        with self._cond:
                            self._gone = True
                            self._cond.notify_all()
                        return
                    if kind in ("ADDED", "MODIFIED"):
                        self._offer(obj)
                backoff = 0.5
            except Gone:
                version = None
            except JobNotFound:
                with self._cond:
                    self._gone = True
                    self._cond.notify_all()
                return
            except Exception as exc:  # KubemrError, or anything: the watch thread must not die
                with self._cond:
                    self._watching = False
                level = logging.DEBUG if isinstance(exc, KubemrError) else logging.WARNING
                log.log(level, "the watch of %s/%s broke: %s", self.namespace, self.name, exc)
                version = None
                self._closed.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def close(self) -> None:
        self._closed.set()
        self.kube.close()
