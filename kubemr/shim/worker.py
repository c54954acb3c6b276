"""The worker loop: read the job, decide, claim, run, commit; until the job ends.

This is `kubemr shim`, the entrypoint of every worker pod and of every
worker process of `kubemr run`. Decisions come from `kubemr.state` (pure);
this module applies them to the store and runs the claimed tasks through a
`TaskRunner` (the data path). A claim is a range of tasks run in order under
one lease; the `LeaseKeeper` renews it in the background and commits the
tasks finished so far with each renewal, so a worker that dies loses at most
the tasks since its last renewal. If renewing fails (the claim was taken
over, the job ended, the store stayed unreachable past the renew deadline),
the running command is killed and nothing more is committed. SIGTERM hands
back what is not finished, so another worker can start it at once.

A waiting worker does not poll: it reads the next version of the job from a
watch (`Store.changed`), and wakes early only when a lease it watches could
expire. Every write goes through `kubemr.store.writes.Writer`, which tells a
lost race from a lost answer from a refused patch.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from kubemr import reporter, state
from kubemr.errors import (
    InputError,
    JobNotFound,
    KubemrError,
    Refused,
    SpecError,
    TemporaryError,
)
from kubemr.shim import config as shim_config
from kubemr.shim import exchange, sidecar
from kubemr.shim.attempt import REAPER
from kubemr.shim.config import ShimConfig
from kubemr.shim.job import Job
from kubemr.shim.process import Stopped, Watch
from kubemr.shim.tasks import DataPath, Result, TaskRunner
from kubemr.store import Store, open_store
from kubemr.store.base import Doc
from kubemr.store.writes import Backoff, Writer

log = logging.getLogger("kubemr.shim")

MAX_STORE_ERRORS = 30
#: After a temporary failure (storage or network briefly away) a worker waits before its
#: next claim, doubling from this up to TEMPORARY_PAUSE_CAP, so a restarting S3 server does
#: not use up a task's temporary failures in the seconds it is away.
TEMPORARY_PAUSE = 0.5
TEMPORARY_PAUSE_CAP = 30.0
#: About how many seconds of work one claim should hold: enough tasks that claims are few
#: when tasks are short, and one task at a time when tasks are long (a long claim would
#: keep its tasks from others, and a failure or a lost worker costs more of them).
CLAIM_SECONDS = 30.0


def claim_cap(task_seconds: float | None, most: int) -> int:
    """The most tasks the next claim may take, from how long this worker's tasks took (an
    average; None before its first): one until it knows, then CLAIM_SECONDS' worth."""
    if task_seconds is None:
        return 1
    return max(1, min(most, int(CLAIM_SECONDS / max(task_seconds, 1e-3))))


#: The longest a waiting worker goes without reading the job (the watch wakes it sooner).
MAX_WAIT_SECONDS = 30.0


def renew_deadline(lease_seconds: float) -> float:
    """How long a holder keeps trying to renew before it gives its claim up: well inside the
    lease, so it stops its work before any other worker may take the claim over."""
    return lease_seconds * 2 / 3


