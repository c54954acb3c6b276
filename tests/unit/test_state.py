"""The job document's transitions, checked by applying their JSON patches.

Covers `kubemr.state`: what `decide` does in every phase (claim ranges of
tasks, take over an expired lease, fold finished claims, advance, fail the
job when attempts run out, wait, finish), the holder's writes (renew and
commit, fail, release, commit planning and publishing), leases judged by
the observer's own clock, and whole jobs simulated with many workers that
crash, freeze and lose answers. Every patch is applied with
`jsonpatch.apply_patch` to a plain document, exactly as a store does, so the
`test` operations are what is checked.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import pytest

from kubemr import state
from kubemr.intervals import IndexSet
from kubemr.state import (
    MAX_ERRORS,
    MAX_TEMPORARY_FAILURES,
    Advance,
    Claim,
    Finished,
    Held,
    LeaseClock,
    Settings,
    Task,
    Wait,
    decide,
)

NOW = 1_700_000_000.0
LEASE = 30
Doc = dict[str, Any]


def settings(
    holder: str = "w1", claim_no: int = 1, batch: int = 1, workers: int = 1, max_attempts: int = 3
) -> Settings:
    return Settings(
        holder=holder,
        now=NOW,
        lease_seconds=LEASE,
        max_attempts=max_attempts,
        claim_no=claim_no,
        batch=batch,
        workers=workers,
    )


def job(**status: Any) -> Doc:
    return {
        "apiVersion": "kubemr.io/v1alpha1",
        "kind": "MapReduceJob",
        "metadata": {"name": "wc"},
        "spec": {"inputs": ["/in/"], "map": "cat"},
        "status": status,
    }


def apply(doc: Doc, patch: list[dict[str, Any]]) -> Doc:
    """Apply a patch the way a store does: all of it on a copy, or raise."""
    before = copy.deepcopy(doc)
    new: Doc = jsonpatch.apply_patch(doc, patch)
    assert doc == before, "applying a patch changed the input document"
    return new


def refused(doc: Doc, patch: list[dict[str, Any]]) -> None:
    with pytest.raises((jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict)):
        jsonpatch.apply_patch(doc, patch)


def mapping(tasks: int, partitions: int = 2) -> Doc:
    """A job that has just been planned: `tasks` map tasks waiting."""
    doc = start()
    held = planner(doc)
    return apply(
        doc, state.commit_plan(held, 1, tasks, "file:///w/plan-a1.json", "file:///w/", partitions)
    )


def start() -> Doc:
    doc = job(phase="Pending")
    action = decide(doc, settings("planner"))
    assert isinstance(action, Claim)
    return apply(doc, action.patch)


def planner(doc: Doc) -> Held:
    entry = doc["status"]["plan"]["held"]["planner"]
    return Held("plan", "planner", int(entry["n"]), 0, 1, LEASE, (1,))


def claim(doc: Doc, s: Settings, expired: frozenset[str] = frozenset()) -> tuple[Claim, Doc]:
    action = decide(doc, s, expired)
    assert isinstance(action, Claim), action
    return action, apply(doc, action.patch)


def stage(doc: Doc, name: str = "map") -> state.Stage:
    st = state.stage_of(doc, name)
    assert st is not None
    return st


def finish(
    doc: Doc, held: Held, w: int = 1, counters: dict[str, dict[str, int]] | None = None
) -> Doc:
    return apply(doc, state.renew(doc, held, w, held.b, None, counters))


def run_stage(doc: Doc, holder: str = "w1") -> Doc:
    """Claim and finish tasks until there is nothing left to claim."""
    n = 1
    while isinstance(action := decide(doc, settings(holder, claim_no=n, batch=64)), Claim):
        doc = finish(apply(doc, action.patch), action.held)
        n += 1
    return doc


# -- names and reading -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "task"),
    [
        ("plan", Task("plan")),
        ("publish", Task("publish")),
        ("map-0", Task("map", 0)),
        ("reduce-12", Task("reduce", 12)),
    ],
)
def test_task_names(name: str, task: Task) -> None:
    assert task.name == name and Task.parse(name) == task


@pytest.mark.parametrize("name", ["map", "map-", "map-x", "reduce-1-2", "sort-3", ""])
def test_task_parse_refuses_other_names(name: str) -> None:
    with pytest.raises(ValueError):
        Task.parse(name)


def test_iso_is_utc_rfc3339() -> None:
    assert state.iso(0) == "1970-01-01T00:00:00Z"


def test_a_malformed_stage_is_refused_with_a_sentence() -> None:
    doc = job(phase="Mapping", map={"n": 3, "todo": "x", "done": "", "held": {}})
    with pytest.raises(state.MalformedDocument, match="not in the shape this kubemr writes"):
        decide(doc, settings())
    old = job(phase="Mapping", map=[{"s": "p", "a": 0}])  # the document of an older kubemr
    with pytest.raises(state.MalformedDocument):
        decide(old, settings())


# -- deciding ----------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [job(), {"metadata": {}}, job(phase=7)])
def test_no_phase_means_wait(doc: Doc) -> None:
    assert isinstance(decide(doc, settings()), Wait)


def test_unknown_phase_means_wait() -> None:
    action = decide(job(phase="Exploding"), settings())
    assert isinstance(action, Wait) and "Exploding" in action.why


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_terminal_phase_means_finished(phase: str) -> None:
    assert decide(job(phase=phase), settings()) == Finished(phase)


@pytest.mark.parametrize("phase", ["Pending", "Deploying"])
def test_the_first_worker_takes_planning(phase: str) -> None:
    doc = job(phase=phase)
    c, new = claim(doc, settings("w1"))
    assert new["status"]["phase"] == "Planning" and new["status"]["counters"] == {}
    assert c.held.tasks == [(Task("plan"), 1)]
    assert stage(new, "plan").holder_of(0) == "w1"
    other = decide(doc, settings("w2"))
    assert isinstance(other, Claim)
    refused(new, other.patch)


def test_planning_waits_for_its_planner_until_its_lease_expires() -> None:
    doc = start()
    assert isinstance(decide(doc, settings("w2")), Wait)
    c, new = claim(doc, settings("w2"), frozenset({"planner"}))
    assert c.took_over == ("planner",) and c.held.tasks == [(Task("plan"), 2)]
    plan = stage(new, "plan")
    assert plan.fails.get(0) == 1 and plan.tries.get(0) == 2 and plan.errors[-1]["t"] == "plan"
    refused(new, state.commit_plan(planner(doc), 1, 3, "u", "w", 1))


def test_commit_plan_starts_mapping_with_a_patch_of_constant_size() -> None:
    doc = start()
    patch = state.commit_plan(planner(doc), 1, 100_000, "file:///w/plan-a1.json", "file:///w/", 4)
    assert len(json.dumps(patch)) < 1000
    new = apply(doc, patch)
    st = stage(new, "map")
    assert new["status"]["phase"] == "Mapping" and st.n == 100_000
    assert str(st.todo) == "0-99999" and st.attempt_of(5) == 0
    assert state.counts(new, "plan") == (1, 1) and state.counts(new, "map") == (0, 100_000)


@pytest.mark.parametrize(
    ("tasks", "workers", "batch", "size"),
    [(1000, 4, 64, 64), (100, 4, 64, 12), (3, 4, 64, 1), (10, 1, 1, 1), (10, 1, 64, 5)],
)
def test_a_claim_is_the_first_tasks_leaving_twice_as_many_for_every_worker(
    tasks: int, workers: int, batch: int, size: int
) -> None:
    doc = mapping(tasks)
    c, new = claim(doc, settings(batch=batch, workers=workers))
    assert (c.held.a, c.held.b) == (0, size)
    assert c.held.tasks == [(Task("map", i), 1) for i in range(size)]
    st = stage(new, "map")
    assert str(st.todo) == str(IndexSet.range(size, tasks)) and st.holder_of(0) == "w1"


def test_two_workers_deciding_on_one_document_exactly_one_wins() -> None:
    doc = mapping(10)
    first = decide(doc, settings("w1", batch=4, workers=1))
    second = decide(doc, settings("w2", batch=4, workers=1))
    assert isinstance(first, Claim) and isinstance(second, Claim)
    new = apply(doc, first.patch)
    refused(new, second.patch)
    c, _ = claim(new, settings("w2", batch=4, workers=1))
    assert c.held.a == first.held.b


def test_a_running_claim_makes_others_wait_when_nothing_is_left() -> None:
    doc = mapping(1)
    _, doc = claim(doc, settings("w1"))
    action = decide(doc, settings("w2"))
    assert isinstance(action, Wait) and "running map" in action.why


def test_finished_claims_are_folded_by_the_next_claim_of_anyone() -> None:
    doc = mapping(10)
    a, doc = claim(doc, settings("w1", batch=4))
    doc = finish(doc, a.held)
    assert state.counts(doc, "map") == (a.held.b, 10)
    assert "w1" in stage(doc).held  # committed, not folded yet: no shared field was written
    _, doc = claim(doc, settings("w2", batch=4))
    st = stage(doc)
    assert "w1" not in st.held and str(st.done) == f"0-{a.held.b - 1}"


def test_a_worker_replaces_its_own_finished_claim() -> None:
    doc = mapping(10)
    a, doc = claim(doc, settings("w1", batch=2))
    doc = finish(doc, a.held)
    b, doc = claim(doc, settings("w1", claim_no=2, batch=2))
    st = stage(doc)
    assert st.held["w1"]["n"] == 2 and (b.held.a, b.held.b) == (2, 4) and str(st.done) == "0-1"


def test_every_map_task_committed_advances_to_reducing() -> None:
    doc = run_stage(mapping(3, partitions=2))
    action = decide(doc, settings("w2"))
    assert isinstance(action, Advance)
    new = apply(doc, action.patch)
    assert new["status"]["phase"] == "Reducing"
    assert str(stage(new, "map").done) == "0-2" and stage(new, "map").held == {}
    assert str(stage(new, "reduce").todo) == "0-1"


def test_a_map_only_job_advances_to_publishing() -> None:
    doc = run_stage(mapping(2, partitions=0))
    action = decide(doc, settings())
    assert isinstance(action, Advance)
    new = apply(doc, action.patch)
    assert new["status"]["phase"] == "Publishing" and str(stage(new, "publish").todo) == "0"


def test_no_map_tasks_at_all_advances() -> None:
    doc = mapping(0)
    action = decide(doc, settings())
    assert isinstance(action, Advance)
    assert apply(doc, action.patch)["status"]["phase"] == "Reducing"


# -- the holder's writes -----------------------------------------------------------------


def test_renew_raises_the_write_number_commits_and_adds_counters() -> None:
    doc = mapping(10)
    c, doc = claim(doc, settings(batch=4))
    doc = apply(doc, state.renew(doc, c.held, 1, 2, "half way", {"g": {"n": 2}}))
    entry = stage(doc).held["w1"]
    assert (entry["w"], entry["d"], entry["m"]) == (1, 2, "half way")
    assert doc["status"]["counters"] == {"g": {"n": 2}}
    doc = apply(doc, state.renew(doc, c.held, 2, 4, None, {"g": {"n": 3}, "h": {"x": 1}}))
    assert doc["status"]["counters"] == {"g": {"n": 5}, "h": {"x": 1}}
    assert state.counts(doc, "map") == (4, 10)


def test_a_renewal_whose_answer_was_lost_does_not_break_the_next_one() -> None:
    """A renewal applied by the store but whose answer never arrived: the holder still
    believes it wrote w=0. Its next renewal must pass, and it must recognise its own write."""
    doc = mapping(10)
    c, doc = claim(doc, settings(batch=4))
    lost = apply(doc, state.renew(doc, c.held, 1, 1))  # applied; the answer was lost
    assert state.applied(lost, c.held, 1) and not state.applied(doc, c.held, 1)
    again = apply(lost, state.renew(doc, c.held, 2, 2))  # built from the older document
    assert stage(again).held["w1"]["w"] == 2 and state.still_mine(again, c.held)


def test_a_holder_whose_claim_was_taken_over_can_write_nothing() -> None:
    doc = mapping(10)
    mine, doc = claim(doc, settings("w1", batch=4))
    _, doc = claim(doc, settings("w2", batch=4), frozenset({"w1"}))
    assert not state.still_mine(doc, mine.held)
    refused(doc, state.renew(doc, mine.held, 1, 4))
    refused(doc, state.release(doc, mine.held, 1, 2))
    patch, _ = state.fail_attempt(doc, mine.held, 1, 0, 0, "boom", 3, NOW)
    refused(doc, patch)


def test_writes_are_refused_once_the_job_ended() -> None:
    doc = mapping(10)
    c, doc = claim(doc, settings(batch=4))
    ended = copy.deepcopy(doc)
    ended["status"]["phase"] = "Failed"
    refused(ended, state.renew(ended, c.held, 1, 4))


def test_a_failed_attempt_commits_what_came_before_and_hands_back_the_rest() -> None:
    doc = mapping(10)
    c, doc = claim(doc, settings(batch=6))
    patch, ends = state.fail_attempt(
        doc, c.held, 1, 2, 2, "map command exited 1", 3, NOW, {"g": {"n": 1}}
    )
    assert not ends
    doc = apply(doc, patch)
    st = stage(doc)
    assert str(st.committed()) == "0-1" and str(st.todo) == "2-9"
    assert st.fails.get(2) == 1 and st.fails.get(3) == 0
    assert st.errors[-1] == {"t": "map-2", "a": 1, "e": "map command exited 1"}
    assert doc["status"]["counters"] == {"g": {"n": 1}}
    again, doc = claim(doc, settings("w2", batch=6))
    assert again.held.a == 2 and again.held.tasks[0] == (Task("map", 2), 2)
    assert again.held.tasks[1] == (Task("map", 3), 2)  # handed back, so a new attempt too
    assert again.held.tasks[2:] == [(Task("map", 4), 2), (Task("map", 5), 1)]


def test_the_last_failed_attempt_fails_the_job_with_its_reason() -> None:
    doc = mapping(1)
    for attempt in (1, 2):
        c, doc = claim(doc, settings(f"w{attempt}"))
        assert c.held.tasks == [(Task("map", 0), attempt)]
        patch, ends = state.fail_attempt(doc, c.held, 1, 0, 0, f"exit {attempt}", 3, NOW)
        assert not ends
        doc = apply(doc, patch)
    c, doc = claim(doc, settings("w3"))
    patch, ends = state.fail_attempt(doc, c.held, 1, 0, 0, "exit 3", 3, NOW)
    assert ends
    doc = apply(doc, patch)
    assert doc["status"]["phase"] == "Failed" and doc["status"]["failedTask"] == "map-0"
    assert doc["status"]["message"] == "map-0 failed 3 of 3 attempts; last: exit 3"


def test_a_permanent_failure_fails_the_job_at_once() -> None:
    doc = mapping(3)
    c, doc = claim(doc, settings())
    patch, ends = state.fail_attempt(doc, c.held, 1, 0, 0, "no such input", 3, NOW, permanent=True)
    doc = apply(doc, patch)
    assert ends and doc["status"]["message"] == "map-0 failed: no such input"


def test_temporary_failures_do_not_use_up_attempts() -> None:
    doc = mapping(1)
    for i in range(MAX_TEMPORARY_FAILURES):
        c, doc = claim(doc, settings(f"w{i}"))
        patch, ends = state.fail_attempt(doc, c.held, 1, 0, 0, "S3 503", 1, NOW, temporary=True)
        assert not ends
        doc = apply(doc, patch)
    assert stage(doc).temps.get(0) == MAX_TEMPORARY_FAILURES and stage(doc).fails.get(0) == 0
    c, doc = claim(doc, settings("last"))
    patch, ends = state.fail_attempt(doc, c.held, 1, 0, 0, "S3 503", 1, NOW, temporary=True)
    assert ends


def test_failure_reasons_are_clipped_and_few_are_kept() -> None:
    doc = mapping(20)
    for i in range(MAX_ERRORS + 3):
        c, doc = claim(doc, settings(f"w{i}"))
        patch, _ = state.fail_attempt(
            doc, c.held, 1, c.held.a, c.held.a, "x" * 5000 + "END", 9, NOW
        )
        doc = apply(doc, patch)
    errors = stage(doc).errors
    assert len(errors) == MAX_ERRORS
    assert all(len(e["e"]) <= state.MAX_ERROR_CHARS and e["e"].endswith("END") for e in errors)


def test_release_commits_what_is_done_and_hands_back_the_rest_uncharged() -> None:
    doc = mapping(10)
    c, doc = claim(doc, settings(batch=5))
    doc = apply(doc, state.release(doc, c.held, 1, 3))
    st = stage(doc)
    assert str(st.committed()) == "0-2" and str(st.todo) == "3-9" and not st.fails
    assert st.attempt_of(3) == 1 and st.attempt_of(7) == 0


# -- takeovers ---------------------------------------------------------------------------


def test_an_expired_claim_goes_back_with_a_failure_charged_to_each_task() -> None:
    doc = mapping(10)
    c, doc = claim(doc, settings("w1", batch=5))
    doc = apply(doc, state.renew(doc, c.held, 1, 2))
    took, doc = claim(doc, settings("w2", batch=5), frozenset({"w1"}))
    st = stage(doc)
    assert took.took_over == ("w1",) and "w1" not in st.held
    assert str(st.done) == "0-1"
    assert all(st.fails.get(i) == 1 for i in range(2, 5)) and st.fails.get(5) == 0
    assert took.held.tasks[0] == (Task("map", 2), 2)
    assert "stopped renewing" in st.errors[-1]["e"]


def test_an_expired_claim_on_its_last_attempt_fails_the_job() -> None:
    doc = mapping(2)
    for i in range(3):
        _, doc = claim(doc, settings(f"w{i}"), frozenset({f"w{i - 1}"}))
    action = decide(doc, settings("w9"), frozenset({"w2"}))
    assert isinstance(action, Advance)
    doc = apply(doc, action.patch)
    assert doc["status"]["phase"] == "Failed"
    assert (
        "map-0 failed 3 of 3 attempts; last: its worker w2 stopped renewing"
        in doc["status"]["message"]
    )


def test_a_worker_takes_back_its_own_abandoned_claim_at_once() -> None:
    doc = mapping(4)
    _, doc = claim(doc, settings("w1", batch=4))
    again, doc = claim(doc, settings("w1", claim_no=2, batch=4))
    assert again.took_over == ("w1",) and again.held.tasks[0] == (Task("map", 0), 2)


def test_reclaim_hands_back_a_dead_workers_claim_without_waiting() -> None:
    doc = mapping(4)
    _, doc = claim(doc, settings("w1", batch=4))
    patch = state.reclaim(doc, "w1", settings("runner"), charge=False)
    assert patch is not None
    doc = apply(doc, patch)
    assert str(stage(doc).todo) == "0-3" and not stage(doc).fails
    _, doc = claim(doc, settings("w2", batch=4))
    patch = state.reclaim(doc, "w2", settings("runner"), charge=True)
    assert patch is not None
    assert stage(apply(doc, patch)).fails.get(0) == 1
    assert state.reclaim(doc, "nobody", settings("runner"), charge=True) is None


# -- publishing ---------------------------------------------------------------------------


def publishing() -> tuple[Doc, Held]:
    doc = run_stage(mapping(1, partitions=0))
    action = decide(doc, settings())
    assert isinstance(action, Advance)
    doc = apply(doc, action.patch)
    p, doc = claim(doc, settings("p"))
    return doc, p.held


def test_commit_publish_succeeds_the_job_and_the_marker_follows() -> None:
    doc, held = publishing()
    assert not state.needs_success_marker(doc)
    refused(doc, state.success_written())
    doc = apply(doc, state.commit_publish(held, 1, ["s3://o/part-m-00000"], None, NOW))
    status = doc["status"]
    assert status["phase"] == "Succeeded" and status["results"] == ["s3://o/part-m-00000"]
    assert state.result_count(doc) == 1 and state.needs_success_marker(doc)
    doc = apply(doc, state.success_written())
    assert not state.needs_success_marker(doc)


def test_many_results_are_counted_and_listed_in_a_manifest_not_in_the_object() -> None:
    doc, held = publishing()
    results = [f"s3://o/part-r-{i:05d}" for i in range(100_000)]
    patch = state.commit_publish(held, 1, results, "s3://o/_RESULTS", NOW)
    assert len(json.dumps(patch)) < 2000
    doc = apply(doc, patch)
    assert state.result_count(doc) == 100_000 and doc["status"]["resultsUrl"] == "s3://o/_RESULTS"


def test_a_publisher_that_lost_its_claim_cannot_succeed_the_job() -> None:
    doc, held = publishing()
    _, doc = claim(doc, settings("q"), frozenset({"p"}))
    refused(doc, state.commit_publish(held, 1, [], None, NOW))


def test_a_failed_job_never_gets_the_success_marker() -> None:
    doc, held = publishing()
    failed = apply(doc, state.fail_job(doc, None, "the worker Job failed", NOW))
    refused(failed, state.commit_publish(held, 1, [], None, NOW))
    refused(failed, state.success_written())


# -- leases by the observer's clock ------------------------------------------------------


def test_a_lease_expires_only_after_a_whole_lease_unchanged_on_the_observers_clock() -> None:
    doc = mapping(10)
    c, doc = claim(doc, settings("w1", batch=4))
    clock = LeaseClock()
    clock.see(doc, 100.0)
    assert clock.expired(doc, 100.0 + LEASE - 0.1) == frozenset()
    assert clock.next_expiry(doc, 110.0) == pytest.approx(LEASE - 10)
    renewed = apply(doc, state.renew(doc, c.held, 1, 1))
    clock.see(renewed, 125.0)
    assert clock.expired(renewed, 100.0 + LEASE + 1) == frozenset()  # it changed at 125
    assert clock.expired(renewed, 125.0 + LEASE) == frozenset({"w1"})


def test_a_new_observer_waits_a_whole_lease_however_old_the_claim_is() -> None:
    doc = mapping(10)
    _, doc = claim(doc, settings("w1", batch=4))
    clock = LeaseClock()
    assert clock.expired(doc, 10_000.0) == frozenset()
    clock.see(doc, 10_000.0)
    assert clock.expired(doc, 10_000.0 + LEASE) == frozenset({"w1"})


def test_wall_clocks_play_no_part_in_expiry() -> None:
    """A worker whose clock runs hours ahead takes over nothing: `decide` takes expiry only
    from the observer's LeaseClock, and nothing in a claim is a time."""
    doc = mapping(10)
    _, doc = claim(doc, settings("w1", batch=4))
    skewed = Settings("w2", NOW + 7200, LEASE, 3, batch=4)
    action = decide(doc, skewed, LeaseClock().expired(doc, 0.0))
    assert isinstance(action, Claim) and action.took_over == ()
    assert all(not isinstance(v, float) for v in stage(doc).held["w1"].values())


