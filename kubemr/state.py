"""The job document and its transitions, as JSON patches. Pure: no I/O, no clock of its own.

All coordination between workers is JSON patch on one document (the
MapReduceJob's `status` on a cluster, a SQLite row locally). Each transition
here is a function from the document a worker last read to the patch that
performs it; its `test` operations state the preconditions, so a store that
applies the patch atomically turns it into a compare-and-swap. A failed test
is a lost race (`Conflict`): the worker reads again and decides again.

Every write of a Kubernetes object rewrites all of it, and every watcher
receives all of it, so the document never grows with the number of tasks:
task states are sets of indices written as ranges (`kubemr.intervals`, as
Indexed Jobs write `completedIndexes`), a worker claims a contiguous range
of tasks under one lease, and per-task details (stderr, which worker ran
what) live in storage. A stage of 100,000 tasks that is half done is about
as large as one of ten tasks.

    status
      phase       Pending|Deploying (operator) -> Planning -> Mapping
                  -> Reducing (absent for map-only jobs) -> Publishing -> Succeeded|Failed
      plan, map, reduce, publish
                  one stage each, created as its phase begins (plan and publish: one task)
      planUrl     where the plan (splits, commands) is stored
      workdir     where intermediate data and task logs live
      partitions  reduce tasks (0: map-only)
      counters    Hadoop-style counters of the committed attempts, summed as they commit
      results     the result URLs, when there are at most MAX_LISTED_RESULTS of them;
      resultCount, resultsUrl  always the count; above that, a manifest beside _SUCCESS
      successWritten  true once `_SUCCESS` is in the output (written after phase Succeeded)
      message, failedTask, startTime, completionTime
      (the operator adds progress, conditions and its deployer lease)

    a stage
      n       tasks in the stage, numbered 0..n-1
      todo    tasks waiting to be claimed                       "0-99,150"
      done    tasks committed (besides the committed part of each claim in `held`)
      held    {holder: claim}, at most one claim per worker
      tries   attempts started, for tasks that were ever handed back (absent: 1 once claimed)
      fails   failed attempts of tasks not yet done             "17:1,40-63:1"
      temps   attempts that failed for a temporary reason (S3 or the network briefly away)
      errors  the last MAX_ERRORS failures: {"t": task, "a": attempt, "e": what happened}

    a claim (held[holder])
      n       the holder's own number for this claim, so it can tell its writes from a rival's
      w       the holder's write number: every write by the holder raises it
      a, b    the tasks a..b-1, run in order
      d       tasks a..d-1 are committed; the claim is finished when d == b
      l       its lease, in seconds
      m       the reporter status of the running task (optional)

The transitions: start (the first worker takes planning), claim (the first
tasks of `todo`, a few or many: `batch_size`), renew and commit progress
(the holder raises `w` and `d`; its counters are added to the job's in the
same patch), fail an attempt (the task goes back to `todo`, charged in
`fails`; the rest of the claim goes back uncharged), release (a worker asked
to stop hands back what it has not finished), take over (a claim whose
lease expired goes back to `todo`, each task charged one failure), fold (a
finished claim's tasks join `done`; done by the next claim of anyone),
advance (a stage is done: the next begins), commit planning and commit
publishing (which end their stages by changing the phase), fail the job (a
task has used up its attempts, or failed for a reason no retry can cure).

Attempts: every hand-out of a task is a new attempt with its own number
(`attempt_of`), and each attempt writes its outputs under its own name, so a
worker that lost its lease (a zombie) can never overwrite what another
committed. A task that was never handed back has attempt 1, which is not
written down; `tries` records the others.

Leases, not trust: the holder renews by raising `w`; a claim has expired when
nobody changed it for `l` seconds as measured by the observer's own clock
(`LeaseClock`, as client-go's leader election does), never by comparing two
machines' clocks. A takeover tests the exact claim it saw, so a renewal in
between makes it lose. Every holder write tests the claim's `n`, so a worker
whose claim was taken over can never commit; and every holder write raises
`w`, so a holder whose answer was lost recognises its own earlier write when
it reads again (`applied`) instead of taking it for a rival's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubemr.intervals import IndexMap, IndexSet

Entry = dict[str, Any]
Patch = list[dict[str, Any]]
Doc = Mapping[str, Any]
Counters = dict[str, dict[str, int]]

PLANNING = "Planning"
MAPPING = "Mapping"
REDUCING = "Reducing"
PUBLISHING = "Publishing"
SUCCEEDED = "Succeeded"
FAILED_PHASE = "Failed"
TERMINAL = (SUCCEEDED, FAILED_PHASE)
WORKER_PHASES = (PLANNING, MAPPING, REDUCING, PUBLISHING)
#: Phases set before any worker acts (locally, or by the operator).
STARTABLE = ("Pending", "Deploying")

STAGES = ("plan", "map", "reduce", "publish")
STAGE_PHASE = {"plan": PLANNING, "map": MAPPING, "reduce": REDUCING, "publish": PUBLISHING}
PHASE_STAGE = {phase: stage for stage, phase in STAGE_PHASE.items()}
SINGLE_STAGES = ("plan", "publish")
MAX_ERROR_CHARS = 400
MAX_STATUS_CHARS = 120
MAX_MESSAGE_CHARS = 1000
#: Failures kept in a stage's `errors` (the rest are in the task logs, in storage).
MAX_ERRORS = 5
#: Temporary failures a task may have before they count as failures.
MAX_TEMPORARY_FAILURES = 10
#: Distinct counters a job keeps (Hadoop's mapreduce.job.counters.max default).
MAX_COUNTERS = 120
#: Results listed in `status.results`; a job with more lists them in a manifest.
MAX_LISTED_RESULTS = 100
#: The counter that says how many counters were dropped beyond MAX_COUNTERS.
DROPPED_COUNTER = ("kubemr", "counters dropped (over the limit)")


@dataclass(frozen=True)
class Task:
    """A unit of work: the planning task, map task i, reduce task i, or the publishing task."""

    stage: str
    index: int = 0

    @property
    def name(self) -> str:
        return self.stage if self.stage in SINGLE_STAGES else f"{self.stage}-{self.index}"

    @staticmethod
    def parse(name: str) -> Task:
        """`map-3` -> Task("map", 3); `plan`, `publish` -> single tasks."""
        if name in SINGLE_STAGES:
            return Task(name)
        stage, _, index = name.partition("-")
        if stage in ("map", "reduce") and index.isdigit():
            return Task(stage, int(index))
        raise ValueError(f"{name!r} is not a task name; expected map-N, reduce-N, plan or publish")


# -- reading the document -----------------------------------------------------------------


def status_of(doc: Doc) -> Mapping[str, Any]:
    status = doc.get("status")
    return status if isinstance(status, Mapping) else {}


def phase_of(doc: Doc) -> str | None:
    phase = status_of(doc).get("phase")
    return phase if isinstance(phase, str) else None


class MalformedDocument(ValueError):
    """The job document is not in the shape this module writes."""


@dataclass(frozen=True)
class Stage:
    """One stage of the document, parsed."""

    name: str
    n: int
    todo: IndexSet
    done: IndexSet
    held: Mapping[str, Entry]
    tries: IndexMap
    fails: IndexMap
    temps: IndexMap
    errors: tuple[Mapping[str, Any], ...]
    raw: Mapping[str, Any] = field(repr=False)

    def committed(self) -> IndexSet:
        """Every committed task: `done`, and the committed part of each claim."""
        out = self.done
        for entry in self.held.values():
            out = out | IndexSet.range(int(entry["a"]), int(entry["d"]))
        return out

    def running(self) -> Iterator[tuple[str, Entry]]:
        """The claims that are not finished."""
        for holder, entry in self.held.items():
            if not finished(entry):
                yield holder, entry

    def attempt_of(self, index: int) -> int:
        """The number of the latest attempt of task `index` (0: never handed out)."""
        return self.tries.get(index, 0 if index in self.todo else 1)

    def holder_of(self, index: int) -> str | None:
        for holder, entry in self.held.items():
            if int(entry["d"]) <= index < int(entry["b"]):
                return holder
        return None

    def failures_of(self, index: int) -> tuple[int, int]:
        """(failed, temporarily failed) attempts of a task that is not done yet."""
        return self.fails.get(index), self.temps.get(index)


def finished(entry: Mapping[str, Any]) -> bool:
    return int(entry["d"]) >= int(entry["b"])


def stage_of(doc: Doc, name: str) -> Stage | None:
    """The stage `name` of the document; None before it exists. Raises MalformedDocument."""
    raw = status_of(doc).get(name)
    if raw is None:
        return None
    try:
        held = raw["held"]
        if not isinstance(held, Mapping):
            raise TypeError("held is not an object")
        for entry in held.values():
            for key in ("n", "w", "a", "b", "d", "l"):
                int(entry[key])
        errors = tuple(raw.get("errors") or ())
        return Stage(
            name=name,
            n=int(raw["n"]),
            todo=IndexSet.parse(raw["todo"]),
            done=IndexSet.parse(raw["done"]),
            held={str(k): dict(v) for k, v in held.items()},
            tries=IndexMap.parse(raw["tries"]),
            fails=IndexMap.parse(raw["fails"]),
            temps=IndexMap.parse(raw["temps"]),
            errors=errors,
            raw=raw,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedDocument(
            f"status.{name} of the job is not in the shape this kubemr writes ({exc}); it was "
            "made by another version of kubemr, or edited"
        ) from exc


def current_stage(doc: Doc) -> Stage | None:
    """The stage the job's phase is in, if it is in one."""
    phase = phase_of(doc)
    stage = PHASE_STAGE.get(phase or "")
    return stage_of(doc, stage) if stage else None


