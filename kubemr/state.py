"""The job document and its transitions, as JSON patches. Pure: no I/O, no clock.

All coordination between workers is JSON patch on one document (the
MapReduceJob's `status` on a cluster, a SQLite row locally). Each transition
here is a function from the document a worker last read to the patch that
performs it; its `test` operations state the preconditions, so a store that
applies the patch atomically turns it into a compare-and-swap. A failed test
is a lost race (`Conflict`): the worker re-reads and decides again.

The status, compact so that a 10,000-task job fits in one Kubernetes object:

    phase       Pending|Deploying (operator) -> Planning -> Mapping
                -> Reducing (absent for map-only jobs) -> Publishing -> Succeeded|Failed
    plan        the planning task's entry
    map         [entry, ...] one per map task, created by the plan commit
    reduce      [entry, ...] one per partition, created when every map task is done
    publish     the publishing task's entry (copies results into place, writes _SUCCESS)
    planUrl     where the plan (splits, commands) is stored
    workdir     where intermediate data and task logs live
    partitions  reduce tasks (0: map-only)
    results, counters, message, startTime, completionTime

A task entry: {"s": state, "a": attempts started, "f": attempts failed
(absent when 0), "t": attempts that failed for a temporary reason, such as
S3 or the network being briefly away (absent when 0), "h": holder, "x": lease
expiry (epoch seconds), "e": last error, "c": 1 if the attempt wrote
counters, "m": last reporter status}.
States: "p" pending, "r" running, "d" done, "f" failed. A claim increments
"a", so every attempt has its own number and its own output names. One
claim may take several map or reduce tasks at once (`batch_size`), renewed
together and committed together, so that a job of 10,000 tasks costs far
fewer than 20,000 writes of its object; a commit
tests the exact entry its holder wrote, so a worker whose lease was taken
over can never commit. A failed attempt or a lost lease counts in "f"; a
worker that is asked to stop releases its task without counting a failure.
An attempt that failed for a temporary reason counts in "t" instead, up to
MAX_TEMPORARY_FAILURES, so that a restart of the S3 server does not use up a
task's attempts in the seconds it takes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Entry = dict[str, Any]
Patch = list[dict[str, Any]]
Doc = Mapping[str, Any]

PENDING, RUNNING, DONE, FAILED = "p", "r", "d", "f"

PLANNING = "Planning"
MAPPING = "Mapping"
REDUCING = "Reducing"
PUBLISHING = "Publishing"
SUCCEEDED = "Succeeded"
FAILED_PHASE = "Failed"
TERMINAL = (SUCCEEDED, FAILED_PHASE)
WORKER_PHASES = (PLANNING, MAPPING, REDUCING, PUBLISHING)
#: Phases set before any worker acts (locally, or by the operator).
STARTABLE = ("Pending", "Deploying", "Deployed")

STAGE_PHASE = {"plan": PLANNING, "map": MAPPING, "reduce": REDUCING, "publish": PUBLISHING}
SINGLE_STAGES = ("plan", "publish")
MAX_ERROR_CHARS = 400
MAX_STATUS_CHARS = 120
MAX_MESSAGE_CHARS = 1000
#: Temporary failures a task may have before they count as failures.
MAX_TEMPORARY_FAILURES = 10
#: How many of the first claimable tasks a worker chooses among, to spread workers out.
PICK_WINDOW = 64


@dataclass(frozen=True)
class Task:
    """A unit of work: the planning task, map task i, reduce task i, or the publishing task."""

    stage: str
    index: int = 0

    @property
    def name(self) -> str:
        return self.stage if self.stage in SINGLE_STAGES else f"{self.stage}-{self.index}"

    @property
    def path(self) -> str:
        if self.stage in SINGLE_STAGES:
            return f"/status/{self.stage}"
        return f"/status/{self.stage}/{self.index}"

    @staticmethod
    def parse(name: str) -> Task:
        """`map-3` -> Task("map", 3); `plan`, `publish` -> single tasks."""
        if name in SINGLE_STAGES:
            return Task(name)
        stage, _, index = name.partition("-")
        if stage in ("map", "reduce") and index.isdigit():
            return Task(stage, int(index))
        raise ValueError(f"{name!r} is not a task name; expected map-N, reduce-N, plan or publish")


@dataclass(frozen=True)
class Settings:
    """What a worker brings to a decision: who it is, the time, its lease, and a random pick."""

    holder: str
    now: float
    lease_seconds: int
    max_attempts: int
    pick: int = 0
    #: The most map or reduce tasks one claim may take (see `decide`).
    batch: int = 1
    #: How many workers share the job (spec.replicas), to leave work for the others.
    workers: int = 1


@dataclass(frozen=True)
class Claim:
    """Take `task`: apply `patch`; on success the worker holds `entry` (and each of `more`)."""

    task: Task
    entry: Entry
    patch: Patch
    #: Further tasks taken by the same patch, to run after `task`, under the same lease.
    more: tuple[tuple[Task, Entry], ...] = ()

    @property
    def held(self) -> list[tuple[Task, Entry]]:
        """Every task this claim takes, in the order to run them."""
        return [(self.task, self.entry), *self.more]


@dataclass(frozen=True)
class Advance:
    """Move the job forward (next stage, or fail it); nothing to run afterwards."""

    patch: Patch
    why: str


@dataclass(frozen=True)
class Wait:
    """Nothing to do now; read again later."""

    why: str


@dataclass(frozen=True)
class Finished:
    """The job is over."""

    phase: str


Action = Claim | Advance | Wait | Finished


def iso(now: float) -> str:
    """An RFC 3339 UTC timestamp, as Kubernetes writes them."""
    return dt.datetime.fromtimestamp(int(now), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_of(doc: Doc) -> Mapping[str, Any]:
    status = doc.get("status")
    return status if isinstance(status, Mapping) else {}


def phase_of(doc: Doc) -> str | None:
    phase = status_of(doc).get("phase")
    return phase if isinstance(phase, str) else None


def entries(doc: Doc, stage: str) -> Sequence[Entry]:
    """The entries of a stage ("map" or "reduce"), empty before it exists."""
    value = status_of(doc).get(stage)
    return value if isinstance(value, list) else []


def entry_of(doc: Doc, task: Task) -> Entry | None:
    status = status_of(doc)
    if task.stage in SINGLE_STAGES:
        value = status.get(task.stage)
        return value if isinstance(value, dict) else None
    items = entries(doc, task.stage)
    return items[task.index] if 0 <= task.index < len(items) else None


def all_tasks(doc: Doc) -> Iterator[tuple[Task, Entry]]:
    """Every task the document holds, with its entry, in stage order."""
    for stage in ("plan", "map", "reduce", "publish"):
        if stage in SINGLE_STAGES:
            task = Task(stage)
            entry = entry_of(doc, task)
            if entry is not None:
                yield task, entry
            continue
        for i, entry in enumerate(entries(doc, stage)):
            yield Task(stage, i), entry


def counts(doc: Doc, stage: str) -> tuple[int, int]:
    """(done, total) of a stage."""
    items = entries(doc, stage)
    return sum(1 for e in items if e.get("s") == DONE), len(items)


def _test(path: str, value: Any) -> dict[str, Any]:
    return {"op": "test", "path": path, "value": value}


def _replace(path: str, value: Any) -> dict[str, Any]:
    return {"op": "replace", "path": path, "value": value}


def _add(path: str, value: Any) -> dict[str, Any]:
    return {"op": "add", "path": path, "value": value}


def _running(attempt: int, failures: int, s: Settings, temporary: int = 0) -> Entry:
    entry: Entry = {"s": RUNNING, "a": attempt, "h": s.holder, "x": int(s.now) + s.lease_seconds}
    if failures:
        entry["f"] = failures
    if temporary:
        entry["t"] = temporary
    return entry


def _pending(attempts: int, failures: int, error: str | None = None, temporary: int = 0) -> Entry:
    entry: Entry = {"s": PENDING, "a": attempts}
    if failures:
        entry["f"] = failures
    if temporary:
        entry["t"] = temporary
    if error:
        entry["e"] = error
    return entry


def _expired(entry: Entry, now: float) -> bool:
    return entry.get("s") == RUNNING and float(entry.get("x", 0)) < now


def _claimable(entry: Entry, now: float) -> bool:
    return entry.get("s") == PENDING or _expired(entry, now)


def _take(task: Task, entry: Entry, s: Settings) -> Action:
    """Claim a pending task or one whose lease expired; fail the job when attempts are used up."""
    attempts = int(entry.get("a", 0))
    failures = int(entry.get("f", 0))
    lost = _expired(entry, s.now)
    if lost:
        failures += 1
    if failures >= s.max_attempts:
        if lost:
            why = (
                f"{task.name} failed {failures} of {s.max_attempts} attempts; last: its worker "
                "stopped renewing its lease (killed, out of memory, or frozen)"
            )
        else:
            why = (
                f"{task.name} failed {failures} of {s.max_attempts} attempts; last: "
                f"{entry.get('e', 'no reason recorded')}"
            )
        return Advance(fail_job(task, entry, why, s.now), why)
    new = _running(attempts + 1, failures, s, int(entry.get("t", 0)))
    return Claim(task, new, [_test(task.path, entry), _replace(task.path, new)])


def decide(doc: Doc, s: Settings) -> Action:
    """What a worker should do next, given the document it just read."""
    phase = phase_of(doc)
    if phase is None:
        return Wait("the job has no status.phase yet")
    if phase in TERMINAL:
        return Finished(phase)
    if phase in STARTABLE:
        task = Task("plan")
        new = _running(1, 0, s)
        patch = [
            _test("/status/phase", phase),
            _replace("/status/phase", PLANNING),
            _add("/status/plan", new),
            _add("/status/startTime", iso(s.now)),
        ]
        return Claim(task, new, patch)
    if phase in (PLANNING, PUBLISHING):
        task = Task("plan" if phase == PLANNING else "publish")
        entry = entry_of(doc, task)
        if entry is None:
            return Wait(f"the job is {phase} but has no {task.stage} entry")
        if _claimable(entry, s.now):
            return _take(task, entry, s)
        return Wait(f"{task.name} is running")
    if phase in (MAPPING, REDUCING):
        stage = "map" if phase == MAPPING else "reduce"
        items = entries(doc, stage)
        candidates = [i for i, e in enumerate(items) if _claimable(e, s.now)]
        if candidates:
            window = candidates[:PICK_WINDOW]
            first = s.pick % len(window)
            action = _take(Task(stage, window[first]), items[window[first]], s)
            size = batch_size(len(candidates), s)
            if size <= 1 or not isinstance(action, Claim):
                return action
            more: list[tuple[Task, Entry]] = []
            patch = list(action.patch)
            for index in candidates[first + 1 :]:
                if len(more) + 1 >= size:
                    break
                extra = _take(Task(stage, index), items[index], s)
                if isinstance(extra, Claim):  # one out of attempts fails the job on its own
                    more.append((extra.task, extra.entry))
                    patch.extend(extra.patch)
            return Claim(action.task, action.entry, patch, tuple(more))
        if all(e.get("s") == DONE for e in items):
            return Advance(advance(doc), f"every {stage} task is done")
        return Wait(f"waiting for running {stage} tasks")
    return Wait(f"unknown phase {phase!r} in status.phase")


def batch_size(claimable: int, s: Settings) -> int:
    """How many tasks one claim takes: at most `s.batch`, and few enough that every worker
    still finds about twice as many tasks left as this claim takes (guided self-scheduling),
    so the claims shrink to single tasks as a stage runs out and no worker sits idle while
    another holds a queue. Fewer, larger claims and commits are what let one object
    coordinate thousands of tasks: every write of it rewrites the whole object."""
    return max(1, min(s.batch, claimable // (2 * max(1, s.workers))))


def advance(doc: Doc) -> Patch:
    """Start the next stage once every task of this one is done."""
    phase = phase_of(doc)
    partitions = int(status_of(doc).get("partitions", 0))
    if phase == MAPPING and partitions > 0:
        return [
            _test("/status/phase", MAPPING),
            _replace("/status/phase", REDUCING),
            _add("/status/reduce", [_pending(0, 0) for _ in range(partitions)]),
        ]
    if phase in (MAPPING, REDUCING):
        return [
            _test("/status/phase", phase),
            _replace("/status/phase", PUBLISHING),
            _add("/status/publish", _pending(0, 0)),
        ]
    raise ValueError(f"cannot advance from phase {phase!r}")


def renew(
    task: Task, mine: Entry, now: float, lease_seconds: int, message: str | None
) -> tuple[Patch, Entry]:
    """Extend my lease; fails (Conflict) if the task was taken over or the job ended."""
    new = dict(mine)
    new["x"] = int(now) + lease_seconds
    if message:
        new["m"] = message[:MAX_STATUS_CHARS]
    patch = [
        _test("/status/phase", STAGE_PHASE[task.stage]),
        _test(task.path, mine),
        _replace(task.path, new),
    ]
    return patch, new


def renew_all(
    held: Sequence[tuple[Task, Entry]],
    now: float,
    lease_seconds: int,
    message: str | None,
    current: Task | None = None,
) -> tuple[Patch, list[Entry]]:
    """Extend the lease on every task I hold, in one patch; `message` goes on `current`."""
    patch: Patch = []
    new: list[Entry] = []
    for i, (task, mine) in enumerate(held):
        part, entry = renew(task, mine, now, lease_seconds, message if task == current else None)
        patch.extend(part if i == 0 else part[1:])  # one test of the phase is enough
        new.append(entry)
    return patch, new


def commit_plan(mine: Entry, tasks: int, plan_url: str, workdir: str, partitions: int) -> Patch:
    """Finish planning: create `tasks` pending map tasks and start mapping."""
    return [
        _test("/status/phase", PLANNING),
        _test("/status/plan", mine),
        _replace("/status/plan", {"s": DONE, "a": mine["a"]}),
        _add("/status/planUrl", plan_url),
        _add("/status/workdir", workdir),
        _add("/status/partitions", partitions),
        _add("/status/map", [_pending(0, 0) for _ in range(tasks)]),
        _replace("/status/phase", MAPPING),
    ]


def commit_task(task: Task, mine: Entry, has_counters: bool) -> Patch:
    """A map or reduce attempt finished: its outputs become the task's outputs."""
    done: Entry = {"s": DONE, "a": mine["a"]}
    if has_counters:
        done["c"] = 1
    return [
        _test("/status/phase", STAGE_PHASE[task.stage]),
        _test(task.path, mine),
        _replace(task.path, done),
    ]


