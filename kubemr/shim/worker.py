"""The worker loop: read the job, decide, claim, run, commit; until the job ends.

This is `kubemr shim`, the entrypoint of every worker pod and of every
worker process of `kubemr run`. Decisions come from `kubemr.state` (pure);
this module applies them to the store and runs the claimed task. While a
task runs, a lease keeper renews the claim; if renewal fails (the task was
taken over, the job ended), the task's processes are killed and nothing is
committed. SIGTERM releases the task so another worker can start it at once.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from kubemr import layout, state
from kubemr.errors import (
    Conflict,
    InputError,
    KubemrError,
    SpecError,
    TemporaryError,
)
from kubemr.plan import Split, load_plan
from kubemr.shim import sidecar
from kubemr.shim.attempt import Attempt
from kubemr.shim.config import ShimConfig
from kubemr.shim.job import Job
from kubemr.shim.mapper import run_map
from kubemr.shim.planner import run_plan
from kubemr.shim.process import Stopped, Watch
from kubemr.shim.publisher import run_publish
from kubemr.shim.reducer import run_reduce
from kubemr.store import Store, open_store

log = logging.getLogger("kubemr.shim")

MAX_STORE_ERRORS = 30


class LeaseKeeper:
    """Renews a claim in the background; sets `lost` when it can no longer prove it holds it."""

    def __init__(
        self,
        store: Store,
        task: state.Task,
        entry: state.Entry,
        lease_seconds: int,
        status: Callable[[], str | None],
        parent_alive: Callable[[], bool],
    ) -> None:
        self.store = store
        self.task = task
        self.entry = entry
        self.lease_seconds = lease_seconds
        self.status = status
        self.parent_alive = parent_alive
        self.lost = threading.Event()
        self.why: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lease")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> state.Entry:
        """Stop renewing and return the entry as last written (what a commit must test)."""
        self._stop.set()
        self._thread.join()
        return self.entry

    def lose(self, why: str) -> None:
        if not self.lost.is_set():
            self.why.append(why)
            self.lost.set()

    def _run(self) -> None:
        interval = max(self.lease_seconds / 3.0, 0.5)
        while not self._stop.wait(interval):
            if not self.parent_alive():
                self.lose("the process that started this worker is gone")
                return
            with self._lock:
                patch, new = state.renew(
                    self.task, self.entry, time.time(), self.lease_seconds, self.status()
                )
                try:
                    self.store.patch(patch)
                    self.entry = new
                except Conflict:
                    self.lose("the lease was taken over or the job ended")
                    return
                except Exception as exc:  # any failure: keep trying until the lease runs out
                    log.warning("renewing the lease on %s failed: %s", self.task.name, exc)
                    if time.time() > float(self.entry.get("x", 0)):
                        self.lose("the lease expired while the job store was unreachable")
                        return


class Worker:
    """One worker: a loop over the job document until the job ends."""

    def __init__(self, config: ShimConfig, store: Store | None = None) -> None:
        self.config = config
        self.store = store or open_store(config.store_url)
        self.job: Job | None = None
        self.stopping = threading.Event()
        self._plans: dict[str, list[Split]] = {}
        self._rng = random.Random()

    def parent_alive(self) -> bool:
        parent = self.config.parent_pid
        return parent is None or os.getppid() == parent

    def handle_signals(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self) -> int:
        """Work until the job ends; returns the process exit code."""
        idle = 0.02
        errors = 0
        while not self.stopping.is_set():
            if not self.parent_alive():
                log.info("the process that started this worker is gone; stopping")
                return 1
            try:
                doc = self.store.get()
                if self.job is None:
                    self.job = Job.from_doc(doc, self.config)
                action = state.decide(doc, self._settings(self.job))
                errors = 0
            except SpecError as exc:
                log.error("%s", exc)
                return 2
            except KubemrError as exc:
                errors += 1
                if errors >= MAX_STORE_ERRORS:
                    log.error("giving up: %s", exc)
                    return 1
                log.warning("reading the job failed (%s); retrying", exc)
                self.stopping.wait(min(0.5 * errors, 5.0))
                continue
            if isinstance(action, state.Finished):
                log.info("the job is %s", action.phase)
                return 0
            if isinstance(action, state.Wait):
                self.stopping.wait(idle)
                idle = min(idle * 2, self.config.poll_seconds)
                continue
            idle = 0.02
            try:
                self.store.patch(action.patch)
            except Conflict:
                continue
            except KubemrError as exc:
                log.warning("updating the job failed (%s); retrying", exc)
                continue
            if isinstance(action, state.Advance):
                log.info("%s", action.why)
                continue
            self._run_task(self.job, doc, action.task, action.entry)
        return 0

    def _settings(self, job: Job) -> state.Settings:
        return state.Settings(
            holder=self.config.worker_id,
            now=time.time(),
            lease_seconds=self.config.lease_seconds,
            max_attempts=job.spec.max_attempts,
            pick=self._rng.randrange(1 << 30),
        )

    def _run_task(
        self, job: Job, doc: dict[str, Any], task: state.Task, entry: state.Entry
    ) -> None:
        attempt_no = int(entry["a"])
        log.info("%s attempt %d started", task.name, attempt_no)
        root = os.path.join(self.config.scratch, f"{task.name}.a{attempt_no}")
        cancel_why: list[str] = []
        cancel = threading.Event()
        keeper: LeaseKeeper | None = None
        att: Attempt | None = None
        started = time.monotonic()

        def status() -> str | None:
            return att.log.status if att is not None else None

        keeper = LeaseKeeper(
            self.store, task, entry, self.config.lease_seconds, status, self.parent_alive
        )
        keeper.start()
        watcher = threading.Thread(
            target=self._watch_cancel, args=(keeper, cancel, cancel_why), daemon=True
        )
        watcher.start()
        timeout = float(job.spec.task_timeout) if task.stage in ("map", "reduce") else 24 * 3600.0
        permanent = temporary = False
        error: str | None = None
        commit: Callable[[state.Entry], state.Patch] | None = None
        try:
            att = Attempt(job, task, attempt_no, root, Watch(timeout, cancel, cancel_why))
            commit = self._execute(job, doc, att)
        except Stopped as exc:
            if exc.timeout:
                error = f"{self._what(job, doc, task)}{exc.reason}"
            else:
                error = None
                cancel_why.append(exc.reason)
        except (InputError, SpecError) as exc:
            error, permanent = f"{self._what(job, doc, task)}{exc}", True
        except TemporaryError as exc:
            error, temporary = f"{self._what(job, doc, task)}{exc}", True
        except KubemrError as exc:  # a command failed (TaskFailed), storage, anything else
            error = f"{self._what(job, doc, task)}{exc}"
        except OSError as exc:
            error = f"{self._what(job, doc, task)}{exc.strerror or exc}"
        finally:
            cancel.set()
            watcher.join()
        mine = keeper.stop()
        if att is not None:
            att.log.close()
            self._upload_log(job, doc, att)
            att.cleanup()
        elapsed = time.monotonic() - started
        if keeper.lost.is_set() or (commit is None and error is None):
            why = "; ".join(keeper.why or cancel_why) or "stopped"
            if self.stopping.is_set() and not keeper.lost.is_set():
                self._apply(state.release(task, mine), task, "release")
            log.warning(
                "%s attempt %d abandoned after %.1fs: %s", task.name, attempt_no, elapsed, why
            )
            return
        if commit is not None:
            if self._apply(commit(mine), task, "commit"):
                log.info("%s attempt %d committed in %.2fs", task.name, attempt_no, elapsed)
                if task.stage == "publish":
                    self._cleanup(job)
            return
        assert error is not None
        log.warning("%s attempt %d failed after %.1fs: %s", task.name, attempt_no, elapsed, error)
        patch = state.fail_attempt(
            task, mine, error, job.spec.max_attempts, time.time(), permanent, temporary
        )
        self._apply(patch, task, "failure")

    def _watch_cancel(self, keeper: LeaseKeeper, cancel: threading.Event, why: list[str]) -> None:
        while not cancel.wait(0.1):
            if keeper.lost.is_set():
                why.extend(keeper.why)
                cancel.set()
                return
            if self.stopping.is_set():
                why.append("the worker was asked to stop")
                cancel.set()
                return

    def _apply(self, patch: state.Patch, task: state.Task, what: str) -> bool:
        for attempt in range(10):
            try:
                self.store.patch(patch)
                return True
            except Conflict:
                log.warning(
                    "%s of %s lost: the task was taken over or the job ended", what, task.name
                )
                return False
            except KubemrError as exc:
                log.warning("%s of %s failed (%s); retrying", what, task.name, exc)
                time.sleep(min(0.2 * (attempt + 1), 2.0))
        return False

    def _execute(
        self, job: Job, doc: dict[str, Any], att: Attempt
    ) -> Callable[[state.Entry], state.Patch]:
        task = att.task
        if task.stage == "plan":
            planned = run_plan(job, doc, att.number)
            return lambda mine: state.commit_plan(
                mine, planned.tasks, planned.plan_url, planned.workdir, planned.partitions
            )
        workdir = job.workdir(doc)
        if task.stage == "map":
            split = self._splits(job, doc)[task.index]
            has = run_map(att, split, workdir)
            return lambda mine: state.commit_task(task, mine, has)
        if task.stage == "reduce":
            has = run_reduce(att, workdir, state.entries(doc, "map"))
            return lambda mine: state.commit_task(task, mine, has)
        stages = {"map": state.entries(doc, "map")}
        if int(state.status_of(doc).get("partitions", 0)):
            stages["reduce"] = state.entries(doc, "reduce")
        results, counters = run_publish(job, workdir, stages)
        return lambda mine: state.commit_publish(mine, results, counters, time.time())

    def _splits(self, job: Job, doc: dict[str, Any]) -> list[Split]:
        url = str(state.status_of(doc)["planUrl"])
        if url not in self._plans:
            splits, _ = load_plan(job.storage(url).get_bytes(url))
            self._plans[url] = splits
        return self._plans[url]

    def _what(self, job: Job, doc: dict[str, Any], task: state.Task) -> str:
        """What a task worked on, to start its error message: the input of a map task."""
        if task.stage == "map":
            try:
                return f"input {self._splits(job, doc)[task.index].describe()}: "
            except (KubemrError, IndexError, KeyError):
                return ""
        if task.stage == "reduce":
            return f"partition {task.index}: "
        return ""

    def _upload_log(self, job: Job, doc: dict[str, Any], att: Attempt) -> None:
        path = att.log.path
        try:
            if os.path.getsize(path) == 0:
                return
        except OSError:
            return
        try:
            url = layout.log_url(job.workdir(doc), att.task, att.number)
            job.storage(url).put_file(path, url)
        except KubemrError as exc:
            log.warning("could not store the stderr of %s: %s", att.task.name, exc)

    def _cleanup(self, job: Job) -> None:
        if job.spec.keep_intermediate:
            return
        try:
            doc = self.store.get()
            root = layout.data_root(job.workdir(doc))
            job.storage(root).delete_prefix(root)
        except KubemrError as exc:
            log.warning("could not remove intermediate data: %s", exc)


def main(config: ShimConfig) -> int:
    """`kubemr shim`: configure logging, handle signals, run the loop."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {config.worker_id} %(levelname)s %(message)s",
    )
    if config.executor is not None:
        try:
            config = sidecar.prepare(config)
        except KubemrError as exc:
            log.error("%s", exc)
            return 1
    worker = Worker(config)
    worker.handle_signals()
    code = 1
    try:
        code = worker.run()
        return code
    finally:
        worker.store.close()
        if config.executor is not None:
            sidecar.finish(config, code, worker.stopping)
