"""Workers against a job store that loses answers, refuses patches, or sees the job fail
while it publishes.

The workers here are real `Worker` loops running real shell commands, in threads of this
process, on a real `SqliteStore`. `LossyStore` wraps it at kubemr's own `Store` interface
and stands in for the network between a worker and kube-apiserver, which a test cannot
make drop answers on demand: it applies a patch and then raises `TemporaryError`, as a
request that timed out after the server applied it does (a 504 after the apiserver's own
60 s, a connection reset). `RefusingStore` stands in for an apiserver that refuses every
write as too large.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from kubemr import state
from kubemr.errors import Refused, TemporaryError, TemporaryStorageError
from kubemr.local import LocalRun, prepare
from kubemr.shim import config as shim_config
from kubemr.shim.tasks import DataPath, Result
from kubemr.shim.worker import Worker
from kubemr.store.base import Doc, Store
from kubemr.store.sqlite import SqliteStore


class LossyStore(Store):
    """A store whose answers to patches are lost at random (after the patch applied)."""

    def __init__(self, inner: Store, loss: float, seed: int) -> None:
        self.inner = inner
        self.loss = loss
        self.rng = random.Random(seed)
        self.lost = 0
        self._lock = threading.Lock()

    def get(self) -> Doc:
        return self.inner.get()

    def patch(self, ops: list[dict[str, Any]]) -> Doc:
        new = self.inner.patch(ops)
        with self._lock:
            drop = self.rng.random() < self.loss
            self.lost += drop
        if drop:
            raise TemporaryError("the answer was lost (the request timed out)")
        return new

    def changed(self, since: Doc | None, timeout: float) -> Doc:
        return self.inner.changed(since, timeout)

    def close(self) -> None:
        self.inner.close()


class RefusingStore(LossyStore):
    """Refuses every patch after the first `allow`, as an apiserver refuses a too large object."""

    def __init__(self, inner: Store, allow: int) -> None:
        super().__init__(inner, 0.0, 0)
        self.allow = allow

    def patch(self, ops: list[dict[str, Any]]) -> Doc:
        if self.allow <= 0 and not any(op.get("path") == "/status/phase" for op in ops[1:]):
            raise Refused("patching MapReduceJob ns/j: the API server refused it as too large")
        self.allow -= 1
        return self.inner.patch(ops)


def make_job(tmp: Path, name: str, **spec: Any) -> tuple[Path, Path]:
    """A job of 12 small inputs, created as `kubemr run` creates it; (run dir, output)."""
    data = tmp / "in"
    data.mkdir(exist_ok=True)
    for i in range(12):
        (data / f"f{i:02d}.txt").write_text("".join(f"w{j % 5} {i}\n" for j in range(50)))
    manifest = {
        "apiVersion": "kubemr.io/v1alpha1",
        "kind": "MapReduceJob",
        "metadata": {"name": name},
        "spec": {"inputs": ["./in/"], "map": "cat", "reduce": "cat", "partitions": 2, **spec},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    output = tmp / f"{name}-out"
    run_dir = tmp / f"{name}-run"
    prep = prepare(str(path), str(output), {})
    LocalRun.create(prep, str(run_dir))
    return run_dir, output


def run_workers(run_dir: Path, stores: list[Store], runner: type[DataPath] = DataPath) -> None:
    threads = []
    for i, store in enumerate(stores):
        config = shim_config.from_env(
            {
                "KUBEMR_STORE": f"sqlite://{run_dir / 'job.db'}",
                "KUBEMR_WORKER_ID": f"w{i}",
                "KUBEMR_SCRATCH": str(run_dir / "scratch" / f"w{i}"),
                "KUBEMR_WORKDIR": f"file://{run_dir / 'work'}/",
                "KUBEMR_LEASE_SECONDS": "2",
                "KUBEMR_BATCH": "4",
                "KUBEMR_WORKERS": str(len(stores)),
                "PATH": "/usr/bin:/bin",
            }
        )
        worker = Worker(config, store=store, runner=runner(config))
        threads.append(threading.Thread(target=worker.run, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a worker did not finish"


def expected(tmp: Path) -> list[str]:
    return sorted(
        line for f in sorted((tmp / "in").iterdir()) for line in f.read_text().splitlines()
    )


def test_lost_answers_cost_no_attempt_and_change_no_result(tmp_path: Path) -> None:
    """Renewals, commits and claims whose answers are lost are recognised when read again:
    every task commits its first attempt, and nothing is charged as a failure."""
    run_dir, output = make_job(tmp_path, "lossy", map="sleep 1; cat")
    db = str(run_dir / "job.db")
    stores = [LossyStore(SqliteStore(db), 0.5, seed) for seed in range(3)]
    run_workers(run_dir, list(stores))
    doc = SqliteStore(db).get()
    assert doc["status"]["phase"] == "Succeeded", doc["status"].get("message")
    assert sum(s.lost for s in stores) >= 5
    for name in ("map", "reduce"):
        st = state.stage_of(doc, name)
        assert st is not None and not st.fails and not st.errors, (name, st)
        assert state.attempts_of(doc, name) == [1] * st.n
    got = sorted(line for p in sorted(output.glob("part-*")) for line in p.read_text().splitlines())
    assert got == expected(tmp_path) and (output / "_SUCCESS").exists()


class FailedWhilePublishing(DataPath):
    """Publishes, but the job fails meanwhile (as the operator fails a job whose pods fail)."""

    def run(self, job: Any, doc: Any, task: state.Task, attempt: int, watch: Any) -> Result:
        out = super().run(job, doc, task, attempt, watch)
        if task.stage == "publish":
            store = SqliteStore(self.config.store_url.removeprefix("sqlite://"))
            latest = store.get()
            store.patch(state.fail_job(latest, None, "the worker Job failed", 0.0))
        return out


def test_a_job_that_fails_while_it_publishes_never_shows_success(tmp_path: Path) -> None:
    run_dir, output = make_job(tmp_path, "late")
    db = str(run_dir / "job.db")
    run_workers(run_dir, [SqliteStore(db)], runner=FailedWhilePublishing)
    doc = SqliteStore(db).get()
    assert doc["status"]["phase"] == "Failed"
    assert list(output.glob("part-*"))  # the results were copied, but
    assert not (output / "_SUCCESS").exists()  # no reader takes them for complete


def test_a_refused_write_fails_the_job_saying_why(tmp_path: Path) -> None:
    """A write the store refuses for good (too large, invalid) is not retried for ever, nor
    blamed on a lost lease: the job fails with the store's reason."""
    run_dir, _ = make_job(tmp_path, "refused", map="sleep 0.2; cat")
    db = str(run_dir / "job.db")
    run_workers(run_dir, [RefusingStore(SqliteStore(db), allow=3)])
    doc = SqliteStore(db).get()
    assert doc["status"]["phase"] == "Failed"
    assert "refused it as too large" in doc["status"]["message"]


