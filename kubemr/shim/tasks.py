"""What a worker runs for a task it holds: the data path behind the protocol.

The worker (`kubemr.shim.worker`) decides, claims, renews and commits; for
every task it holds it calls a `TaskRunner`. `DataPath` is the real one:
planning lists the inputs and stores the plan, a map attempt streams its
split through the map command into sorted runs, a reduce attempt merges
every committed map attempt's run for its partition into the reduce command,
and publishing puts the results in place; each attempt in a scratch
directory of its own, its stderr stored beside the data. The coordination
benchmark runs real workers with a runner that moves no data, at this
interface and nowhere else.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubemr import layout, state
from kubemr.errors import KubemrError
from kubemr.plan import Split, load_plan
from kubemr.reporter import Counters
from kubemr.shim.archives import Archives
from kubemr.shim.attempt import Attempt
from kubemr.shim.config import ShimConfig
from kubemr.shim.job import Job
from kubemr.shim.mapper import run_map
from kubemr.shim.planner import Planned, run_plan
from kubemr.shim.process import Watch
from kubemr.shim.publisher import run_publish
from kubemr.shim.reducer import run_reduce
from kubemr.shuffle import IndexCache, Spool
from kubemr.state import Task

log = logging.getLogger("kubemr.shim")

Doc = Mapping[str, Any]


@dataclass
class Result:
    """What a finished attempt hands to its commit."""

    counters: Counters = field(default_factory=dict)
    #: Planning: the plan to commit.
    planned: Planned | None = None
    #: Publishing: the result URLs, and the manifest listing them when there are many.
    results: list[str] = field(default_factory=list)
    results_url: str | None = None


class TaskRunner(Protocol):
    """Runs one attempt of one task; raises KubemrError (or Stopped) if it does not finish."""

    def run(self, job: Job, doc: Doc, task: Task, attempt: int, watch: Watch) -> Result: ...

    def claimed(self, held: state.Held) -> None:
        """The worker is about to run the tasks of `held`, in order."""

    def status(self) -> str | None:
        """The reporter status of the attempt running now, if it reported one."""

    def describe(self, job: Job, doc: Doc, task: Task) -> str:
        """What the task works on, to start its error messages (`input s3://...: `)."""

    def succeeded(self, job: Job, doc: Doc) -> None:
        """The job has Succeeded: write `_SUCCESS` (idempotent; may run on any worker)."""

    def clean_up(self, job: Job, doc: Doc) -> None:
        """The job has Succeeded and `_SUCCESS` is written: remove intermediate data."""


class DataPath:
    """The real runner: commands, sorting and storage."""

    def __init__(self, config: ShimConfig) -> None:
        self.config = config
        self._plans: dict[str, list[Split]] = {}
        self._archives: Archives | None = None  # unpacked once per worker (spec.archives)
        self._indexes = IndexCache()
        self._spool = Spool(os.path.join(config.scratch, "spool"))
        self._claim_end = 0  # the end of this worker's claim of reduce tasks
        self._current: Attempt | None = None

    def claimed(self, held: state.Held) -> None:
        """The worker is about to run the tasks of `held`, in order: a reduce task reads ahead
        for the ones after it, and what was read ahead for tasks before them is dropped."""
        if held.stage == "reduce":
            self._spool.prune(held.a)
            self._claim_end = held.b
        else:
            self._spool.clear()
            self._claim_end = 0

    def status(self) -> str | None:
        current = self._current
        return current.log.status if current is not None else None

    def run(self, job: Job, doc: Doc, task: Task, attempt: int, watch: Watch) -> Result:
        root = os.path.join(self.config.scratch, f"{task.name}.a{attempt}")
        att = Attempt(job, task, attempt, root, watch)
        self._current = att
        try:
            return self._execute(job, doc, att)
        finally:
            self._current = None
            att.log.close()
            self._upload_log(job, doc, att)
            att.cleanup()

    def _execute(self, job: Job, doc: Doc, att: Attempt) -> Result:
        task = att.task
        if task.stage == "plan":
            return Result(planned=run_plan(job, doc, att.number))
        workdir = job.workdir(doc)
        if task.stage in ("map", "reduce") and job.spec.archives:
            if self._archives is None:
                root = os.path.join(self.config.scratch, "archives")
                self._archives = Archives(root, job.spec.archives)
            self._archives.link_into(att.cwd, job.storage)
        if task.stage == "map":
            split = self.splits(job, doc)[task.index]
            return Result(counters=run_map(att, split, workdir))
        if task.stage == "reduce":
            maps = state.attempts_of(doc, "map")
            counters = run_reduce(att, workdir, maps, self._indexes, self._spool, self._claim_end)
            return Result(counters=counters)
        results, manifest = run_publish(job, workdir, doc)
        return Result(results=results, results_url=manifest)

    def splits(self, job: Job, doc: Doc) -> list[Split]:
        url = str(state.status_of(doc)["planUrl"])
        if url not in self._plans:
            splits, _ = load_plan(job.storage(url).get_bytes(url))
            self._plans[url] = splits
        return self._plans[url]

    def describe(self, job: Job, doc: Doc, task: Task) -> str:
        if task.stage == "map":
            try:
                return f"input {self.splits(job, doc)[task.index].describe()}: "
            except (KubemrError, IndexError, KeyError):
                return ""
        if task.stage == "reduce":
            return f"partition {task.index}: "
        return ""

    def succeeded(self, job: Job, doc: Doc) -> None:
        url = layout.output_url(job.output, layout.SUCCESS)
        job.storage(url).put_bytes(b"", url)

    def clean_up(self, job: Job, doc: Doc) -> None:
        if job.spec.keep_intermediate:
            return
        try:
            root = layout.data_root(job.workdir(doc))
            job.storage(root).delete_prefix(root)
        except KubemrError as exc:
            log.warning("could not remove intermediate data: %s", exc)

    def _upload_log(self, job: Job, doc: Doc, att: Attempt) -> None:
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


class NoData:
    """A runner that moves no data: planning plans `tasks` map tasks and no reduce, a task
    does nothing (for `pause` seconds), publishing places nothing. For measuring the protocol alone
    (bench/coordination.py --protocol) and testing it under faults; with `record`, every
    finished attempt appends `TASK ATTEMPT` to that file, so a test can check that what was
    committed is what ran."""

    def __init__(self, tasks: int, record: str | None = None, pause: float = 0.0) -> None:
        self.tasks = tasks
        self.record = record
        self.pause = pause

    def run(self, job: Job, doc: Doc, task: Task, attempt: int, watch: Watch) -> Result:
        watch.check()
        if task.stage == "plan":
            return Result(planned=Planned(self.tasks, "noop://plan", "noop://work/", 0))
        end = time.monotonic() + self.pause
        while time.monotonic() < end:  # a task that takes `pause` seconds, and can be stopped
            time.sleep(min(0.01, max(0.0, end - time.monotonic())))
            watch.check()
        if self.record is not None:
            with open(self.record, "a", encoding="utf-8") as f:
                f.write(f"{task.name} {attempt}\n")
        return Result()

    def claimed(self, held: state.Held) -> None:
        pass

    def status(self) -> str | None:
        return None

    def describe(self, job: Job, doc: Doc, task: Task) -> str:
        return ""

    def succeeded(self, job: Job, doc: Doc) -> None:
        pass

    def clean_up(self, job: Job, doc: Doc) -> None:
        pass
