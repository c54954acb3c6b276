"""Stores of the job document, chosen by URL: `sqlite:///path/job.db` (local) or `kube://ns/name`."""

from __future__ import annotations

from kubemr.errors import StoreError
from kubemr.store.base import Doc, Store

__all__ = ["Doc", "Store", "open_store"]


def open_store(url: str, timeout: float | None = None) -> Store:
    """Open the store a worker was pointed at through KUBEMR_STORE; `timeout` is the deadline
    of every request to a remote store, in seconds."""
    if url.startswith("sqlite://"):
        from kubemr.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite://"))
    if url.startswith("kube://"):
        from kubemr.store.kube import KubeStore

        return KubeStore.from_url(url, timeout)
    raise StoreError(
        f"unknown job store {url!r}; expected sqlite:///path/to/job.db or kube://namespace/name."
    )
