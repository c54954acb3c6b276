"""The local store: the job document in one SQLite row.

`kubemr run` keeps the document in `<run dir>/job.db`; every worker process
opens it and applies JSON patches inside one `BEGIN IMMEDIATE` transaction,
so patches from many processes are serialised and each one applies whole or
not at all, as on kube-apiserver. A failed `test` raises `Conflict`. Each
patch raises `metadata.resourceVersion` by one, and `changed` notices another
process's write from SQLite's `data_version`, which costs no read of the
document.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any

import jsonpatch
import jsonpointer

from kubemr.errors import Conflict, JobNotFound, Refused, StoreError
from kubemr.store.base import Doc, Store, newer, version_of

#: How often `changed` looks for another process's write.
POLL_SECONDS = 0.005

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS job (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL)"
)


def as_apiserver(doc: Doc, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewrite a patch so the `jsonpatch` package applies it as kube-apiserver does.

    kube-apiserver is lenient about a missing last member: `test` of it against null
    passes, and `replace` of it adds it. The rewrite is judged against the
    document as the earlier operations of the patch leave it.
    """
    lenient = ("test", "replace")
    if not any(op.get("op") in lenient and _missing_member(doc, op.get("path", "")) for op in ops):
        return ops  # the usual case: nothing to rewrite, no copy of the document
    out: list[dict[str, Any]] = []
    current = json.loads(json.dumps(doc))
    for op in ops:
        kind = op.get("op")
        path = op.get("path", "")
        if kind in lenient and _missing_member(current, path):
            if kind == "test" and op.get("value") is None:
                continue
            if kind == "replace":
                op = {**op, "op": "add"}
        out.append(op)
        try:
            current = jsonpatch.apply_patch(current, [op])
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException):
            out.extend(ops[len(out) :])  # the real application reports the error
            break
    return out


def _missing_member(doc: Any, path: str) -> bool:
    """Whether `path` names an absent member of an object that exists."""
    try:
        pointer = jsonpointer.JsonPointer(path)
    except jsonpointer.JsonPointerException:
        return False
    if not pointer.parts:
        return False
    try:
        parent = jsonpointer.JsonPointer.from_parts(pointer.parts[:-1]).resolve(doc)
    except jsonpointer.JsonPointerException:
        return False
    return isinstance(parent, dict) and pointer.parts[-1] not in parent


class SqliteStore(Store):
    """A job document in a SQLite database file, shared by the processes of one run."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._writes = 0
        try:
            # One connection shared by the worker's threads (the lease keeper renews from its
            # own thread), used under a lock.
            self._db = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the job database {path}: {exc}.") from exc

    @classmethod
    def create(cls, path: str, doc: Doc) -> SqliteStore:
        """Create the database with its one document; refuses if it already holds one."""
        store = cls(path)
        doc = {**doc, "metadata": {**(doc.get("metadata") or {}), "resourceVersion": "1"}}
        try:
            store._db.execute("INSERT INTO job (id, doc) VALUES (1, ?)", (json.dumps(doc),))
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"{path} already holds a job.") from exc
        return store

    def get(self) -> Doc:
        row = self._query()
        if row is None:
            raise JobNotFound(f"{self.path} holds no job.")
        doc: Doc = json.loads(row)
        return doc

    def _query(self) -> str | None:
        with self._lock:
            return self._query_locked()

    def _query_locked(self) -> str | None:
        for attempt in range(20):
            try:
                row = self._db.execute("SELECT doc FROM job WHERE id = 1").fetchone()
                return None if row is None else str(row[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 19:
                    raise StoreError(f"cannot read the job database {self.path}: {exc}.") from exc
                time.sleep(0.05)
        return None

    def patch(self, ops: list[dict[str, Any]]) -> Doc:
        with self._lock:
            return self._patch_locked(ops)

    def _patch_locked(self, ops: list[dict[str, Any]]) -> Doc:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot lock the job database {self.path}: {exc}.") from exc
        try:
            row = self._db.execute("SELECT doc FROM job WHERE id = 1").fetchone()
            if row is None:
                raise JobNotFound(f"{self.path} holds no job.")
            doc = json.loads(row[0])
            try:
                new = jsonpatch.apply_patch(doc, as_apiserver(doc, ops), in_place=True)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise Conflict(f"the job changed under us: {exc}") from exc
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise Conflict(f"the patch does not apply to the current job: {exc}") from exc
            if not isinstance(new.get("metadata"), dict):
                raise Refused("the patch would leave the job without metadata.")
            version = str(new["metadata"].get("resourceVersion", "0"))
            new["metadata"]["resourceVersion"] = str(int(version) + 1 if version.isdigit() else 1)
            self._db.execute("UPDATE job SET doc = ? WHERE id = 1", (json.dumps(new),))
            self._db.execute("COMMIT")
            self._writes += 1  # data_version does not count this connection's own commits
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        result: Doc = new
        return result

    def changed(self, since: Doc | None, timeout: float) -> Doc:
        deadline = time.monotonic() + timeout
        seen: tuple[int, int] | None = None
        while True:
            now = (self._data_version(), self._writes)
            if now != seen:
                seen = now
                doc = self.get()
                if newer(version_of(doc), version_of(since)):
                    return doc
            left = deadline - time.monotonic()
            if left <= 0:
                return doc
            time.sleep(min(POLL_SECONDS, left))

    def _data_version(self) -> int:
        """SQLite's count of commits by other connections: cheap, and no document read."""
        with self._lock:
            try:
                return int(self._db.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read the job database {self.path}: {exc}.") from exc

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database file, so the file alone holds the job.

        The database stays in WAL mode, where a reader (even a frozen process in the middle
        of a read) never blocks a writer.
        """
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._db.close()