def counts(doc: Doc, stage: str) -> tuple[int, int]:
    """(committed, total) tasks of a stage; (0, 0) before it exists."""
    try:
        st = stage_of(doc, stage)
    except MalformedDocument:
        return 0, 0
    if st is None:
        return 0, 0
    return len(st.committed()), st.n


def errors_of(doc: Doc) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every stage's recent failures, oldest first: (stage, {"t", "a", "e"})."""
    for name in STAGES:
        raw = status_of(doc).get(name)
        if isinstance(raw, Mapping):
            for item in raw.get("errors") or ():
                if isinstance(item, Mapping):
                    yield name, item


def new_stage(n: int, todo: IndexSet | None = None) -> Entry:
    """A stage of `n` tasks, all waiting."""
    return {
        "n": n,
        "todo": str(IndexSet.range(0, n) if todo is None else todo),
        "done": "",
        "held": {},
        "tries": "",
        "fails": "",
        "temps": "",
        "errors": [],
    }


# -- what a worker brings to a decision, and what it decides ------------------------------


@dataclass(frozen=True)
class Settings:
    """What a worker brings to a decision: who it is, the time, its lease, its next claim."""

    holder: str
    now: float
    lease_seconds: int
    max_attempts: int
    #: The number this worker's next claim gets (it counts its own claims).
    claim_no: int = 1
    #: The most map or reduce tasks one claim may take (see `batch_size`).
    batch: int = 1
    #: How many workers share the job (spec.replicas), to leave work for the others.
    workers: int = 1