class LeaseKeeper:
    """Renews one claim in the background, committing with each renewal the tasks finished
    since the last one (and their counters); sets `lost` when it can no longer prove the
    claim is its own. Holds no lock across a request."""

    def __init__(
        self,
        writer: Writer,
        store: Store,
        held: state.Held,
        status: Callable[[], str | None],
        parent_alive: Callable[[], bool],
        claimed_at: float,
    ) -> None:
        self.writer = writer
        self.store = store
        self.held = held
        self.status = status
        self.parent_alive = parent_alive
        self.lost = threading.Event()
        self.why: list[str] = []
        #: The holder's write number as last applied, and tasks committed up to then.
        self.w = 0
        self.committed = held.a
        self._finished_to = held.a
        self._counters: dict[int, reporter.Counters] = {}
        self._last_ok = claimed_at
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lease")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (waits for a renewal in flight, which has a deadline)."""
        self._stop.set()
        self._thread.join()

    def finished(self, index: int, counters: reporter.Counters) -> None:
        """Task `index` finished: commit it (and the tasks before it) with the next renewal."""
        with self._lock:
            self._finished_to = index + 1
            if counters:
                self._counters[index] = counters

    @property
    def finished_to(self) -> int:
        with self._lock:
            return self._finished_to

    def counters(self, upto: int) -> reporter.Counters:
        """The counters of the finished, uncommitted tasks before `upto`."""
        with self._lock:
            parts = [c for i, c in self._counters.items() if self.committed <= i < upto]
        return reporter.total(parts)

    def _applied(self, w: int, upto: int) -> None:
        with self._lock:
            self.w = w
            self.committed = max(self.committed, upto)
            for i in [i for i in self._counters if i < upto]:
                del self._counters[i]

    def lose(self, why: str) -> None:
        if not self.lost.is_set():
            self.why.append(why)
            self.lost.set()

    def _run(self) -> None:
        lease = float(self.held.lease)
        interval = max(lease / 3.0, 0.5)
        deadline = renew_deadline(lease)
        wake = self._last_ok + interval
        while not self._stop.wait(max(0.0, wake - time.monotonic())):
            if not self.parent_alive():
                self.lose("the process that started this worker is gone")
                return
            upto = self.finished_to
            w = self.w + 1
            sent = time.monotonic()
            try:
                new = self._renew(w, upto, max(0.0, deadline - (sent - self._last_ok)))
            except Refused as exc:
                self.lose(str(exc))
                return
            except JobNotFound:
                self.lose("the job is gone")
                return
            except KubemrError as exc:
                if time.monotonic() - self._last_ok > deadline:
                    self.lose(f"the lease could not be renewed for {deadline:.0f}s: {exc}")
                    return
                log.warning("renewing the lease on %s failed: %s", self._names(), exc)
                wake = time.monotonic() + 1.0
                continue
            if new is None:
                self.lose("the claim was taken over or the job ended")
                return
            self._applied(w, upto)
            self._last_ok = sent
            wake = sent + interval

    def _renew(self, w: int, upto: int, give_up_after: float) -> Doc | None:
        """One renewal (write number `w`) committing tasks up to `upto`; None if lost."""
        held = self.held
        counters = self.counters(upto)
        message = self.status()

        def build(doc: Doc) -> state.Patch | None:
            if not state.still_mine(doc, held):
                return None
            return state.renew(doc, held, w, upto, message, counters)

        new, _ = self.writer.send(
            self.store.latest(),
            build,
            applied=lambda doc: state.applied(doc, held, w),
            what=f"renewal of {self._names()}",
            give_up_after=give_up_after,
        )
        return new

    def _names(self) -> str:
        h = self.held
        return h.tasks[0][0].name if h.b - h.a == 1 else f"{h.stage}-{h.a}..{h.b - 1}"


@dataclass
class Outcome:
    """How one attempt ended: a result to commit, an error to record, or neither (stopped)."""

    result: Result | None = None
    error: str | None = None
    permanent: bool = False
    temporary: bool = False
    stopped: str | None = None
    elapsed: float = 0.0


@dataclass
class Tally:
    """What this worker did, for its last log line (and the benchmarks)."""

    claims: int = 0
    tasks: int = 0
    takeovers: int = 0


