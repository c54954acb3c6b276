"""The job document's transitions, checked by applying their JSON patches.

Covers `kubemr.state`: what `decide` does in every phase (claim, take over an
expired lease, advance to the next stage, fail the job when attempts run out,
wait, finish), and the patches for renew, commit, fail and release. Every
patch is applied with `jsonpatch.apply_patch` to a plain document, exactly as
a store would, so the `test` operations are what is checked: a worker whose
lease was taken over can neither commit nor renew, and of two workers racing
on one document exactly one wins.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from kubemr import state
from kubemr.state import (
    DONE,
    MAX_ERROR_CHARS,
    MAX_STATUS_CHARS,
    PENDING,
    PICK_WINDOW,
    RUNNING,
    Advance,
    Claim,
    Finished,
    Settings,
    Task,
    Wait,
    advance,
    commit_plan,
    commit_publish,
    commit_task,
    counts,
    decide,
    entries,
    entry_of,
    fail_attempt,
    fail_job,
    iso,
    release,
    renew,
)

NOW = 1_700_000_000.0
LEASE = 30
Doc = dict[str, Any]


def settings(
    holder: str = "w1", now: float = NOW, max_attempts: int = 3, pick: int = 0
) -> Settings:
    return Settings(
        holder=holder, now=now, lease_seconds=LEASE, max_attempts=max_attempts, pick=pick
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
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(doc, patch)


def running(holder: str = "w1", a: int = 1, x: float = NOW + LEASE, **more: Any) -> dict[str, Any]:
    return {"s": RUNNING, "a": a, "h": holder, "x": int(x), **more}


def mapping(*items: dict[str, Any], partitions: int = 2) -> Doc:
    return job(
        phase="Mapping",
        plan={"s": DONE, "a": 1},
        planUrl="file:///w/plan-a1.json",
        workdir="file:///w/",
        partitions=partitions,
        map=list(items),
    )


def claim(doc: Doc, s: Settings) -> tuple[Claim, Doc]:
    action = decide(doc, s)
    assert isinstance(action, Claim), action
    return action, apply(doc, action.patch)


# Tasks and small helpers


@pytest.mark.parametrize(
    ("name", "task", "path"),
    [
        ("plan", Task("plan"), "/status/plan"),
        ("publish", Task("publish"), "/status/publish"),
        ("map-0", Task("map", 0), "/status/map/0"),
        ("reduce-12", Task("reduce", 12), "/status/reduce/12"),
    ],
)
def test_task_names_and_paths(name: str, task: Task, path: str) -> None:
    assert Task.parse(name) == task
    assert task.name == name
    assert task.path == path


@pytest.mark.parametrize("name", ["map", "map-", "map-x", "reduce--1", "sort-1", "", "plan-1"])
def test_task_parse_refuses_other_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a task name"):
        Task.parse(name)


def test_iso_is_utc_rfc3339() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(NOW + 0.9) == "2023-11-14T22:13:20Z"


def test_reading_helpers() -> None:
    doc = mapping({"s": DONE, "a": 1}, {"s": PENDING, "a": 0}, running())
    assert counts(doc, "map") == (1, 3)
    assert counts(doc, "reduce") == (0, 0)
    assert entries(doc, "reduce") == []
    assert entry_of(doc, Task("map", 2)) == running()
    assert entry_of(doc, Task("map", 3)) is None
    assert entry_of(doc, Task("plan")) == {"s": DONE, "a": 1}
    assert entry_of(doc, Task("publish")) is None
    assert state.phase_of({"status": "nonsense"}) is None


# decide: before, after and outside the worker phases


@pytest.mark.parametrize(
    "doc",
    [{"metadata": {}}, {"status": None}, {"status": {}}, {"status": {"phase": 3}}],
)
def test_no_phase_means_wait(doc: Doc) -> None:
    assert isinstance(decide(doc, settings()), Wait)


def test_unknown_phase_means_wait() -> None:
    action = decide(job(phase="Exploding"), settings())
    assert isinstance(action, Wait) and "Exploding" in action.why


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_terminal_phase_means_finished(phase: str) -> None:
    assert decide(job(phase=phase), settings()) == Finished(phase)


@pytest.mark.parametrize("phase", ["Pending", "Deploying", "Deployed"])
def test_startable_phase_claims_planning(phase: str) -> None:
    action, doc = claim(job(phase=phase), settings(holder="w7"))
    assert action.task == Task("plan")
    assert action.entry == {"s": RUNNING, "a": 1, "h": "w7", "x": int(NOW) + LEASE}
    assert doc["status"] == {
        "phase": "Planning",
        "plan": action.entry,
        "startTime": iso(NOW),
    }
    assert {"op": "test", "path": "/status/phase", "value": phase} in action.patch


# decide: Planning and Publishing (single tasks)


def test_planning_with_a_running_plan_waits() -> None:
    doc = job(phase="Planning", plan=running("w1"))
    assert isinstance(decide(doc, settings(holder="w2")), Wait)


def test_planning_lease_expiring_exactly_now_is_not_yet_expired() -> None:
    doc = job(phase="Planning", plan=running("w1", x=NOW))
    assert isinstance(decide(doc, settings(holder="w2")), Wait)
    assert isinstance(decide(doc, settings(holder="w2", now=NOW + 1)), Claim)


def test_planning_with_an_expired_plan_is_taken_over_counting_a_failure() -> None:
    doc = job(phase="Planning", plan=running("w1", x=NOW - 1))
    action, new = claim(doc, settings(holder="w2"))
    assert action.task == Task("plan")
    assert action.entry == {"s": RUNNING, "a": 2, "f": 1, "h": "w2", "x": int(NOW) + LEASE}
    assert new["status"]["plan"] == action.entry


def test_planning_with_a_released_plan_is_claimed_without_a_failure() -> None:
    doc = job(phase="Planning", plan={"s": PENDING, "a": 1})
    action, _ = claim(doc, settings(holder="w2"))
    assert action.entry == {"s": RUNNING, "a": 2, "h": "w2", "x": int(NOW) + LEASE}


@pytest.mark.parametrize("phase", ["Planning", "Publishing"])
def test_single_task_phase_without_its_entry_waits(phase: str) -> None:
    action = decide(job(phase=phase), settings())
    assert isinstance(action, Wait) and phase in action.why


def test_publishing_claims_the_publish_task() -> None:
    doc = job(phase="Publishing", publish={"s": PENDING, "a": 0})
    action, new = claim(doc, settings())
    assert action.task == Task("publish")
    assert new["status"]["publish"] == running(a=1)
    assert isinstance(decide(new, settings(holder="w2")), Wait)


# decide: Mapping and Reducing


def test_mapping_claims_a_pending_task() -> None:
    doc = mapping({"s": PENDING, "a": 0}, {"s": PENDING, "a": 0})
    action, new = claim(doc, settings(pick=1))
    assert action.task == Task("map", 1)
    assert action.entry == running(a=1)
    assert new["status"]["map"] == [{"s": PENDING, "a": 0}, running(a=1)]


def test_mapping_pick_chooses_among_the_first_claimable_tasks() -> None:
    items = [{"s": DONE, "a": 1}] * 3 + [{"s": PENDING, "a": 0}] * (PICK_WINDOW + 10)
    doc = mapping(*items)
    picked = set()
    for pick in range(3 * PICK_WINDOW):
        action = decide(doc, settings(pick=pick))
        assert isinstance(action, Claim)
        picked.add(action.task.index)
    assert picked == set(range(3, 3 + PICK_WINDOW))


def test_mapping_skips_running_and_done_tasks() -> None:
    doc = mapping({"s": DONE, "a": 1}, running("w9"), {"s": PENDING, "a": 2, "f": 1, "e": "boom"})
    action, _ = claim(doc, settings(pick=5))
    assert action.task == Task("map", 2)
    assert action.entry == {"s": RUNNING, "a": 3, "f": 1, "h": "w1", "x": int(NOW) + LEASE}


def test_mapping_with_only_running_tasks_waits() -> None:
    doc = mapping({"s": DONE, "a": 1}, running("w9"), running("w8"))
    action = decide(doc, settings())
    assert isinstance(action, Wait) and "map" in action.why


def test_mapping_takes_over_an_expired_task() -> None:
    doc = mapping({"s": DONE, "a": 1}, running("w9", a=2, x=NOW - 5, f=1))
    action, new = claim(doc, settings(holder="w1"))
    assert action.task == Task("map", 1)
    assert action.entry == {"s": RUNNING, "a": 3, "f": 2, "h": "w1", "x": int(NOW) + LEASE}
    assert new["status"]["map"][1] == action.entry


def test_every_map_task_done_advances_to_reducing() -> None:
    doc = mapping({"s": DONE, "a": 1}, {"s": DONE, "a": 2, "c": 1}, partitions=3)
    action = decide(doc, settings())
    assert isinstance(action, Advance)
    new = apply(doc, action.patch)
    assert new["status"]["phase"] == "Reducing"
    assert new["status"]["reduce"] == [{"s": PENDING, "a": 0}] * 3
    assert "publish" not in new["status"]


def test_map_only_job_advances_to_publishing() -> None:
    doc = mapping({"s": DONE, "a": 1}, partitions=0)
    action = decide(doc, settings())
    assert isinstance(action, Advance)
    new = apply(doc, action.patch)
    assert new["status"]["phase"] == "Publishing"
    assert new["status"]["publish"] == {"s": PENDING, "a": 0}
    assert "reduce" not in new["status"]


def test_no_map_tasks_at_all_advances() -> None:
    doc = mapping(partitions=2)
    action = decide(doc, settings())
    assert isinstance(action, Advance)
    assert apply(doc, action.patch)["status"]["phase"] == "Reducing"


def test_every_reduce_task_done_advances_to_publishing() -> None:
    doc = mapping({"s": DONE, "a": 1})
    doc["status"].update(phase="Reducing", reduce=[{"s": DONE, "a": 1}, {"s": DONE, "a": 3}])
    action = decide(doc, settings())
    assert isinstance(action, Advance)
    new = apply(doc, action.patch)
    assert new["status"]["phase"] == "Publishing"
    assert new["status"]["publish"] == {"s": PENDING, "a": 0}


def test_reducing_claims_reduce_tasks() -> None:
    doc = mapping({"s": DONE, "a": 1})
    doc["status"].update(phase="Reducing", reduce=[{"s": DONE, "a": 1}, {"s": PENDING, "a": 0}])
    action, new = claim(doc, settings())
    assert action.task == Task("reduce", 1)
    assert new["status"]["reduce"][1] == running(a=1)


def test_advance_refuses_other_phases() -> None:
    with pytest.raises(ValueError, match="cannot advance"):
        advance(job(phase="Planning"))


# Running out of attempts


def test_expired_lease_on_the_last_attempt_fails_the_job() -> None:
    doc = mapping({"s": DONE, "a": 1}, running("w9", a=3, x=NOW - 1, f=2))
    action = decide(doc, settings(max_attempts=3))
    assert isinstance(action, Advance)
    assert "map-1" in action.why and "3 of 3" in action.why and "lease" in action.why
    new = apply(doc, action.patch)
    status = new["status"]
    assert status["phase"] == "Failed"
    assert status["failedTask"] == "map-1"
    assert status["message"] == action.why
    assert status["completionTime"] == iso(NOW)
    assert status["map"][1] == {"s": "f", "a": 3, "e": action.why}
    assert decide(new, settings()) == Finished("Failed")


def test_pending_task_with_failures_used_up_fails_the_job_with_its_last_error() -> None:
    doc = mapping({"s": PENDING, "a": 2, "f": 2, "e": "exit code 3"})
    action = decide(doc, settings(max_attempts=2))
    assert isinstance(action, Advance)
    assert action.why == "map-0 failed 2 of 2 attempts; last: exit code 3"
    assert apply(doc, action.patch)["status"]["phase"] == "Failed"


def test_planning_lease_lost_too_often_fails_the_job() -> None:
    doc = job(phase="Planning", plan=running("w1", a=1, x=NOW - 1))
    action = decide(doc, settings(max_attempts=1))
    assert isinstance(action, Advance) and action.why.startswith("plan failed 1 of 1")
    new = apply(doc, action.patch)
    assert new["status"]["phase"] == "Failed" and new["status"]["failedTask"] == "plan"


# commits


def test_commit_plan_starts_mapping() -> None:
    action, doc = claim(job(phase="Pending"), settings())
    new = apply(doc, commit_plan(action.entry, 3, "file:///w/plan-a1.json", "file:///w/", 4))
    status = new["status"]
    assert status["phase"] == "Mapping"
    assert status["plan"] == {"s": DONE, "a": 1}
    assert status["planUrl"] == "file:///w/plan-a1.json"
    assert status["workdir"] == "file:///w/"
    assert status["partitions"] == 4
    assert status["map"] == [{"s": PENDING, "a": 0}] * 3


@pytest.mark.parametrize(("has_counters", "done"), [(True, {"c": 1}), (False, {})])
def test_commit_task_marks_it_done(has_counters: bool, done: dict[str, int]) -> None:
    doc = mapping({"s": PENDING, "a": 0})
    action, doc = claim(doc, settings())
    new = apply(doc, commit_task(action.task, action.entry, has_counters))
    assert new["status"]["map"] == [{"s": DONE, "a": 1, **done}]


def test_commit_publish_succeeds_the_job() -> None:
    doc = job(phase="Publishing", publish={"s": PENDING, "a": 0})
    action, doc = claim(doc, settings())
    counters = {"words": {"seen": 12}}
    patch = commit_publish(action.entry, ["part-r-00000", "part-r-00001"], counters, NOW + 60)
    status = apply(doc, patch)["status"]
    assert status["phase"] == "Succeeded"
    assert status["publish"] == {"s": DONE, "a": 1}
    assert status["results"] == ["part-r-00000", "part-r-00001"]
    assert status["counters"] == counters
    assert status["completionTime"] == iso(NOW + 60)
    assert "2 result file(s)" in status["message"]


def test_a_whole_job_from_pending_to_succeeded() -> None:
    doc = job(phase="Pending")
    action, doc = claim(doc, settings())
    doc = apply(doc, commit_plan(action.entry, 2, "p", "w", 1))
    for stage in ("map", "reduce"):
        while True:
            step = decide(doc, settings())
            if isinstance(step, Advance):
                doc = apply(doc, step.patch)
                break
            assert isinstance(step, Claim) and step.task.stage == stage
            doc = apply(doc, step.patch)
            doc = apply(doc, commit_task(step.task, step.entry, True))
    assert doc["status"]["phase"] == "Publishing"
    action, doc = claim(doc, settings())
    doc = apply(doc, commit_publish(action.entry, ["part-r-00000"], {}, NOW))
    assert decide(doc, settings()) == Finished("Succeeded")
    assert counts(doc, "map") == (2, 2) and counts(doc, "reduce") == (1, 1)


# failing and releasing an attempt


def claimed_map(f: int = 0, e: str | None = None) -> tuple[Claim, Doc]:
    entry: dict[str, Any] = {"s": PENDING, "a": f}
    if f:
        entry["f"] = f
    if e:
        entry["e"] = e
    return claim(mapping(entry), settings())


def test_failed_attempt_is_retried() -> None:
    action, doc = claimed_map()
    new = apply(doc, fail_attempt(action.task, action.entry, "exit code 1\n", 3, NOW))
    assert new["status"]["phase"] == "Mapping"
    assert new["status"]["map"][0] == {"s": PENDING, "a": 1, "f": 1, "e": "exit code 1"}
    again, _ = claim(new, settings(holder="w2"))
    assert again.entry == {"s": RUNNING, "a": 2, "f": 1, "h": "w2", "x": int(NOW) + LEASE}


def test_last_failed_attempt_fails_the_job() -> None:
    action, doc = claimed_map(f=2, e="old")
    new = apply(doc, fail_attempt(action.task, action.entry, "exit code 7", 3, NOW))
    status = new["status"]
    assert status["phase"] == "Failed"
    assert status["message"] == "map-0 failed 3 of 3 attempts; last: exit code 7"
    assert status["failedTask"] == "map-0"
    assert status["map"][0]["s"] == "f"


def test_permanent_failure_fails_the_job_at_once() -> None:
    action, doc = claimed_map()
    patch = fail_attempt(action.task, action.entry, "no such input", 3, NOW, permanent=True)
    status = apply(doc, patch)["status"]
    assert status["phase"] == "Failed"
    assert status["message"] == "map-0 failed: no such input"


def test_failure_reasons_are_clipped_keeping_the_end() -> None:
    action, doc = claimed_map()
    reason = "x" * 5000 + " the real cause"
    entry = apply(doc, fail_attempt(action.task, action.entry, reason, 3, NOW))["status"]["map"][0]
    assert len(entry["e"]) == MAX_ERROR_CHARS
    assert entry["e"].startswith("...") and entry["e"].endswith("the real cause")
    job_failed = apply(doc, fail_job(action.task, action.entry, reason, NOW))["status"]
    assert len(job_failed["message"]) <= state.MAX_MESSAGE_CHARS
    assert job_failed["message"].endswith("the real cause")


def test_release_counts_no_failure() -> None:
    action, doc = claimed_map(f=1, e="earlier")
    new = apply(doc, release(action.task, action.entry))
    assert new["status"]["map"][0] == {"s": PENDING, "a": 2, "f": 1}
    again, _ = claim(new, settings())
    assert again.entry["a"] == 3 and again.entry["f"] == 1


def test_release_keeps_an_error_the_entry_carries() -> None:
    mine = running(a=2, f=1, e="earlier")
    new = apply(mapping(mine), release(Task("map", 0), mine))
    assert new["status"]["map"][0] == {"s": PENDING, "a": 2, "f": 1, "e": "earlier"}


def test_release_of_a_clean_task() -> None:
    action, doc = claimed_map()
    assert apply(doc, release(action.task, action.entry))["status"]["map"][0] == {
        "s": PENDING,
        "a": 1,
    }


# renew


def test_renew_extends_the_lease_and_records_status() -> None:
    action, doc = claimed_map()
    patch, mine = renew(action.task, action.entry, NOW + 20, LEASE, "x" * 500)
    new = apply(doc, patch)
    assert mine["x"] == int(NOW) + 20 + LEASE
    assert mine["m"] == "x" * MAX_STATUS_CHARS
    assert new["status"]["map"][0] == mine
    # Renewing again tests the entry the last renewal wrote.
    patch2, mine2 = renew(action.task, mine, NOW + 40, LEASE, None)
    assert apply(new, patch2)["status"]["map"][0] == mine2
    refused(new, renew(action.task, action.entry, NOW + 40, LEASE, None)[0])
    # A renewed lease is not expired at its old expiry time.
    assert isinstance(decide(new, settings(holder="w2", now=NOW + LEASE + 1)), Wait)


def test_renew_fails_once_the_job_ended() -> None:
    action, doc = claimed_map()
    doc["status"]["phase"] = "Failed"
    refused(doc, renew(action.task, action.entry, NOW, LEASE, None)[0])


# stale workers and races


def test_a_worker_whose_lease_was_taken_over_cannot_commit_fail_release_or_renew() -> None:
    mine, doc = claimed_map()
    theirs, doc = claim(doc, settings(holder="w2", now=NOW + LEASE + 1))
    assert theirs.task == mine.task and theirs.entry["a"] == 2
    task = mine.task
    refused(doc, commit_task(task, mine.entry, False))
    refused(doc, fail_attempt(task, mine.entry, "late", 3, NOW))
    refused(doc, fail_attempt(task, mine.entry, "late", 3, NOW, permanent=True))
    refused(doc, release(task, mine.entry))
    refused(doc, renew(task, mine.entry, NOW + LEASE + 2, LEASE, None)[0])
    done = apply(doc, commit_task(task, theirs.entry, False))
    assert done["status"]["map"][0] == {"s": DONE, "a": 2}
    refused(done, commit_task(task, mine.entry, False))


def test_a_stale_planner_cannot_commit_its_plan() -> None:
    mine, doc = claim(job(phase="Pending"), settings(holder="w1"))
    theirs, doc = claim(doc, settings(holder="w2", now=NOW + LEASE + 1))
    refused(doc, commit_plan(mine.entry, 1, "p", "w", 1))
    assert apply(doc, commit_plan(theirs.entry, 1, "p", "w", 1))["status"]["phase"] == "Mapping"


def test_a_stale_publisher_cannot_succeed_the_job() -> None:
    mine, doc = claim(job(phase="Publishing", publish={"s": PENDING, "a": 0}), settings())
    _, doc = claim(doc, settings(holder="w2", now=NOW + LEASE + 1))
    refused(doc, commit_publish(mine.entry, [], {}, NOW))


def test_a_commit_after_the_job_failed_is_refused() -> None:
    action, doc = claimed_map()
    doc["status"]["phase"] = "Failed"
    refused(doc, commit_task(action.task, action.entry, False))


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(job(phase="Pending"), id="plan-claim"),
        pytest.param(job(phase="Planning", plan=running(x=NOW - 1)), id="plan-takeover"),
        pytest.param(mapping({"s": PENDING, "a": 0}, {"s": PENDING, "a": 0}), id="map-claim"),
        pytest.param(mapping(running(x=NOW - 1)), id="map-takeover"),
        pytest.param(mapping({"s": DONE, "a": 1}), id="advance"),
        pytest.param(mapping(running(a=3, f=2, x=NOW - 1)), id="fail-job"),
        pytest.param(job(phase="Publishing", publish={"s": PENDING, "a": 0}), id="publish"),
    ],
)
def test_two_workers_deciding_on_one_document_exactly_one_wins(doc: Doc) -> None:
    first = decide(doc, settings(holder="w1", pick=0))
    second = decide(doc, settings(holder="w2", pick=0))
    assert isinstance(first, Claim | Advance) and isinstance(second, Claim | Advance)
    after = apply(doc, first.patch)
    refused(after, second.patch)
    # The loser re-reads and decides again: it does not redo the winner's work.
    retry = decide(after, settings(holder="w2", pick=0))
    if isinstance(retry, Claim) and isinstance(first, Claim):
        assert retry.task != first.task


def test_workers_picking_different_tasks_both_win() -> None:
    doc = mapping({"s": PENDING, "a": 0}, {"s": PENDING, "a": 0})
    first = decide(doc, settings(holder="w1", pick=0))
    second = decide(doc, settings(holder="w2", pick=1))
    assert isinstance(first, Claim) and isinstance(second, Claim)
    both = apply(apply(doc, first.patch), second.patch)
    assert [e["h"] for e in both["status"]["map"]] == ["w1", "w2"]


# size


def test_a_10000_task_status_stays_small() -> None:
    tasks = 10_000
    action, doc = claim(job(phase="Pending"), settings())
    plan_url = "s3://results/wordcount/_kubemr/0123456789abcdef/plan-a1.json"
    doc = apply(doc, commit_plan(action.entry, tasks, plan_url, plan_url[:-13], 0))
    # Mark every task done as commit_task writes it (with its counters flag).
    first, claimed = claim(doc, settings())
    done = apply(claimed, commit_task(first.task, first.entry, True))
    done_entry = done["status"]["map"][first.task.index]
    assert done_entry == {"s": DONE, "a": 1, "c": 1}
    doc["status"]["map"] = [dict(done_entry) for _ in range(tasks)]
    advanced = decide(doc, settings())
    assert isinstance(advanced, Advance)
    doc = apply(doc, advanced.patch)
    pub, doc = claim(doc, settings())
    counters = {"kubemr": {"map input lines": 10**9, "map output lines": 10**10}}
    results = [f"part-m-{i:05d}" for i in range(tasks)]
    doc = apply(doc, commit_publish(pub.entry, results, counters, NOW))
    size = len(json.dumps(doc))
    assert size < 512 * 1024, f"a {tasks}-task job document takes {size} bytes"
    assert len(json.dumps(doc["status"]["map"])) < 300 * 1024


def test_temporary_failures_do_not_use_up_attempts() -> None:
    """S3 restarting: ten attempts may fail for a temporary reason before any counts."""
    action, doc = claimed_map()
    for n in range(1, state.MAX_TEMPORARY_FAILURES + 1):
        patch = fail_attempt(action.task, action.entry, "S3 unreachable", 3, NOW, temporary=True)
        doc = apply(doc, patch)
        entry = doc["status"]["map"][0]
        assert doc["status"]["phase"] == "Mapping"
        assert entry == {"s": PENDING, "a": n, "t": n, "e": "S3 unreachable"}
        action, doc = claim(doc, settings(holder=f"w{n}"))
        assert action.entry["t"] == n and "f" not in action.entry
    patch = fail_attempt(action.task, action.entry, "S3 unreachable", 3, NOW, temporary=True)
    entry = apply(doc, patch)["status"]["map"][0]
    assert entry["f"] == 1 and entry["t"] == state.MAX_TEMPORARY_FAILURES
    released = apply(doc, release(action.task, action.entry))["status"]["map"][0]
    assert released["t"] == state.MAX_TEMPORARY_FAILURES


def test_a_permanent_failure_is_never_temporary() -> None:
    action, doc = claimed_map()
    patch = fail_attempt(action.task, action.entry, "bad", 3, NOW, permanent=True, temporary=True)
    assert apply(doc, patch)["status"]["phase"] == "Failed"


def test_all_tasks_lists_every_entry_in_stage_order() -> None:
    doc = {
        "status": {
            "phase": "Reducing",
            "plan": {"s": "d", "a": 1},
            "map": [{"s": "d", "a": 1}, {"s": "d", "a": 2}],
            "reduce": [{"s": "r", "a": 1, "h": "w", "x": 5}],
        }
    }
    found = [(task.name, entry["a"]) for task, entry in state.all_tasks(doc)]
    assert found == [("plan", 1), ("map-0", 1), ("map-1", 2), ("reduce-0", 1)]
    assert list(state.all_tasks({"status": {}})) == []


# -- claims of several tasks at once -------------------------------------------------------


def many(n: int, **overrides: Doc) -> Doc:
    items: list[Doc] = [{"s": PENDING, "a": 0} for _ in range(n)]
    for index, entry in overrides.items():
        items[int(index.removeprefix("m"))] = entry
    return job(phase="Mapping", partitions=0, map=items)


def batched(batch: int, workers: int, pick: int = 0, now: float = NOW) -> Settings:
    return Settings("w1", now, LEASE, 3, pick=pick, batch=batch, workers=workers)


@pytest.mark.parametrize(
    ("claimable", "batch", "workers", "size"),
    [(1000, 16, 8, 16), (100, 16, 8, 6), (15, 16, 8, 1), (3, 16, 1, 1), (40, 1, 2, 1)],
)
def test_a_claim_leaves_twice_as_much_for_every_worker(
    claimable: int, batch: int, workers: int, size: int
) -> None:
    assert state.batch_size(claimable, batched(batch, workers)) == size


def test_one_patch_claims_several_tasks_and_every_one_is_tested() -> None:
    doc = many(100, m5={"s": DONE, "a": 1})
    action = decide(doc, batched(16, 2, pick=3))
    assert isinstance(action, Claim)
    held = action.held
    assert [t.name for t, _ in held] == [f"map-{i}" for i in (3, 4, *range(6, 20))]
    new = apply(doc, action.patch)
    for task, entry in held:
        assert entry_of(new, task) == entry and entry["s"] == RUNNING and entry["h"] == "w1"
    assert entry_of(new, Task("map", 5)) == {"s": DONE, "a": 1}
    # Another worker that read the same document loses the whole claim, not part of it.
    rival = decide(doc, Settings("w2", NOW, LEASE, 3, pick=3, batch=16, workers=2))
    assert isinstance(rival, Claim)
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(new, rival.patch)


def test_a_batch_leaves_out_a_task_out_of_attempts_and_takes_the_rest() -> None:
    expired = {"s": RUNNING, "a": 3, "f": 2, "h": "w9", "x": int(NOW) - 1}
    doc = many(40, m1=expired)
    action = decide(doc, batched(4, 1))
    assert isinstance(action, Claim)
    assert [t.name for t, _ in action.held] == ["map-0", "map-2", "map-3", "map-4"]


def test_renewing_and_committing_a_batch_are_single_patches() -> None:
    doc = many(10)
    action = decide(doc, batched(4, 1))
    assert isinstance(action, Claim) and len(action.held) == 4
    doc = apply(doc, action.patch)
    current = action.held[1][0]
    patch, new = state.renew_all(action.held, NOW + 10, LEASE, "half way", current)
    assert [op["op"] for op in patch].count("test") == 1 + 4  # the phase once, each entry
    doc = apply(doc, patch)
    assert [e.get("m") for e in new] == [None, "half way", None, None]
    assert all(e["x"] == int(NOW) + 10 + LEASE for e in new)
    # A renewal from before that one no longer applies: the entries moved on.
    stale, _ = state.renew_all(action.held, NOW + 20, LEASE, None)
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(doc, stale)
    held = [(t, e) for (t, _), e in zip(action.held, new, strict=True)]
    commit = [op for t, e in held for op in commit_task(t, e, False)]
    doc = apply(doc, commit)
    assert counts(doc, "map") == (4, 10)
