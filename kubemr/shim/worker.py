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
from dataclasses import dataclass
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
    """Renews the leases of the tasks a worker holds, all in one patch, in the background;
    sets `lost` when it can no longer prove it holds them."""

    def __init__(
        self,
        store: Store,
        held: list[tuple[state.Task, state.Entry]],
        lease_seconds: int,
        status: Callable[[], str | None],
        parent_alive: Callable[[], bool],
    ) -> None:
        self.store = store
        self.held: dict[state.Task, state.Entry] = dict(held)
        #: The task running now: its reporter status goes on its entry.
        self.current: state.Task | None = held[0][0] if held else None
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

    def stop(self) -> dict[state.Task, state.Entry]:
        """Stop renewing; the entries as last written (what a commit must test)."""
        self._stop.set()
        self._thread.join()
        return dict(self.held)

    def settle(self, task: state.Task, apply: Callable[[state.Entry], bool]) -> bool:
        """Stop renewing `task` and call `apply` with its entry as last written (to record its
        failure, say), with no renewal in between to change that entry."""
        with self._lock:
            mine = self.held.pop(task, None)
            return mine is not None and apply(mine)

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
                held = list(self.held.items())
                if not held:
                    continue
                patch, new = state.renew_all(
                    held, time.time(), self.lease_seconds, self.status(), self.current
                )
                try:
                    self.store.patch(patch)
                    self.held = {task: entry for (task, _), entry in zip(held, new, strict=True)}
                except Conflict:
                    self.lose("the lease was taken over or the job ended")
                    return
                except Exception as exc:  # any failure: keep trying until the lease runs out
                    names = ", ".join(t.name for t, _ in held)
                    log.warning("renewing the lease on %s failed: %s", names, exc)
                    if time.time() > min(float(e.get("x", 0)) for _, e in held):
                        self.lose("the lease expired while the job store was unreachable")
                        return