class Buggy(DataPath):
    """A data path with a bug: every map attempt raises an error kubemr does not expect."""

    def run(self, job: Any, doc: Any, task: state.Task, attempt: int, watch: Any) -> Result:
        if task.stage == "map":
            raise ValueError("embedded null byte")
        return super().run(job, doc, task, attempt, watch)


def test_an_internal_error_fails_the_attempt_saying_so_not_the_lease(tmp_path: Path) -> None:
    run_dir, _ = make_job(tmp_path, "buggy", maxAttempts=2)
    db = str(run_dir / "job.db")
    run_workers(run_dir, [SqliteStore(db)], runner=Buggy)
    status = SqliteStore(db).get()["status"]
    assert status["phase"] == "Failed"
    assert "failed 2 of 2 attempts" in status["message"]
    assert "internal error: ValueError: embedded null byte" in status["message"]
    assert "lease" not in status["message"]


class StorageAway(DataPath):
    """Stands in for an S3 server that restarts: for its first seconds every map attempt
    cannot reach storage (a temporary failure, as kubemr.storage.s3 reports one)."""

    until = 0.0

    def run(self, job: Any, doc: Any, task: state.Task, attempt: int, watch: Any) -> Result:
        if task.stage == "map" and time.monotonic() < StorageAway.until:
            raise TemporaryStorageError("Could not reach S3 to read s3://b/plan.json.")
        return super().run(job, doc, task, attempt, watch)


def test_storage_away_for_seconds_fails_no_task(tmp_path: Path) -> None:
    """A worker waits longer after each temporary failure (0.5 s, doubling), so seconds of
    storage outage cost a task a few temporary failures, not all ten and then its attempts."""
    run_dir, output = make_job(tmp_path, "away", maxAttempts=2)
    db = str(run_dir / "job.db")
    StorageAway.until = time.monotonic() + 4.0
    run_workers(run_dir, [SqliteStore(db)], runner=StorageAway)
    doc = SqliteStore(db).get()
    assert doc["status"]["phase"] == "Succeeded", doc["status"].get("message")
    st = state.stage_of(doc, "map")
    assert st is not None and not st.fails
    assert (output / "_SUCCESS").exists()
