"""The local job store, `SqliteStore`: the Store contract, plus what is SQLite's own.

Runs the shared suite from tests/contract_store.py against a database in a
temporary directory, then checks creation, a missing job, `open_store`, and
that compare-and-swap holds across real processes (as `kubemr run`'s worker
processes use it), not only across threads.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from contract_store import MakeStore, Reopen, StoreContract, job_of, sample_job

from kubemr.errors import Conflict, JobNotFound, StoreError
from kubemr.store import open_store
from kubemr.store.base import Doc, Store
from kubemr.store.sqlite import SqliteStore


class TestSqliteStoreContract(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Iterator[MakeStore]:
        opened: list[Store] = []

        def make(doc: Doc) -> Store:
            store = SqliteStore.create(str(tmp_path / f"job-{len(opened)}.db"), doc)
            opened.append(store)
            return store

        yield make
        for store in opened:
            store.close()

    @pytest.fixture
    def reopen(self) -> Reopen:
        """SQLite connections belong to one thread: each worker opens its own, as processes do."""

        def again(store: Store) -> Store:
            assert isinstance(store, SqliteStore)
            return SqliteStore(store.path)

        return again


def test_create_refuses_a_database_that_holds_a_job(tmp_path: Path) -> None:
    path = str(tmp_path / "job.db")
    SqliteStore.create(path, sample_job()).close()
    with pytest.raises(StoreError, match="already holds a job"):
        SqliteStore.create(path, {"other": 1})
    store = SqliteStore(path)
    assert job_of(store.get()) == job_of(sample_job())
    store.close()


def test_a_database_without_a_job(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "empty.db"))
    with pytest.raises(JobNotFound, match="holds no job"):
        store.get()
    with pytest.raises(JobNotFound):
        store.patch([{"op": "add", "path": "/status", "value": {}}])
    # The failed patch released its transaction: another connection can still write.
    SqliteStore.create(str(tmp_path / "empty.db"), sample_job()).close()
    assert job_of(store.get()) == job_of(sample_job())
    store.close()


def test_a_database_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open the job database"):
        SqliteStore(str(tmp_path / "no" / "such" / "dir" / "job.db"))


def test_the_document_is_stored_as_json(tmp_path: Path) -> None:
    path = str(tmp_path / "job.db")
    store = SqliteStore.create(path, sample_job())
    store.patch([{"op": "replace", "path": "/status/n", "value": 7}])
    store.close()
    with sqlite3.connect(path) as db:
        (text,) = db.execute("SELECT doc FROM job WHERE id = 1").fetchone()
    assert '"n": 7' in text


def test_a_conflict_leaves_no_transaction_open(tmp_path: Path) -> None:
    path = str(tmp_path / "job.db")
    store = SqliteStore.create(path, sample_job())
    other = SqliteStore(path, timeout=0.5)
    with pytest.raises(Conflict):
        store.patch([{"op": "test", "path": "/status/n", "value": 1}])
    # If the first connection still held the write lock, this would time out.
    other.patch([{"op": "replace", "path": "/status/n", "value": 1}])
    assert store.get()["status"]["n"] == 1
    other.close()
    store.close()


def test_open_store_by_url(tmp_path: Path) -> None:
    path = tmp_path / "job.db"
    SqliteStore.create(str(path), sample_job()).close()
    store = open_store(f"sqlite://{path}")
    assert isinstance(store, SqliteStore) and store.path == str(path)
    assert job_of(store.get()) == job_of(sample_job())
    store.close()


@pytest.mark.parametrize("url", ["/tmp/job.db", "postgres://x/y", "kube:/default"])
def test_open_store_refuses_unknown_urls(url: str) -> None:
    with pytest.raises(StoreError, match="unknown job store"):
        open_store(url)


def _increment(path: str, times: int, start: multiprocessing.synchronize.Event) -> None:
    """Run in a child process: add 1 to status.n `times` times, re-reading on Conflict."""
    store = SqliteStore(path)
    start.wait(10)
    for _ in range(times):
        while True:
            n = store.get()["status"]["n"]
            try:
                store.patch(
                    [
                        {"op": "test", "path": "/status/n", "value": n},
                        {"op": "replace", "path": "/status/n", "value": n + 1},
                    ]
                )
                break
            except Conflict:
                continue
    store.close()


def test_compare_and_swap_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "job.db")
    SqliteStore.create(path, sample_job()).close()
    context = multiprocessing.get_context("fork")
    start = context.Event()
    processes = [context.Process(target=_increment, args=(path, 50, start)) for _ in range(4)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    store = SqliteStore(path)
    assert store.get()["status"]["n"] == 200
    store.close()
