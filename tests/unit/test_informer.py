"""The operator's caches and work queue (`kubemr.operator.informer`). The lister and watcher
stand in for the API server's list and watch at the informer's own interface (functions it is
given); what the real ones do is tested on the devcluster (tests/cluster)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from kubemr.kube import Gone
from kubemr.operator.informer import Informer, Key, WorkQueue, key_of


def obj(name: str, version: int, job: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "name": name, "resourceVersion": str(version)}
    if job:
        meta["labels"] = {"kubemr.io/job": job}
    return {"metadata": meta}


def test_a_waiting_key_is_queued_once_in_first_come_order() -> None:
    queue = WorkQueue()
    for key in [("ns", "b"), ("ns", "a"), ("ns", "b"), ("ns", "c"), ("ns", "a")]:
        queue.add(key)
    assert len(queue) == 3
    assert [queue.get(0.1) for _ in range(3)] == [("ns", "b"), ("ns", "a"), ("ns", "c")]
    assert queue.get(0.05) is None
    queue.add(("ns", "b"))  # taken off, it can come again
    assert queue.get(0.1) == ("ns", "b")


def test_a_get_wakes_when_a_key_comes() -> None:
    queue = WorkQueue()
    threading.Timer(0.1, lambda: queue.add(("ns", "late"))).start()
    started = time.monotonic()
    assert queue.get(5.0) == ("ns", "late")
    assert time.monotonic() - started < 2.0


def test_the_cache_follows_list_and_watch_and_tells_the_owner() -> None:
    """A list fills the cache; watch events update it; a 410 lists again (an object deleted
    meanwhile leaves the cache and its owner is told); every change names the owning job."""
    lists = [
        ([obj("p1", 1, "job-a"), obj("p2", 1, "job-b")], "1"),
        ([obj("p1", 5, "job-a")], "5"),
    ]
    calls: list[str] = []
    stopping = threading.Event()

    def lister() -> tuple[list[dict[str, Any]], str]:
        calls.append("list")
        if not lists:
            stopping.set()
            return [], "9"
        return lists.pop(0)

    def watcher(version: str, timeout: int) -> Iterator[tuple[str, dict[str, Any]]]:
        calls.append(f"watch@{version}")
        if version == "1":
            yield "MODIFIED", obj("p1", 2, "job-a")
            yield "ADDED", obj("p3", 3, "job-c")
            yield "BOOKMARK", obj("", 4)
            return
        if version == "4":
            raise Gone("too old")
        stopping.set()
        return

    told: list[Key] = []

    def owner(o: dict[str, Any]) -> Key | None:
        labels = o["metadata"].get("labels") or {}
        return ("ns", labels["kubemr.io/job"]) if labels else None

    informer = Informer("pods", lister, watcher, owner, told.append, stopping, timeout=1).start()
    informer.thread.join(10)
    assert not informer.thread.is_alive()
    assert calls[:4] == ["list", "watch@1", "watch@4", "list"]
    assert informer.synced.is_set()
    assert informer.get(("ns", "p1")) == obj("p1", 5, "job-a")
    assert informer.get(("ns", "p2")) is None and informer.get(("ns", "p3")) is None
    assert ("ns", "job-b") in told and ("ns", "job-c") in told  # p2 and p3 went: owners told
    assert informer.owned_by(("ns", "job-a")) == [obj("p1", 5, "job-a")]
    assert key_of(obj("x", 1)) == ("ns", "x")