@dataclass(frozen=True)
class Held:
    """A claim as its holder knows it: tasks a..b-1 of `stage`, each with its attempt number."""

    stage: str
    holder: str
    n: int
    a: int
    b: int
    lease: int
    attempts: tuple[int, ...]

    @property
    def tasks(self) -> list[tuple[Task, int]]:
        """(task, attempt number) for every task of the claim, in the order to run them."""
        return [(Task(self.stage, self.a + i), att) for i, att in enumerate(self.attempts)]

    def attempt(self, index: int) -> int:
        return self.attempts[index - self.a]


@dataclass(frozen=True)
class Claim:
    """Take the tasks of `held`: apply `patch`; on success the worker holds them."""

    held: Held
    patch: Patch
    #: Claims this patch took over from workers that stopped renewing them.
    took_over: tuple[str, ...] = ()


@dataclass(frozen=True)
class Advance:
    """Move the job forward (next stage, or fail it); nothing to run afterwards."""

    patch: Patch
    why: str


@dataclass(frozen=True)
class Wait:
    """Nothing to do now; read again when the document changes."""

    why: str


@dataclass(frozen=True)
class Finished:
    """The job is over."""

    phase: str


Action = Claim | Advance | Wait | Finished


def iso(now: float) -> str:
    """An RFC 3339 UTC timestamp, as Kubernetes writes them."""
    return dt.datetime.fromtimestamp(int(now), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: object) -> float | None:
    """The time an `iso` timestamp names, or None for anything else."""
    if not isinstance(text, str):
        return None
    try:
        parsed = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return parsed.replace(tzinfo=dt.UTC).timestamp()


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to at most `limit` characters. A failure's first line says what failed (the
    task's input, the command, its exit code) and what follows quotes its stderr, whose end
    says why: the first line is kept (up to half of `limit`), the quote loses its start."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head, newline, quote = text.partition("\n")
    if not newline:
        half = (limit - 5) // 2
        return f"{text[:half]} ... {text[-(limit - 5 - half) :]}"
    if len(head) > limit // 2:
        head = head[: limit // 2 - 3] + "..."
    room = limit - len(head) - 5
    return f"{head}\n...{quote[-room:]}" if len(quote) > room else f"{head}\n{quote}"


def pointer(*parts: str) -> str:
    """A JSON pointer from its parts, escaped (RFC 6901)."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _test(path: str, value: Any) -> dict[str, Any]:
    return {"op": "test", "path": path, "value": value}


def _replace(path: str, value: Any) -> dict[str, Any]:
    return {"op": "replace", "path": path, "value": value}


def _add(path: str, value: Any) -> dict[str, Any]:
    return {"op": "add", "path": path, "value": value}


def _remove(path: str) -> dict[str, Any]:
    return {"op": "remove", "path": path}


def batch_size(claimable: int, s: Settings) -> int:
    """How many tasks one claim takes: at most `s.batch`, and few enough that every worker
    still finds about twice as many tasks left as this claim takes (guided self-scheduling),
    so the claims shrink to single tasks as a stage runs out and no worker sits idle while
    another holds a queue. Fewer, larger claims and commits are what let one object
    coordinate 100,000 tasks: every write of it rewrites the whole object."""
    return max(1, min(s.batch, claimable // (2 * max(1, s.workers))))


def add_counters(
    total: Mapping[str, Mapping[str, int]], more: Mapping[str, Mapping[str, int]]
) -> Counters:
    """`total` plus `more`, keeping at most MAX_COUNTERS distinct counters (the rest are
    counted, not kept, under DROPPED_COUNTER)."""
    out: Counters = {g: dict(names) for g, names in total.items()}
    kept = sum(len(names) for names in out.values())
    dropped = 0
    for group, names in more.items():
        for name, amount in names.items():
            if (group, name) == DROPPED_COUNTER:
                dropped += int(amount)
                continue
            have = out.get(group)
            if have is not None and name in have:
                have[name] += int(amount)
            elif kept < MAX_COUNTERS:
                out.setdefault(group, {})[name] = int(amount)
                kept += 1
            else:
                dropped += 1
    if dropped:
        group, name = DROPPED_COUNTER
        names = out.setdefault(group, {})
        names[name] = names.get(name, 0) + dropped
    return out


class _Edit:
    """Changes to one stage's shared fields and claims, emitted as tested operations."""

    def __init__(self, st: Stage) -> None:
        self.st = st
        self.todo = st.todo
        self.done = st.done
        self.tries = st.tries
        self.fails = st.fails
        self.temps = st.temps
        self.errors: list[Mapping[str, Any]] = list(st.errors)
        self.removed: dict[str, Entry] = {}
        self.put: dict[str, Entry] = {}

    def fold(self, holder: str, entry: Entry) -> None:
        """A finished claim's tasks join `done`."""
        tasks = IndexSet.range(int(entry["a"]), int(entry["d"]))
        self.done = self.done | tasks
        self.fails = self.fails.without(tasks)
        self.temps = self.temps.without(tasks)
        self.removed[holder] = entry

    def hand_back(self, tasks: IndexSet) -> None:
        """Tasks go back to `todo`; each keeps its attempt count in `tries`."""
        self.todo = self.todo | tasks
        self.tries = self.tries.plus(tasks, 0, default=1)

    def error(self, task: Task, attempt: int, text: str) -> None:
        self.errors = [*self.errors, {"t": task.name, "a": attempt, "e": clip(text)}][-MAX_ERRORS:]

    def ops(self) -> Patch:
        base = ("status", self.st.name)
        raw = self.st.raw
        out: Patch = []
        for key, value in (
            ("todo", self.todo),
            ("done", self.done),
            ("tries", self.tries),
            ("fails", self.fails),
            ("temps", self.temps),
        ):
            if str(value) != raw[key]:
                out += [
                    _test(pointer(*base, key), raw[key]),
                    _replace(pointer(*base, key), str(value)),
                ]
        if self.errors != list(self.st.errors):
            out += [
                _test(pointer(*base, "errors"), list(self.st.errors)),
                _replace(pointer(*base, "errors"), self.errors),
            ]
        for holder, entry in self.removed.items():
            path = pointer(*base, "held", holder)
            out.append(_test(path, entry))
            out.append(_replace(path, self.put[holder]) if holder in self.put else _remove(path))
        for holder, entry in self.put.items():
            if holder not in self.removed:
                out.append(_add(pointer(*base, "held", holder), entry))
        return out


def _first_phase_test(doc: Doc) -> dict[str, Any]:
    return _test("/status/phase", phase_of(doc))


def fail_job(
    doc: Doc,
    task: Task | None,
    why: str,
    now: float,
    edit_ops: Sequence[dict[str, Any]] = (),
    extra: Sequence[dict[str, Any]] = (),
) -> Patch:
    """End the job as Failed because of `task` (None: not one task's fault), with `edit_ops`
    recording the failure and `extra` (a condition, say) added. The one way a job fails."""
    ops = [
        _first_phase_test(doc),
        *edit_ops,
        _replace("/status/phase", FAILED_PHASE),
        _add("/status/message", clip(why, MAX_MESSAGE_CHARS)),
        _add("/status/completionTime", iso(now)),
        *extra,
    ]
    if task is not None:
        ops.append(_add("/status/failedTask", task.name))
    return ops


def _lost_lease_why(task: Task, failures: int, max_attempts: int, holder: str) -> str:
    return (
        f"{task.name} failed {failures} of {max_attempts} attempts; last: its worker {holder} "
        "stopped renewing its lease (killed, out of memory, or frozen)"
    )


def _take_over(edit: _Edit, holder: str, entry: Entry, s: Settings) -> tuple[Task, str] | None:
    """Hand back an expired claim: its committed part joins `done`, the rest goes back to
    `todo` with one failure charged to each task. Returns (task, why) if that used up a
    task's attempts (the job must fail)."""
    d, b = int(entry["d"]), int(entry["b"])
    rest = IndexSet.range(d, b)
    edit.fold(holder, entry)
    attempt = edit.tries.get(d, 1)
    edit.hand_back(rest)
    edit.fails = edit.fails.plus(rest, 1)
    task = Task(edit.st.name, d)
    worst, at = edit.fails.most(rest)
    why = _lost_lease_why(Task(edit.st.name, at), worst, s.max_attempts, holder)
    edit.error(task, attempt, f"its worker {holder} stopped renewing its lease")
    if worst >= s.max_attempts:
        return Task(edit.st.name, at), why
    return None


def decide(doc: Doc, s: Settings, expired: frozenset[str] = frozenset()) -> Action:
    """What a worker should do next, given the document it just read and the claims whose
    leases it has seen expire (`LeaseClock.expired`). A worker that decides holds no claim,
    so an unfinished claim of its own (left by an earlier life) counts as expired. Raises
    MalformedDocument for a status this module did not write."""
    phase = phase_of(doc)
    if phase is None:
        return Wait("the job has no status.phase yet")
    if phase in TERMINAL:
        return Finished(phase)
    if phase in STARTABLE:
        entry = {"n": s.claim_no, "w": 0, "a": 0, "b": 1, "d": 0, "l": s.lease_seconds}
        plan = new_stage(1, IndexSet())
        plan["held"] = {s.holder: entry}
        patch = [
            _test("/status/phase", phase),
            _replace("/status/phase", PLANNING),
            _add("/status/plan", plan),
            _add("/status/startTime", iso(s.now)),
            _add("/status/counters", {}),
        ]
        held = Held("plan", s.holder, s.claim_no, 0, 1, s.lease_seconds, (1,))
        return Claim(held, patch)
    stage = PHASE_STAGE.get(phase)
    if stage is None:
        return Wait(f"unknown phase {phase!r} in status.phase")
    st = stage_of(doc, stage)  # raises MalformedDocument: no worker can go on with it
    if st is None:
        return Wait(f"the job is {phase} but has no status.{stage}")
    edit = _Edit(st)
    took: list[str] = []
    for holder, entry in st.held.items():
        if finished(entry):
            edit.fold(holder, entry)
        elif holder in expired or holder == s.holder:
            failed = _take_over(edit, holder, entry, s)
            took.append(holder)
            if failed is not None:
                task, why = failed
                return Advance(fail_job(doc, task, why, s.now, edit.ops()), why)
    run = edit.todo.first_run(batch_size(len(edit.todo), s))
    if run is not None:
        a, b = run
        tasks = IndexSet.range(a, b)
        edit.todo = edit.todo - tasks
        again = tasks & edit.tries.keys()
        edit.tries = edit.tries.plus(again, 1)
        attempts = tuple(edit.tries.get(i, 1) for i in range(a, b))
        entry = {"n": s.claim_no, "w": 0, "a": a, "b": b, "d": a, "l": s.lease_seconds}
        edit.put[s.holder] = entry
        patch = [_first_phase_test(doc), *edit.ops()]
        held = Held(stage, s.holder, s.claim_no, a, b, s.lease_seconds, attempts)
        return Claim(held, patch, tuple(took))
    # Nothing left to claim (a takeover leaves tasks to claim, so there was none).
    if stage in SINGLE_STAGES:
        return Wait(f"{stage} is running")
    if any(True for _ in st.running()):
        return Wait(f"waiting for running {stage} tasks")
    if edit.done != IndexSet.range(0, st.n):
        return Wait(f"status.{stage} is inconsistent: nothing to run, but done is {edit.done}")
    return Advance(_advance(doc, st, edit), f"every {stage} task is done")


def _advance(doc: Doc, st: Stage, edit: _Edit) -> Patch:
    """Start the next stage once every task of this one is committed."""
    partitions = int(status_of(doc).get("partitions", 0) or 0)
    ops = [_first_phase_test(doc), *edit.ops()]
    if st.name == "map" and partitions > 0:
        return [
            *ops,
            _replace("/status/phase", REDUCING),
            _add("/status/reduce", new_stage(partitions)),
        ]
    return [
        *ops,
        _replace("/status/phase", PUBLISHING),
        _add("/status/publish", new_stage(1)),
    ]


# -- what the holder of a claim writes ----------------------------------------------------


def _mine(held: Held) -> str:
    return pointer("status", held.stage, "held", held.holder)


def _holder_ops(held: Held, w: int) -> Patch:
    """Preconditions of every write by a holder: the phase, and that the claim is still its."""
    return [
        _test("/status/phase", STAGE_PHASE[held.stage]),
        _test(_mine(held) + "/n", held.n),
        _replace(_mine(held) + "/w", w),
    ]


def _counter_ops(doc: Doc, more: Mapping[str, Mapping[str, int]]) -> Patch:
    if not more:
        return []
    total = status_of(doc).get("counters") or {}
    return [
        _test("/status/counters", total),
        _replace("/status/counters", add_counters(total, more)),
    ]


def renew(
    doc: Doc,
    held: Held,
    w: int,
    done_to: int,
    message: str | None = None,
    counters: Mapping[str, Mapping[str, int]] | None = None,
) -> Patch:
    """Extend the lease (raise `w`) and commit tasks up to `done_to`, with their counters.

    Commits are idempotent (`d` only moves to where the holder says), so a renewal
    whose answer was lost does no harm when the next one repeats it."""
    ops = _holder_ops(held, w)
    ops.append(_replace(_mine(held) + "/d", done_to))
    if message:
        ops.append(_add(_mine(held) + "/m", message[:MAX_STATUS_CHARS]))
    ops += _counter_ops(doc, counters or {})
    return ops


def applied(doc: Doc, held: Held, w: int) -> bool:
    """Whether the holder's write number `w` (or a later one) is in the document: after a
    write whose answer was lost, this tells its own earlier write from a rival's."""
    try:
        st = stage_of(doc, held.stage)
    except MalformedDocument:
        return False
    entry = st.held.get(held.holder) if st is not None else None
    return entry is not None and int(entry["n"]) == held.n and int(entry["w"]) >= w


def all_committed(doc: Doc, held: Held) -> bool:
    """Whether every task of the claim is committed (a finished claim may have been folded
    into `done` by another worker before its holder read the document again)."""
    try:
        st = stage_of(doc, held.stage)
    except MalformedDocument:
        return False
    if st is None:
        return phase_of(doc) in TERMINAL or STAGES.index(held.stage) < STAGES.index(
            PHASE_STAGE.get(phase_of(doc) or "", held.stage)
        )
    return IndexSet.range(held.a, held.b) - st.committed() == IndexSet()


def still_mine(doc: Doc, held: Held) -> bool:
    """Whether the claim is still the holder's: the job is in its stage and the entry is there."""
    if phase_of(doc) != STAGE_PHASE[held.stage]:
        return False
    try:
        st = stage_of(doc, held.stage)
    except MalformedDocument:
        return False
    entry = st.held.get(held.holder) if st is not None else None
    return entry is not None and int(entry["n"]) == held.n


def fail_attempt(
    doc: Doc,
    held: Held,
    w: int,
    done_to: int,
    index: int,
    reason: str,
    max_attempts: int,
    now: float,
    counters: Mapping[str, Mapping[str, int]] | None = None,
    permanent: bool = False,
    temporary: bool = False,
) -> tuple[Patch, bool]:
    """The attempt at task `index` failed: commit the tasks before it, hand it back charged
    with a failure and the rest of the claim uncharged, or fail the job when its attempts
    are used up. Returns (patch, whether it fails the job).

    A `temporary` failure (storage or network briefly away) does not count toward
    `max_attempts` until the task has had MAX_TEMPORARY_FAILURES of them."""
    st = stage_of(doc, held.stage)
    assert st is not None
    task = Task(held.stage, index)
    attempt = held.attempt(index)
    reason = clip(reason)
    edit = _Edit(st)
    failed_one = IndexSet.range(index, index + 1)
    ops = _holder_ops(held, w)
    ops += [_replace(_mine(held) + "/d", done_to), _replace(_mine(held) + "/b", done_to)]
    ops += _counter_ops(doc, counters or {})
    edit.hand_back(IndexSet.range(index, held.b))
    failures, temporaries = st.failures_of(index)
    edit.error(task, attempt, reason)
    if temporary and not permanent and temporaries < MAX_TEMPORARY_FAILURES:
        edit.temps = edit.temps.plus(failed_one)
        return [*ops, *edit.ops()], False
    failures += 1
    edit.fails = edit.fails.plus(failed_one)
    if permanent or failures >= max_attempts:
        why = (
            f"{task.name} failed: {reason}"
            if permanent
            else f"{task.name} failed {failures} of {max_attempts} attempts; last: {reason}"
        )
        return fail_job(doc, task, why, now, [*ops[1:], *edit.ops()]), True
    return [*ops, *edit.ops()], False


def release(
    doc: Doc,
    held: Held,
    w: int,
    done_to: int,
    counters: Mapping[str, Mapping[str, int]] | None = None,
) -> Patch:
    """The worker was asked to stop: commit tasks up to `done_to`, hand back the rest
    without charging a failure."""
    st = stage_of(doc, held.stage)
    assert st is not None
    edit = _Edit(st)
    edit.hand_back(IndexSet.range(done_to, held.b))
    ops = _holder_ops(held, w)
    ops += [_replace(_mine(held) + "/d", done_to), _replace(_mine(held) + "/b", done_to)]
    return [*ops, *_counter_ops(doc, counters or {}), *edit.ops()]


def reclaim(doc: Doc, holder: str, s: Settings, charge: bool) -> Patch | None:
    """Hand back the unfinished claim of `holder`, a worker known to be gone (a local run
    saw its process exit), without waiting for its lease; `charge` counts it as a failure
    of its tasks, as an expired lease would. None if it holds nothing."""
    st = current_stage(doc)
    if st is None:
        return None
    entry = st.held.get(holder)
    if entry is None or finished(entry):
        return None
    edit = _Edit(st)
    if charge:
        failed = _take_over(edit, holder, entry, s)
        if failed is not None:
            task, why = failed
            return fail_job(doc, task, why, s.now, edit.ops())
    else:
        d = int(entry["d"])
        edit.fold(holder, {**entry, "b": d})
        edit.removed[holder] = entry
        edit.hand_back(IndexSet.range(d, int(entry["b"])))
    return [_first_phase_test(doc), *edit.ops()]


def _close_single(held: Held) -> Patch:
    """Planning or publishing is done: its one task joins `done` and its claim goes."""
    return [
        _replace(pointer("status", held.stage, "done"), "0"),
        _replace(pointer("status", held.stage, "held"), {}),
    ]


def commit_plan(
    held: Held, w: int, tasks: int, plan_url: str, workdir: str, partitions: int
) -> Patch:
    """Finish planning: create `tasks` waiting map tasks and start mapping."""
    return [
        *_holder_ops(held, w),
        *_close_single(held),
        _add("/status/planUrl", plan_url),
        _add("/status/workdir", workdir),
        _add("/status/partitions", partitions),
        _add("/status/map", new_stage(tasks)),
        _replace("/status/phase", MAPPING),
    ]


def commit_publish(
    held: Held, w: int, results: Sequence[str], results_url: str | None, now: float
) -> Patch:
    """The results are in place: the job succeeded. (`_SUCCESS` is written after this
    commit wins, so a job that fails instead never shows it: see `success_written`.)"""
    listed = len(results) <= MAX_LISTED_RESULTS
    ops = [
        *_holder_ops(held, w),
        *_close_single(held),
        _add("/status/resultCount", len(results)),
    ]
    if listed:
        ops.append(_add("/status/results", list(results)))
    if results_url is not None:
        ops.append(_add("/status/resultsUrl", results_url))
    return [
        *ops,
        _add("/status/completionTime", iso(now)),
        _add("/status/message", f"completed with {len(results)} result file(s)"),
        _replace("/status/phase", SUCCEEDED),
    ]


def success_written() -> Patch:
    """`_SUCCESS` is in the output (anyone may write it once the job has Succeeded)."""
    return [
        _test("/status/phase", SUCCEEDED),
        _add("/status/successWritten", True),
    ]


def needs_success_marker(doc: Doc) -> bool:
    return phase_of(doc) == SUCCEEDED and not status_of(doc).get("successWritten")


def result_count(doc: Doc) -> int:
    status = status_of(doc)
    count = status.get("resultCount")
    return int(count) if isinstance(count, int) else len(status.get("results") or [])


def attempts_of(doc: Doc, stage: str) -> list[int]:
    """The committed attempt of every task of a done stage, in task order."""
    st = stage_of(doc, stage)
    if st is None:
        return []
    return [st.tries.get(i, 1) for i in range(st.n)]


# -- leases, by the observer's own clock --------------------------------------------------


class LeaseClock:
    """When this worker first saw each claim as it is now, by its own monotonic clock.

    A claim has expired when it has not changed for its lease (`l` seconds) since this
    worker saw it change: a worker whose clock is ahead, behind, or stepped takes
    nothing from a live holder. A worker that has just started must watch a claim for a
    whole lease before it may take it over."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[tuple[int, int, int], float]] = {}

    def see(self, doc: Doc, now: float) -> None:
        """Record the claims of `doc`, read at (monotonic) time `now`."""
        stage = PHASE_STAGE.get(phase_of(doc) or "")
        if stage is None:
            return
        try:
            st = stage_of(doc, stage)
        except MalformedDocument:
            return
        if st is None:
            return
        keep: dict[tuple[str, str], tuple[tuple[int, int, int], float]] = {}
        for holder, entry in st.held.items():
            key = (stage, holder)
            version = (int(entry["n"]), int(entry["w"]), int(entry["b"]))
            old = self._seen.get(key)
            keep[key] = old if old is not None and old[0] == version else (version, now)
        self._seen = keep

    def expired(self, doc: Doc, now: float) -> frozenset[str]:
        """Holders of unfinished claims in `doc` unchanged for their lease since first seen."""
        st = current_stage(doc)
        if st is None:
            return frozenset()
        out = set()
        for holder, entry in st.running():
            seen = self._seen.get((st.name, holder))
            version = (int(entry["n"]), int(entry["w"]), int(entry["b"]))
            if seen is not None and seen[0] == version and now - seen[1] >= float(entry["l"]):
                out.add(holder)
        return frozenset(out)

    def next_expiry(self, doc: Doc, now: float) -> float | None:
        """Seconds until the next unfinished claim of `doc` would expire, if it stays as is."""
        st = current_stage(doc)
        if st is None:
            return None
        waits = [
            float(entry["l"]) - (now - seen[1])
            for holder, entry in st.running()
            if (seen := self._seen.get((st.name, holder))) is not None
        ]
        return max(0.0, min(waits)) if waits else None