class Worker:
    """One worker: a loop over the job document until the job ends."""

    def __init__(
        self, config: ShimConfig, store: Store | None = None, runner: TaskRunner | None = None
    ) -> None:
        self.config = config
        self.store = store or open_store(config.store_url, config.request_timeout)
        self.runner: TaskRunner = runner or DataPath(config)
        self.clock = state.LeaseClock()
        self.writer = Writer(self.store, seen=self._seen)
        self.job: Job | None = None
        self.stopping = threading.Event()
        self.tally = Tally()
        self._rng = random.Random()
        self._claim_no = 1
        #: How long this worker's map and reduce tasks take, a moving average.
        self._task_seconds: float | None = None
        #: Temporary failures in a row, and until when the next claim waits because of them.
        self._temporary_streak = 0
        self._pause_until = 0.0

    def _seen(self, doc: Doc) -> None:
        self.clock.see(doc, time.monotonic())

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
        errors = 0
        backoff = Backoff(self._rng)
        doc: Doc | None = None
        while not self.stopping.is_set():
            if not self.parent_alive():
                log.info("the process that started this worker is gone; stopping")
                return 1
            try:
                if doc is None:
                    doc = self.store.get()
                if self.job is None:
                    self.job = Job.from_doc(doc, self.config)
                now = time.monotonic()
                self.clock.see(doc, now)
                action = state.decide(doc, self._settings(self.job), self.clock.expired(doc, now))
                if isinstance(action, state.Finished):
                    self._finish(self.job, doc, action.phase)
                    return 0
                if isinstance(action, state.Wait):
                    wait = self.clock.next_expiry(doc, now)
                    wait = MAX_WAIT_SECONDS if wait is None else min(wait + 0.05, MAX_WAIT_SECONDS)
                    doc = self.store.changed(doc, self._idle(wait))
                    errors = 0
                    continue
                if isinstance(action, state.Claim) and now < self._pause_until:
                    self.stopping.wait(self._pause_until - now)
                    doc = self.store.latest()
                    continue
                doc, won = self._take(doc, action)
                errors = 0
                if not won:
                    self.stopping.wait(backoff.next())
                    continue
                backoff.reset()
                if isinstance(action, state.Claim):
                    doc = self._run_claim(self.job, doc, action.held)
            except SpecError as exc:
                log.error("%s", exc)
                return 2
            except state.MalformedDocument as exc:
                log.error("%s", exc)
                self._fail_job(doc, f"{exc}.")
                return 2
            except JobNotFound as exc:
                log.info("%s", exc)
                return 0
            except Refused as exc:
                log.error("%s", exc)
                self._fail_job(doc, str(exc))
                return 1
            except KubemrError as exc:
                errors += 1
                if errors >= MAX_STORE_ERRORS:
                    log.error("giving up: %s", exc)
                    return 1
                log.warning("reading or updating the job failed (%s); retrying", exc)
                self.stopping.wait(min(0.5 * errors, 5.0))
                doc = None
        return 0

    def _idle(self, wait: float) -> float:
        """How long to wait for the job to change, at most: a local store is read often."""
        return min(wait, self.config.poll_seconds * 10) if self.store_is_local else wait

    @property
    def store_is_local(self) -> bool:
        return self.config.store_url.startswith("sqlite:")

    def _settings(self, job: Job) -> state.Settings:
        return state.Settings(
            holder=self.config.worker_id,
            now=time.time(),
            lease_seconds=self.config.lease_seconds,
            max_attempts=job.spec.max_attempts,
            claim_no=self._claim_no,
            batch=claim_cap(self._task_seconds, self.config.batch),
            workers=self.config.workers or job.spec.replicas,
        )

    def _take(self, doc: Doc, action: state.Claim | state.Advance) -> tuple[Doc, bool]:
        """Send a claim or an advance once; (the latest document, whether it won)."""
        patch = action.patch
        if isinstance(action, state.Claim):
            held = action.held

            def applied(d: Doc) -> bool:
                return state.still_mine(d, held) or state.applied(d, held, 0)

        else:
            phase = state.phase_of(doc)

            def applied(d: Doc) -> bool:
                return state.phase_of(d) != phase

        new, latest = self.writer.send(
            doc, lambda d: patch, applied=applied, what="claim", retry_races=False
        )
        if new is None:
            return latest, False
        if isinstance(action, state.Advance):
            log.info("%s", action.why)
            return new, True
        self._claim_no += 1
        self.tally.claims += 1
        for holder in action.took_over:
            self.tally.takeovers += 1
            log.warning("took over the claim of %s: its lease expired", holder)
        return new, True

    def _finish(self, job: Job, doc: Doc, phase: str) -> None:
        """The job is over; if it Succeeded and `_SUCCESS` is not written yet, write it."""
        log.info("the job is %s", phase)
        if state.needs_success_marker(doc):
            self._mark_success(job, doc)

    def _mark_success(self, job: Job, doc: Doc) -> None:
        self.runner.succeeded(job, doc)
        self.writer.send(
            doc,
            lambda d: state.success_written() if state.needs_success_marker(d) else None,
            what="success marker",
        )
        self.runner.clean_up(job, doc)

    def _fail_job(self, doc: Doc | None, why: str) -> None:
        """End the job with `why` (a patch was refused): better a clear failure than a hang."""
        if doc is None or state.phase_of(doc) in state.TERMINAL or state.phase_of(doc) is None:
            return
        task = state.Task(state.PHASE_STAGE.get(state.phase_of(doc) or "", "plan"))
        try:
            self.writer.send(doc, lambda d: state.fail_job(d, task, why, time.time()), what="fail")
        except KubemrError as exc:
            log.error("could not fail the job: %s", exc)

    # -- running a claim ---------------------------------------------------------------

    def _run_claim(self, job: Job, doc: Doc, held: state.Held) -> Doc:
        """Run the tasks of one claim in order under one lease; commit them as they finish
        (with the renewals, and the rest at the end), record a failure as it happens (which
        ends the claim), hand back what is left if asked to stop. Returns the latest document."""
        keeper = LeaseKeeper(
            self.writer, self.store, held, self.runner.status, self.parent_alive, time.monotonic()
        )
        keeper.start()
        self.runner.claimed(held)
        if held.b - held.a > 1:
            log.info(
                "claimed %s-%d..%d (%d tasks)", held.stage, held.a, held.b - 1, held.b - held.a
            )
        failed: tuple[int, Outcome] | None = None
        stopped: str | None = None
        for task, attempt in held.tasks:
            if keeper.lost.is_set() or self.stopping.is_set():
                break
            out = self._attempt(job, doc, task, attempt, keeper)
            if out.result is not None:
                if task.stage == "plan" or task.stage == "publish":
                    keeper.stop()
                    return self._commit_single(job, doc, held, keeper, out)
                keeper.finished(task.index, out.result.counters)
                self.tally.tasks += 1
                self._took(out.elapsed)
                log.info("%s attempt %d finished in %.2fs", task.name, attempt, out.elapsed)
            elif out.error is not None:
                failed = (task.index, out)
                break
            else:
                stopped = out.stopped or "stopped"
                break
        keeper.stop()
        names = keeper._names()
        if keeper.lost.is_set():
            why = "; ".join(keeper.why) or "the lease was lost"
            log.warning(
                "%s abandoned after %d committed: %s", names, keeper.committed - held.a, why
            )
            return self.store.latest()
        w = keeper.w + 1
        upto = keeper.finished_to
        counters = keeper.counters(upto)
        if failed is not None:
            return self._record_failure(job, held, keeper, failed[0], failed[1])
        if upto < held.b:
            if stopped:
                log.warning("%s: stopped at %s-%d: %s", names, held.stage, upto, stopped)
            return self._write(
                lambda d: state.release(d, held, w, upto, counters),
                held,
                w,
                "release",
            )
        doc = self._write(
            lambda d: state.renew(d, held, w, upto, None, counters),
            held,
            w,
            "commit",
            final=True,
        )
        if state.all_committed(doc, held):
            log.info("%s committed (%d task(s))", names, held.b - held.a)
        return doc

    def _took(self, seconds: float) -> None:
        self._temporary_streak = 0
        old = self._task_seconds
        self._task_seconds = seconds if old is None else 0.7 * old + 0.3 * seconds

    def _write(
        self,
        build: Callable[[Doc], state.Patch],
        held: state.Held,
        w: int,
        what: str,
        final: bool = False,
    ) -> Doc:
        """A holder's write after its keeper stopped: sent while the claim is still its own."""

        def guarded(doc: Doc) -> state.Patch | None:
            return build(doc) if state.still_mine(doc, held) else None

        def applied(doc: Doc) -> bool:
            return state.applied(doc, held, w) or (final and state.all_committed(doc, held))

        new, latest = self.writer.send(self.store.latest(), guarded, applied, what=what)
        if new is None:
            log.warning(
                "the %s of %s lost: the claim was taken over or the job ended", what, held.stage
            )
        return latest

    def _record_failure(
        self, job: Job, held: state.Held, keeper: LeaseKeeper, index: int, out: Outcome
    ) -> Doc:
        assert out.error is not None
        task = state.Task(held.stage, index)
        log.warning(
            "%s attempt %d failed after %.1fs: %s",
            task.name,
            held.attempt(index),
            out.elapsed,
            out.error,
        )
        w = keeper.w + 1
        counters = keeper.counters(index)
        error = out.error
        if out.temporary:
            self._temporary_streak += 1
            pause = min(TEMPORARY_PAUSE_CAP, TEMPORARY_PAUSE * 2 ** (self._temporary_streak - 1))
            pause *= self._rng.uniform(0.8, 1.2)
            self._pause_until = time.monotonic() + pause
            log.info("a temporary failure: waiting %.1fs before the next claim", pause)

        def build(doc: Doc) -> state.Patch:
            patch, _ = state.fail_attempt(
                doc,
                held,
                w,
                index,
                index,
                error,
                job.spec.max_attempts,
                time.time(),
                counters,
                out.permanent,
                out.temporary,
            )
            return patch

        return self._write(build, held, w, "failure")

    def _commit_single(
        self, job: Job, doc: Doc, held: state.Held, keeper: LeaseKeeper, out: Outcome
    ) -> Doc:
        """Commit planning or publishing, which ends its stage by moving the phase on."""
        assert out.result is not None
        if keeper.lost.is_set():
            log.warning("%s abandoned: %s", held.stage, "; ".join(keeper.why))
            return self.store.latest()
        w = keeper.w + 1
        result = out.result
        if held.stage == "plan":
            planned = result.planned
            assert planned is not None
            patch = state.commit_plan(
                held, w, planned.tasks, planned.plan_url, planned.workdir, planned.partitions
            )

            def applied(d: Doc) -> bool:
                return state.status_of(d).get("planUrl") == planned.plan_url

        else:
            patch = state.commit_publish(held, w, result.results, result.results_url, time.time())

            def applied(d: Doc) -> bool:
                return state.phase_of(d) == state.SUCCEEDED

        new, latest = self.writer.send(
            self.store.latest(),
            lambda d: patch if state.still_mine(d, held) else None,
            applied,
            what=f"commit of {held.stage}",
        )
        if new is None:
            log.warning(
                "the commit of %s lost: the claim was taken over or the job ended", held.stage
            )
            return latest
        log.info("%s attempt %d committed in %.2fs", held.stage, held.attempts[0], out.elapsed)
        if held.stage == "publish":
            self._mark_success(job, new)
        return new

    def _attempt(
        self, job: Job, doc: Doc, task: state.Task, attempt_no: int, keeper: LeaseKeeper
    ) -> Outcome:
        """Run one attempt of `task` to its end, whatever the end."""
        log.info("%s attempt %d started", task.name, attempt_no)
        cancel_why: list[str] = []
        cancel = threading.Event()
        started = time.monotonic()
        watcher = threading.Thread(
            target=self._watch_cancel, args=(keeper, cancel, cancel_why), daemon=True
        )
        watcher.start()
        timeout = float(job.spec.task_timeout) if task.stage in ("map", "reduce") else 24 * 3600.0
        out = Outcome()
        what = ""
        try:
            what = self.runner.describe(job, doc, task)
            out.result = self.runner.run(
                job, doc, task, attempt_no, Watch(timeout, cancel, cancel_why)
            )
        except Stopped as exc:
            if exc.timeout:
                out.error = _prefixed(what, exc.reason)
            else:
                cancel_why.append(exc.reason)
        except (InputError, SpecError) as exc:
            out.error, out.permanent = _prefixed(what, str(exc)), True
        except TemporaryError as exc:
            out.error, out.temporary = _prefixed(what, str(exc)), True
        except KubemrError as exc:  # a command failed (TaskFailed), storage, anything else
            out.error = _prefixed(what, str(exc))
        except OSError as exc:
            out.error = _prefixed(what, str(exc.strerror or exc))
        except Exception as exc:  # a bug here must fail the attempt, saying so, not the worker
            log.exception("%s attempt %d: internal error", task.name, attempt_no)
            out.error = f"{what}internal error: {type(exc).__name__}: {exc}"
        finally:
            cancel.set()
            watcher.join()
        out.elapsed = time.monotonic() - started
        if out.result is None and out.error is None:
            out.stopped = "; ".join(dict.fromkeys(keeper.why or cancel_why)) or "stopped"
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
            if not self.parent_alive():  # `kubemr run` was killed: stop now, not at renewal
                why.append("the process that started this worker is gone")
                cancel.set()
                return


def _prefixed(what: str, text: str) -> str:
    """`what` (the task's input or partition, "input s3://b/k bytes 0-99: ") before `text`,
    unless `text` already names it (an error reading that input says which it is)."""
    subject = what.removeprefix("input ").split(" bytes ")[0].split(" and ")[0].rstrip(": ")
    return text if subject and subject in text else what + text


def cmd_shim(args: argparse.Namespace) -> int:
    """`kubemr shim`: the worker loop configured from the environment, or, with
    --install-executor DIR, put the sidecar executor in place and exit."""
    if args.install_executor:
        exchange.install(args.install_executor)
        print(f"installed the executor in {args.install_executor}")
        return 0
    return main(shim_config.from_env())


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
        log.info(
            "done: %d claim(s), %d task(s), %d takeover(s), %d lost race(s)",
            worker.tally.claims,
            worker.tally.tasks,
            worker.tally.takeovers,
            worker.writer.conflicts,
        )
        return code
    finally:
        REAPER.remove(os.path.join(config.scratch, "archives"))  # unpacked for this worker
        REAPER.drain()  # no scratch directory left behind
        worker.store.close()
        if config.executor is not None:
            sidecar.finish(config, code, worker.stopping)
