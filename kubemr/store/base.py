"""Where the job document lives: the contract every store meets.

A store holds one job document (`metadata`, `spec`, `status`) and applies
JSON patches to it atomically: all operations or none, and a failed `test`
operation raises `Conflict` (a lost race), never a partial write. This is
exactly what kube-apiserver does with `application/json-patch+json` on the
status subresource, and what `SqliteStore` does inside one write
transaction, so the worker logic in `kubemr.state` and `kubemr.shim` runs
unchanged on both. `tests/contract_store.py` holds the suite both pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

Doc = dict[str, Any]


class Store(ABC):
    """One job document, read whole and changed only by JSON patch."""

    @abstractmethod
    def get(self) -> Doc:
        """The current document; raises JobNotFound if it is gone."""

    @abstractmethod
    def patch(self, ops: list[dict[str, Any]]) -> Doc:
        """Apply `ops` atomically and return the new document; raises Conflict on a failed test."""

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections."""
