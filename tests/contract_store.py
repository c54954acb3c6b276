"""The Store contract: what every home of the job document must do, as a reusable suite.

kubemr's workers coordinate only through JSON patches on one document, so a
store must apply a patch whole or not at all, and turn a failed `test` (or
any operation that does not apply) into `Conflict` without changing
anything. kube-apiserver does exactly this for JSON patches; `SqliteStore`
does it in one SQLite transaction. This suite states the contract once and
runs against any store.

To run it against a store, subclass `StoreContract` in a test module and
provide the `make_store` fixture, a factory `make_store(doc) -> Store` that
returns a store holding `doc` (a fresh job each call). Override `reopen` when
one store object cannot be shared between threads: it opens another handle
on the same document, as a second worker would.

    class TestSqliteStore(StoreContract):
        @pytest.fixture
        def make_store(self, tmp_path: Path) -> MakeStore:
            ...
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from kubemr import state
from kubemr.errors import Conflict, TemporaryError
from kubemr.store.base import Doc, Store, newer, version_of

MakeStore = Callable[[Doc], Store]
Reopen = Callable[[Store], Store]


def job_of(doc: Doc) -> Doc:
    """What the contract is about: the job's kind, labels, spec and status.

    A store may add metadata of its own (kube-apiserver adds uid,
    resourceVersion, managedFields...) and names are unique per store (a test
    against a cluster names each document afresh), which the contract leaves alone;
    so are the status fields an operator on the same cluster may write (progress,
    conditions), since it reconciles every MapReduceJob, these included.
    """
    status = doc.get("status")
    if isinstance(status, dict):
        status = {k: v for k, v in status.items() if k not in OPERATOR_FIELDS}
    return {
        "apiVersion": doc.get("apiVersion"),
        "kind": doc.get("kind"),
        "labels": doc["metadata"].get("labels"),
        "spec": doc.get("spec"),
        "status": status,
    }


#: Status fields the operator writes.
OPERATOR_FIELDS = ("progress", "conditions")


def sample_job() -> Doc:
    """A small job document in the shape workers use."""
    return {
        "apiVersion": "kubemr.io/v1alpha1",
        "kind": "MapReduceJob",
        "metadata": {"name": "contract", "labels": {"team": "data"}},
        "spec": {"inputs": ["s3://in/"], "map": "cat", "reduce": "cat", "partitions": 2},
        "status": {
            "note": "données",
            "phase": "Mapping",
            "n": 0,
            "log": [],
            "map": [{"s": "p", "a": 0}, {"s": "d", "a": 1, "c": 1}],
        },
    }


class StoreContract:
    """The contract suite; subclasses provide `make_store` (and `reopen` if needed)."""

    @pytest.fixture
    def make_store(self) -> MakeStore:
        raise NotImplementedError("a StoreContract subclass must provide the make_store fixture")

    @pytest.fixture
    def reopen(self) -> Reopen:
        """Another handle on the same document; by default the same (thread-safe) store."""
        return lambda store: store

    # reading

    def test_get_returns_the_document(self, make_store: MakeStore) -> None:
        doc = sample_job()
        store = make_store(copy.deepcopy(doc))
        assert job_of(store.get()) == job_of(doc)

    def test_get_returns_a_copy(self, make_store: MakeStore) -> None:
        store = make_store(sample_job())
        got = store.get()
        got["status"]["phase"] = "Tampered"
        got["status"]["map"].clear()
        assert job_of(store.get()) == job_of(sample_job())

    def test_a_large_document_round_trips(self, make_store: MakeStore) -> None:
        doc = sample_job()
        doc["status"]["map"] = [{"s": "d", "a": 1, "c": 1} for _ in range(10_000)]
        store = make_store(copy.deepcopy(doc))
        assert job_of(store.get()) == job_of(doc)

    # patching

    def test_patch_applies_every_operation(self, make_store: MakeStore) -> None:
        store = make_store(sample_job())
        new = store.patch(
            [
                {"op": "test", "path": "/status/phase", "value": "Mapping"},
                {"op": "replace", "path": "/status/phase", "value": "Reducing"},
                {"op": "add", "path": "/status/reduce", "value": [{"s": "p", "a": 0}]},
                {"op": "add", "path": "/status/log/-", "value": "advanced"},
                {"op": "remove", "path": "/status/n"},
                {"op": "replace", "path": "/status/map/0", "value": {"s": "d", "a": 1}},
            ]
        )
        expected = sample_job()
        status = expected["status"]
        status.update(phase="Reducing", reduce=[{"s": "p", "a": 0}], log=["advanced"])
        del status["n"]
        status["map"][0] = {"s": "d", "a": 1}
        assert job_of(new) == job_of(expected)
        assert job_of(store.get()) == job_of(expected)

    def test_empty_patch_changes_nothing(self, make_store: MakeStore) -> None:
        store = make_store(sample_job())
        assert job_of(store.patch([])) == job_of(sample_job())
        assert job_of(store.get()) == job_of(sample_job())

    @pytest.mark.parametrize(
        "failing",
        [
            pytest.param({"op": "test", "path": "/status/phase", "value": "Planning"}, id="value"),
            pytest.param({"op": "test", "path": "/status/n", "value": "0"}, id="type"),
            pytest.param(
                {"op": "test", "path": "/status/map/0", "value": {"s": "p"}}, id="whole-entry"
            ),
            pytest.param({"op": "test", "path": "/status/nope", "value": 1}, id="missing"),
        ],
    )
    def test_failed_test_is_a_conflict_and_changes_nothing(
        self, make_store: MakeStore, failing: dict[str, Any]
    ) -> None:
        store = make_store(sample_job())
        patch: list[dict[str, Any]] = [
            {"op": "replace", "path": "/status/n", "value": 99},
            {"op": "add", "path": "/status/log/-", "value": "x"},
            failing,
            {"op": "replace", "path": "/status/phase", "value": "Failed"},
        ]
        with pytest.raises(Conflict) as info:
            store.patch(patch)
        assert isinstance(info.value, TemporaryError)
        assert str(info.value)
        assert job_of(store.get()) == job_of(sample_job())

    @pytest.mark.parametrize(
        "failing",
        [
            pytest.param({"op": "remove", "path": "/status/nope"}, id="remove"),
            pytest.param({"op": "add", "path": "/status/nope/deeper", "value": 1}, id="add-deep"),
            pytest.param({"op": "replace", "path": "/status/map/7", "value": {}}, id="index"),
            pytest.param({"op": "add", "path": "/nothing/x", "value": 1}, id="top-level"),
        ],
    )
    def test_missing_path_is_a_conflict_and_changes_nothing(
        self, make_store: MakeStore, failing: dict[str, Any]
    ) -> None:
        store = make_store(sample_job())
        patch = [
            {"op": "test", "path": "/status/phase", "value": "Mapping"},
            {"op": "replace", "path": "/status/phase", "value": "Reducing"},
            failing,
        ]
        with pytest.raises(Conflict):
            store.patch(patch)
        assert job_of(store.get()) == job_of(sample_job())

    def test_missing_paths_behave_as_on_kube_apiserver(self, make_store: MakeStore) -> None:
        """kube-apiserver's JSON patch is lenient about missing members, and so are all stores:
        `test` of a missing member against null passes, and `replace` of one adds it.
        (kubemr's transitions rely on neither.)"""
        store = make_store(sample_job())
        new = store.patch(
            [
                {"op": "test", "path": "/status/nope", "value": None},
                {"op": "replace", "path": "/status/added", "value": 1},
            ]
        )
        expected = sample_job()
        expected["status"]["added"] = 1
        assert job_of(new) == job_of(expected) == job_of(store.get())

    def test_the_store_still_works_after_a_conflict(self, make_store: MakeStore) -> None:
        store = make_store(sample_job())
        with pytest.raises(Conflict):
            store.patch([{"op": "test", "path": "/status/n", "value": 5}])
        new = store.patch([{"op": "replace", "path": "/status/n", "value": 5}])
        assert new["status"]["n"] == 5 == store.get()["status"]["n"]

    def test_compare_and_swap_with_a_stale_read_loses(self, make_store: MakeStore) -> None:
        store = make_store(sample_job())
        seen = store.get()["status"]["n"]
        cas = [
            {"op": "test", "path": "/status/n", "value": seen},
            {"op": "replace", "path": "/status/n", "value": seen + 1},
        ]
        store.patch(cas)
        with pytest.raises(Conflict):
            store.patch(cas)
        assert store.get()["status"]["n"] == 1

    def test_every_patch_gives_a_new_version(self, make_store: MakeStore) -> None:
        """(On a cluster the operator may write too, so versions only ever move forward.)"""
        store = make_store(sample_job())
        first = version_of(store.get())
        assert first is not None
        second = version_of(store.patch([{"op": "replace", "path": "/status/n", "value": 1}]))
        assert second is not None and newer(second, first)
        assert not newer(second, version_of(store.get()))
        with pytest.raises(Conflict):
            store.patch([{"op": "test", "path": "/status/n", "value": 0}])
        assert not newer(second, version_of(store.get()))

    def test_changed_hands_out_the_next_version_as_soon_as_there_is_one(
        self, make_store: MakeStore, reopen: Reopen
    ) -> None:
        store = make_store(sample_job())
        other = reopen(store)
        try:
            seen = store.get()
            assert store.changed(seen, 0.3)["status"]["n"] == 0  # none came: the latest
            writer = threading.Timer(
                0.3, lambda: other.patch([{"op": "replace", "path": "/status/n", "value": 5}])
            )
            started = time.monotonic()
            writer.start()
            try:
                new = store.changed(seen, 20.0)
                while new["status"]["n"] != 5 and time.monotonic() - started < 20.0:
                    new = store.changed(new, 20.0)  # another writer's version came first
            finally:
                writer.join()
            assert new["status"]["n"] == 5 and time.monotonic() - started < 10.0
            assert store.latest()["status"]["n"] == 5
        finally:
            if other is not store:
                other.close()

    # the job protocol on top of it

    def test_two_workers_claiming_one_task_one_wins(
        self, make_store: MakeStore, reopen: Reopen
    ) -> None:
        job = sample_job()
        job["status"] = {"phase": "Mapping", "counters": {}, "map": state.new_stage(2)}
        first = make_store(job)
        second = reopen(first)
        try:
            doc = first.get()
            mine = state.decide(doc, state.Settings("w1", 0.0, 30, 3))
            theirs = state.decide(second.get(), state.Settings("w2", 0.0, 30, 3))
            assert isinstance(mine, state.Claim) and isinstance(theirs, state.Claim)
            assert mine.held.tasks == theirs.held.tasks
            won = first.patch(mine.patch)
            with pytest.raises(Conflict):
                second.patch(theirs.patch)
            assert state.still_mine(second.get(), mine.held)
            second.patch(state.renew(won, mine.held, 1, mine.held.b))
            assert state.counts(first.get(), "map") == (1, 2)
        finally:
            if second is not first:
                second.close()

    def test_concurrent_increments_lose_no_update(
        self, make_store: MakeStore, reopen: Reopen
    ) -> None:
        threads, each = 4, 25
        store = make_store(sample_job())
        start = threading.Barrier(threads)
        errors: list[BaseException] = []
        conflicts = [0] * threads

        def work(number: int) -> None:
            mine = reopen(store)
            try:
                start.wait()
                for i in range(each):
                    while True:
                        n = mine.get()["status"]["n"]
                        try:
                            mine.patch(
                                [
                                    {"op": "test", "path": "/status/n", "value": n},
                                    {"op": "replace", "path": "/status/n", "value": n + 1},
                                    {"op": "add", "path": "/status/log/-", "value": [number, i]},
                                ]
                            )
                            break
                        except Conflict:
                            conflicts[number] += 1
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
            finally:
                if mine is not store:
                    mine.close()

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert not errors, errors
        status = store.get()["status"]
        assert status["n"] == threads * each
        assert sorted(map(tuple, status["log"])) == [
            (t, i) for t in range(threads) for i in range(each)
        ]
        for t in range(threads):
            assert [i for n, i in status["log"] if n == t] == list(range(each))