def test_finished_claims_never_expire() -> None:
    doc = mapping(10)
    c, doc = claim(doc, settings("w1", batch=4))
    doc = finish(doc, c.held)
    clock = LeaseClock()
    clock.see(doc, 0.0)
    assert clock.expired(doc, 1e9) == frozenset()


# -- whole jobs, simulated ---------------------------------------------------------------


@dataclass
class SimWorker:
    name: str
    clock: LeaseClock = field(default_factory=LeaseClock)
    claim_no: int = 1
    held: Held | None = None
    w: int = 0
    next_task: int = 0
    frozen_until: float = 0.0
    last_write: float = 0.0
    ran: list[tuple[int, int]] = field(default_factory=list)  # (task, attempt) it finished


class Simulation:
    """Workers stepping through the protocol against one document, with crashes, freezes
    and lost answers; a fault may strike at any step. Time is simulated."""

    def __init__(
        self,
        tasks: int,
        workers: int,
        seed: int,
        batch: int = 64,
        faults: float = 0.0,
        per_step: int = 1,
    ) -> None:
        self.per_step = per_step
        self.takeovers = 0
        self.rng = random.Random(seed)
        self.doc = mapping(tasks, partitions=0)
        self.workers = [SimWorker(f"w{i}") for i in range(workers)]
        self.batch = batch
        self.faults = faults
        self.now = 0.0
        self.writes = 0
        self.largest = 0
        self.committed: dict[int, int] = {}

    def write(self, patch: list[dict[str, Any]]) -> bool:
        try:
            new = jsonpatch.apply_patch(self.doc, patch)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict):
            return False
        if self.rng.random() < self.faults:
            self.doc = new  # applied, but the answer is lost: the writer does not know
            self.writes += 1
            self.check()
            return False
        self.doc = new
        self.writes += 1
        self.check()
        return True

    def check(self) -> None:
        """The invariants: todo, done and the claims cover every task exactly once."""
        size = len(json.dumps(self.doc["status"], separators=(",", ":")))
        self.largest = max(self.largest, size)
        st = state.stage_of(self.doc, "map")
        if st is None or self.doc["status"]["phase"] != "Mapping":
            return
        parts = [st.todo, st.done] + [
            IndexSet.range(int(e["a"]), int(e["b"])) for e in st.held.values()
        ]
        total = sum(len(p) for p in parts)
        union = IndexSet()
        for p in parts:
            union = union | p
        assert total == st.n and union == IndexSet.range(0, st.n), (str(st.todo), st.held)

    def step(self, w: SimWorker) -> None:
        clock = w.clock
        clock.see(self.doc, self.now)
        if self.now < w.frozen_until:
            return
        if w.held is None:
            s = Settings(w.name, NOW, LEASE, 10, w.claim_no, self.batch, len(self.workers))
            action = decide(self.doc, s, clock.expired(self.doc, self.now))
            if isinstance(action, (Finished, Wait)):
                return
            if isinstance(action, Advance):
                self.write(action.patch)
                return
            won = self.write(action.patch)
            self.takeovers += len(action.took_over) if won else 0
            if not won and not state.still_mine(self.doc, action.held):
                return
            w.claim_no += 1
            w.held, w.w, w.next_task, w.last_write = action.held, 0, action.held.a, self.now
            return
        held = w.held
        if not state.still_mine(self.doc, held):
            w.held = None  # lost it: a zombie's work is never committed
            return
        roll = self.rng.random()
        if roll < self.faults / 2:
            # Crashed: it comes back as a new worker, its claim left to expire.
            w.held, w.name, w.clock, w.claim_no = None, w.name + "r", LeaseClock(), 1
            return
        if roll < self.faults:
            w.frozen_until = self.now + LEASE * 2  # frozen past its lease
            return
        for _ in range(self.per_step):
            if w.next_task < held.b:
                w.ran.append((w.next_task, held.attempt(w.next_task)))
                w.next_task += 1
        if w.next_task == held.b or self.now - w.last_write >= LEASE / 3:
            w.w += 1
            if self.write(state.renew(self.doc, held, w.w, w.next_task)) or state.applied(
                self.doc, held, w.w
            ):
                w.last_write = self.now
                if w.next_task == held.b:
                    w.held = None

    def run(self, limit: int = 2_000_000) -> None:
        steps = 0
        while self.doc["status"]["phase"] not in ("Publishing", "Failed"):
            for w in self.rng.sample(self.workers, len(self.workers)):
                self.step(w)
            self.now += 0.5
            steps += 1
            assert steps < limit, "the simulated job does not finish"


@pytest.mark.parametrize("seed", range(8))
def test_simulated_jobs_with_faults_commit_every_task_exactly_once(seed: int) -> None:
    sim = Simulation(tasks=1000, workers=6, seed=seed, batch=16, faults=0.03)
    sim.run()
    assert sim.takeovers > 0  # the faults did strike
    assert sim.doc["status"]["phase"] == "Publishing"
    st = stage(sim.doc)
    assert str(st.done) == "0-999"
    committed = state.attempts_of(sim.doc, "map")
    runs: dict[tuple[int, int], int] = {}
    for w in sim.workers:
        for run in w.ran:
            runs[run] = runs.get(run, 0) + 1
    # Every attempt number was handed to one worker only, and each task's committed
    # attempt is one that really ran.
    assert all(count == 1 for count in runs.values())
    assert all((i, a) in runs for i, a in enumerate(committed))


def test_a_100000_task_job_keeps_its_object_small_and_its_writes_few() -> None:
    sim = Simulation(tasks=100_000, workers=32, seed=1, batch=64, per_step=16)
    sim.run()
    assert sim.doc["status"]["phase"] == "Publishing"
    assert sim.largest < 20 * 1024, sim.largest
    assert sim.writes / 100_000 < 0.1, sim.writes