def commit_publish(
    mine: Entry, results: list[str], counters: Mapping[str, Mapping[str, int]], now: float
) -> Patch:
    """The results are in place and `_SUCCESS` is written: the job succeeded."""
    return [
        _test("/status/phase", PUBLISHING),
        _test("/status/publish", mine),
        _replace("/status/publish", {"s": DONE, "a": mine["a"]}),
        _add("/status/results", results),
        _add("/status/counters", dict(counters)),
        _add("/status/completionTime", iso(now)),
        _add("/status/message", f"completed with {len(results)} result file(s)"),
        _replace("/status/phase", SUCCEEDED),
    ]


def fail_attempt(
    task: Task,
    mine: Entry,
    reason: str,
    max_attempts: int,
    now: float,
    permanent: bool = False,
    temporary: bool = False,
) -> Patch:
    """My attempt failed: make the task pending again, or fail the job when attempts are used up.

    A `temporary` failure (storage or network briefly away) does not count toward
    `max_attempts` until the task has had MAX_TEMPORARY_FAILURES of them."""
    reason = clip(reason)
    temporaries = int(mine.get("t", 0))
    if temporary and not permanent and temporaries < MAX_TEMPORARY_FAILURES:
        return [
            _test("/status/phase", STAGE_PHASE[task.stage]),
            _test(task.path, mine),
            _replace(
                task.path,
                _pending(int(mine["a"]), int(mine.get("f", 0)), reason, temporaries + 1),
            ),
        ]
    failures = int(mine.get("f", 0)) + 1
    if permanent:
        return fail_job(task, mine, f"{task.name} failed: {reason}", now)
    if failures >= max_attempts:
        why = f"{task.name} failed {failures} of {max_attempts} attempts; last: {reason}"
        return fail_job(task, mine, why, now)
    return [
        _test("/status/phase", STAGE_PHASE[task.stage]),
        _test(task.path, mine),
        _replace(task.path, _pending(int(mine["a"]), failures, reason, temporaries)),
    ]


def release(task: Task, mine: Entry) -> Patch:
    """I was asked to stop: hand the task back without counting a failure."""
    return [
        _test("/status/phase", STAGE_PHASE[task.stage]),
        _test(task.path, mine),
        _replace(
            task.path,
            _pending(int(mine["a"]), int(mine.get("f", 0)), mine.get("e"), int(mine.get("t", 0))),
        ),
    ]


def fail_job(task: Task, seen: Entry, why: str, now: float) -> Patch:
    """End the job as Failed because of `task`, whose entry was `seen`."""
    return [
        _test("/status/phase", STAGE_PHASE[task.stage]),
        _test(task.path, seen),
        _replace(task.path, {"s": FAILED, "a": seen.get("a", 0), "e": clip(why)}),
        _replace("/status/phase", FAILED_PHASE),
        _add("/status/message", clip(why, MAX_MESSAGE_CHARS)),
        _add("/status/failedTask", task.name),
        _add("/status/completionTime", iso(now)),
    ]


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to at most `limit` characters, keeping its end (where errors say why)."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return "..." + text[-(limit - 3) :]