@dataclass
class Outcome:
    """How one attempt ended: a commit to make, an error to record, or neither (stopped)."""

    commit: Callable[[state.Entry], state.Patch] | None = None
    error: str | None = None
    permanent: bool = False
    temporary: bool = False
    stopped: str | None = None
    elapsed: float = 0.0


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
            self._run_claim(self.job, doc, action)
        return 0

    def _settings(self, job: Job) -> state.Settings:
        return state.Settings(
            holder=self.config.worker_id,
            now=time.time(),
            lease_seconds=self.config.lease_seconds,
            max_attempts=job.spec.max_attempts,
            pick=self._rng.randrange(1 << 30),
            batch=self.config.batch,
            workers=job.spec.replicas,
        )

    def _run_claim(self, job: Job, doc: dict[str, Any], claim: state.Claim) -> None:
        """Run the tasks of one claim in turn under one lease; commit those that succeed
        together, record each failure as it happens, hand back the rest if asked to stop."""
        current: list[Attempt] = []

        def status() -> str | None:
            return current[-1].log.status if current else None

        keeper = LeaseKeeper(
            self.store, claim.held, self.config.lease_seconds, status, self.parent_alive
        )
        keeper.start()
        if claim.more:
            names = ", ".join(task.name for task, _ in claim.held)
            log.info("claimed %s under one lease", names)
        done: list[tuple[state.Task, int, Outcome]] = []
        stopped: list[tuple[state.Task, int, str]] = []
        for task, entry in claim.held:
            attempt_no = int(entry["a"])
            if keeper.lost.is_set() or self.stopping.is_set():
                break
            keeper.current = task
            out = self._attempt(job, doc, task, attempt_no, keeper, current)
            if out.commit is not None:
                done.append((task, attempt_no, out))
            elif out.error is not None:
                if self._record_failure(job, keeper, task, attempt_no, out):
                    break  # that failure ended the job
            else:
                stopped.append((task, attempt_no, out.stopped or "stopped"))
                break
        held = keeper.stop()
        if keeper.lost.is_set():
            why = "; ".join(keeper.why) or "the lease was lost"
            for task, entry in held.items():
                log.warning("%s attempt %d abandoned: %s", task.name, int(entry["a"]), why)
            return
        if done:
            patch = [op for task, _, out in done if out.commit for op in out.commit(held[task])]
            names = ", ".join(task.name for task, _, _ in done)
            if self._apply(patch, done[0][0], "commit", names):
                for task, attempt_no, out in done:
                    log.info("%s attempt %d committed in %.2fs", task.name, attempt_no, out.elapsed)
                if done[0][0].stage == "publish":
                    self._cleanup(job)
        for task, attempt_no, why in stopped:
            log.warning("%s attempt %d abandoned: %s", task.name, attempt_no, why)
        finished = {task for task, _, _ in done}
        rest = [(task, entry) for task, entry in held.items() if task not in finished]
        if rest and self.stopping.is_set():
            patch = [op for task, entry in rest for op in state.release(task, entry)]
            self._apply(patch, rest[0][0], "release", ", ".join(t.name for t, _ in rest))

    def _record_failure(
        self, job: Job, keeper: LeaseKeeper, task: state.Task, attempt_no: int, out: Outcome
    ) -> bool:
        """Record a failed attempt; True if that failed the job (its attempts are used up)."""
        assert out.error is not None
        log.warning(
            "%s attempt %d failed after %.1fs: %s", task.name, attempt_no, out.elapsed, out.error
        )
        error = out.error

        ended: list[bool] = []

        def apply(mine: state.Entry) -> bool:
            patch = state.fail_attempt(
                task, mine, error, job.spec.max_attempts, time.time(), out.permanent, out.temporary
            )
            ended.append(any(op["path"] == "/status/phase" for op in patch[1:]))
            return self._apply(patch, task, "failure")

        return keeper.settle(task, apply) and any(ended)

    def _attempt(
        self,
        job: Job,
        doc: dict[str, Any],
        task: state.Task,
        attempt_no: int,
        keeper: LeaseKeeper,
        current: list[Attempt],
    ) -> Outcome:
        """Run one attempt of `task` to its end, whatever the end."""
        log.info("%s attempt %d started", task.name, attempt_no)
        root = os.path.join(self.config.scratch, f"{task.name}.a{attempt_no}")
        cancel_why: list[str] = []
        cancel = threading.Event()
        att: Attempt | None = None
        started = time.monotonic()
        watcher = threading.Thread(
            target=self._watch_cancel, args=(keeper, cancel, cancel_why), daemon=True
        )
        watcher.start()
        timeout = float(job.spec.task_timeout) if task.stage in ("map", "reduce") else 24 * 3600.0
        out = Outcome()
        try:
            att = Attempt(job, task, attempt_no, root, Watch(timeout, cancel, cancel_why))
            current.append(att)
            out.commit = self._execute(job, doc, att)
        except Stopped as exc:
            if exc.timeout:
                out.error = f"{self._what(job, doc, task)}{exc.reason}"
            else:
                cancel_why.append(exc.reason)
        except (InputError, SpecError) as exc:
            out.error, out.permanent = f"{self._what(job, doc, task)}{exc}", True
        except TemporaryError as exc:
            out.error, out.temporary = f"{self._what(job, doc, task)}{exc}", True
        except KubemrError as exc:  # a command failed (TaskFailed), storage, anything else
            out.error = f"{self._what(job, doc, task)}{exc}"
        except OSError as exc:
            out.error = f"{self._what(job, doc, task)}{exc.strerror or exc}"
        finally:
            cancel.set()
            watcher.join()
        if att is not None:
            att.log.close()
            self._upload_log(job, doc, att)
            att.cleanup()
        out.elapsed = time.monotonic() - started
        if out.commit is None and out.error is None:
            out.stopped = "; ".join(keeper.why or cancel_why) or "stopped"
        return out

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

    def _apply(
        self, patch: state.Patch, task: state.Task, what: str, names: str | None = None
    ) -> bool:
        names = names or task.name
        for attempt in range(10):
            try:
                self.store.patch(patch)
                return True
            except Conflict:
                log.warning("%s of %s lost: the task was taken over or the job ended", what, names)
                return False
            except KubemrError as exc:
                log.warning("%s of %s failed (%s); retrying", what, names, exc)
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
