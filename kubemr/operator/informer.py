"""Caches of what the operator watches, and the queue of jobs to reconcile.

As client-go's shared informers and work queues do: each kind the operator
cares about (MapReduceJobs, and the batch Jobs and Pods it owns) is listed
and then watched on a thread of its own into an in-memory cache; every change
puts the key (namespace, name) of the MapReduceJob it concerns on one queue,
where a key waiting is there once however often it changed. The controller
takes keys off the queue one at a time and decides from the caches, so a
lease renewal of a worker costs no GET or LIST, and a pod that cannot start
wakes its job at once. A watch that ends is resumed from its last version; a
version too old (410) or an error means a fresh list, after a backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubemr.errors import KubemrError
from kubemr.kube import Gone

log = logging.getLogger("kubemr.operator")

Key = tuple[str, str]
Lister = Callable[[], tuple[list[dict[str, Any]], str]]
Watcher = Callable[[str, int], Iterator[tuple[str, dict[str, Any]]]]


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class WorkQueue:
    """Keys to reconcile, each at most once while it waits, in the order they first came."""

    def __init__(self) -> None:
        self._keys: dict[Key, None] = {}
        self._ready = threading.Condition()

    def add(self, key: Key) -> None:
        with self._ready:
            self._keys.setdefault(key, None)
            self._ready.notify()

    def get(self, timeout: float) -> Key | None:
        """The next key, waiting up to `timeout` seconds for one (None: none came)."""
        with self._ready:
            if not self._keys and not self._ready.wait_for(lambda: bool(self._keys), timeout):
                return None
            key = next(iter(self._keys))
            del self._keys[key]
            return key

    def __len__(self) -> int:
        with self._ready:
            return len(self._keys)


class Informer:
    """One kind of object, listed and then watched on a thread into a cache; `notify(key)` is
    called with the MapReduceJob key of every object that changes (`owner` maps an object to
    it: the object's own key for MapReduceJobs, the job label for what the operator owns)."""

    def __init__(
        self,
        what: str,
        lister: Lister,
        watcher: Watcher,
        owner: Callable[[dict[str, Any]], Key | None],
        notify: Callable[[Key], None],
        stopping: threading.Event,
        timeout: int = 300,
    ) -> None:
        self.what = what
        self.lister = lister
        self.watcher = watcher
        self.owner = owner
        self.notify = notify
        self.stopping = stopping
        self.timeout = timeout
        self.synced = threading.Event()
        self.failing = threading.Event()
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}
        self.thread = threading.Thread(target=self._run, name=f"informer-{what}", daemon=True)

    def start(self) -> Informer:
        self.thread.start()
        return self

    def get(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(key)

    def owned_by(self, job: Key) -> list[dict[str, Any]]:
        with self._lock:
            return [o for o in self._objects.values() if self.owner(o) == job]

    def cached(self) -> list[Key]:
        with self._lock:
            return list(self._objects)

    def _run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                version = self._list()
                self.failing.clear()
                backoff = 1.0
                while not self.stopping.is_set():
                    version = self._watch(version)
            except Gone:
                continue  # too old to resume: list again
            except KubemrError as exc:
                self.failing.set()
                log.warning("%s: %s; listing again in %.0fs", self.what, exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception:  # a bug here must not stop the cache for good
                self.failing.set()
                log.exception("%s: the watch failed unexpectedly", self.what)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _list(self) -> str:
        items, version = self.lister()
        fresh = {key_of(o): o for o in items}
        with self._lock:
            gone = [o for k, o in self._objects.items() if k not in fresh]
            self._objects = fresh
        self.synced.set()
        for obj in [*items, *gone]:
            self._tell(obj)
        return version

    def _watch(self, version: str) -> str:
        started = time.monotonic()
        for kind, obj in self.watcher(version, self.timeout):
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            with self._lock:
                if kind == "DELETED":
                    self._objects.pop(key_of(obj), None)
                else:
                    self._objects[key_of(obj)] = obj
            self._tell(obj)
            if self.stopping.is_set():
                break
        if time.monotonic() - started < 0.5 and not self.stopping.is_set():
            self.stopping.wait(0.5)  # a watch that ends at once must not spin
        return version

    def _tell(self, obj: dict[str, Any]) -> None:
        job = self.owner(obj)
        if job is not None:
            self.notify(job)
