"""Where the job document lives: the contract every store meets.

A store holds one job document (`metadata`, `spec`, `status`) and applies
JSON patches to it atomically: all operations or none, and a failed `test`
operation raises `Conflict` (a lost race), never a partial write. This is
exactly what kube-apiserver does with `application/json-patch+json` on the
status subresource, and what `SqliteStore` does inside one write
transaction, so the worker logic in `kubemr.state` and `kubemr.shim` runs
unchanged on both. Every successful patch gives the document a new
`metadata.resourceVersion`, and `changed` hands out the next version as soon
as there is one (a watch on a cluster), so that a worker waiting for others
neither polls the whole object nor sleeps past a change.
`tests/contract_store.py` holds the suite every store passes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

Doc = dict[str, Any]


def version_of(doc: Doc | None) -> str | None:
    """The document's resourceVersion (None for no document)."""
    if doc is None:
        return None
    value = (doc.get("metadata") or {}).get("resourceVersion")
    return None if value is None else str(value)


def newer(a: str | None, b: str | None) -> bool:
    """Whether version `a` is later than `b`. Versions of one object only grow (they are
    etcd revisions on a cluster, a counter locally); anything else counts as different."""
    if a is None:
        return False
    if b is None:
        return True
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a != b


class Store(ABC):
    """One job document, read whole and changed only by JSON patch."""

    @abstractmethod
    def get(self) -> Doc:
        """The current document (a copy of the caller's own); raises JobNotFound if gone."""

    @abstractmethod
    def patch(self, ops: list[dict[str, Any]]) -> Doc:
        """Apply `ops` atomically and return the new document; raises Conflict on a failed test."""

    def latest(self) -> Doc:
        """The latest version this store knows of, without a request where it can (a watch
        keeps one); for building a patch whose preconditions the store will check anyway.
        Callers must not change what it returns."""
        return self.get()

    def changed(self, since: Doc | None, timeout: float) -> Doc:
        """A version of the document later than `since`, as soon as there is one; after
        `timeout` seconds without one, the latest. Callers must not change what it returns."""
        deadline = time.monotonic() + timeout
        while True:
            doc = self.get()
            if newer(version_of(doc), version_of(since)) or time.monotonic() >= deadline:
                return doc
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections."""
