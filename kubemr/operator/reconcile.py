"""(MapReduceJob, what the cluster shows) -> what the operator should do. Pure.

The operator is level-triggered: whatever event woke it, it looks at the
job and the objects it owns and decides from scratch. Its decisions:

- a new job (no status): validate it; take it with a JSON patch whose `test`
  is the object's resourceVersion (so of two operators only one takes it),
  setting phase Deploying; or fail it with the reason;
- Deploying and taken by this operator (or its deploy lease expired, as this
  operator's own clock measures it: see `Observed.deployer_stale`): create
  the owned objects (creation is idempotent by name), then mark Deployed;
- any time: keep `status.progress` current (for `kubectl get`), reflect a
  worker Job that failed or pods that cannot start onto the job, and report
  task failures and the outcome as Events and conditions;
- finished: stop lingering workers of a failed job, and delete the job after
  `ttlSecondsAfterFinished`.

The workers drive phases from Planning on; the operator never needs storage
credentials.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubemr import state
from kubemr.errors import SpecError
from kubemr.manifest import cluster_spec
from kubemr.operator.desired import OperatorSettings, desired_objects

DEPLOY_LEASE_SECONDS = 60
#: Pod waiting reasons that mean a pod will never start by itself.
FATAL_WAITING = ("CreateContainerConfigError", "InvalidImageName", "CreateContainerError")
#: Waiting reasons that may clear up, failing the job only after a grace period.
SLOW_WAITING = ("ErrImagePull", "ImagePullBackOff")
IMAGE_PULL_GRACE_SECONDS = 120


@dataclass(frozen=True)
class Observed:
    """What the operator saw of a job's owned objects."""

    batch_job: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    #: The job's deployer lease has not changed for its duration, by this operator's own
    #: clock (an operator that took the job died before deploying it).
    deployer_stale: bool = False
    #: Seconds since this operator last wrote the job's `status.progress`.
    progress_age: float = float("inf")


@dataclass
class Plan:
    """Decisions for one job, applied in order by the controller."""

    patches: list[list[dict[str, Any]]] = field(default_factory=list)
    create: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str, bool]] = field(default_factory=list)  # (reason, note, warning)
    delete_batch_job: bool = False
    delete_job: bool = False
    task_failures: list[tuple[str, int, str]] = field(default_factory=list)  # (task, try, error)


def _condition(kind: str, status: str, reason: str, message: str, now: float) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message[:1000],
        "lastTransitionTime": state.iso(now),
    }


def _has_condition(status: Mapping[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True" for c in status.get("conditions") or []
    )


def _with_condition(status: Mapping[str, Any], cond: dict[str, Any]) -> list[dict[str, Any]]:
    kept = [c for c in status.get("conditions") or [] if c.get("type") != cond["type"]]
    return [*kept, cond]


def progress(doc: Mapping[str, Any]) -> dict[str, str]:
    md, mt = state.counts(doc, "map")
    rd, rt = state.counts(doc, "reduce")
    partitions = int(state.status_of(doc).get("partitions", 0) or 0)
    out = {"map": f"{md}/{mt}"}
    if rt or partitions:
        out["reduce"] = f"{rd}/{rt or partitions}"
    return out


#: `status.progress` moves in steps of at least this share of a stage (and at its end): every
#: write of the object rewrites all of it and races the workers' own patches, so the operator
#: must not add a write for each task the workers commit.
PROGRESS_STEP = 0.01


#: ... and at most once in this many seconds while a stage runs (SIG Scalability: a large
#: object should not be written more than every couple of seconds).
PROGRESS_SECONDS = 2.0


def progress_due(
    old: Any, new: Mapping[str, str], terminal: bool, age: float = float("inf")
) -> bool:
    """Whether `status.progress` should go from `old` to `new` now, `age` seconds after this
    operator last wrote it (a stage's end and the job's end are written at once)."""
    if old == new:
        return False
    if terminal or not isinstance(old, Mapping) or set(old) != set(new):
        return True
    for stage, value in new.items():
        try:
            done, total = (int(x) for x in value.split("/"))
            was, was_total = (int(x) for x in str(old[stage]).split("/"))
        except ValueError:
            return True
        if total != was_total or done == total:
            return True
        if done - was >= max(1, total * PROGRESS_STEP) and age >= PROGRESS_SECONDS:
            return True
    return False


def _fail_patch(mrj: Mapping[str, Any], message: str, now: float) -> list[dict[str, Any]]:
    status = state.status_of(mrj)
    cond = _condition("Failed", "True", "WorkersFailed", message, now)
    extra = [{"op": "add", "path": "/status/conditions", "value": _with_condition(status, cond)}]
    return state.fail_job(mrj, None, message, now, extra=extra)


def reconcile(
    mrj: Mapping[str, Any], observed: Observed, settings: OperatorSettings, me: str, now: float
) -> Plan:
    """Decide what to do about one MapReduceJob. Never changes `mrj` or `observed`: each
    decider below reads them and adds to the plan."""
    plan = Plan()
    if mrj["metadata"].get("deletionTimestamp"):
        return plan
    phase = state.status_of(mrj).get("phase")
    if phase is None:
        _admit(mrj, me, now, plan)
        return plan
    terminal = phase in state.TERMINAL
    if not terminal:
        _deploy(mrj, observed, settings, me, now, plan)
        if _fail_broken_workers(mrj, observed, now, plan):
            return plan
    _report_progress(mrj, observed, terminal, plan)
    _report_task_failures(mrj, plan)
    if terminal:
        _finish(mrj, observed, now, plan)
    return plan


def _admit(mrj: Mapping[str, Any], me: str, now: float, plan: Plan) -> None:
    """A new job: take it (phase Deploying, with this operator's deploy lease), or fail it
    with the reason it is invalid; the `test` of its resourceVersion lets one operator win."""
    test = {
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": mrj["metadata"]["resourceVersion"],
    }
    try:
        cluster_spec(mrj)
    except SpecError as exc:
        message = str(exc)
        cond = _condition("Failed", "True", "InvalidSpec", message, now)
        failed = {
            "phase": state.FAILED_PHASE,
            "message": message,
            "completionTime": state.iso(now),
            "conditions": [cond],
        }
        plan.patches.append([test, {"op": "add", "path": "/status", "value": failed}])
        plan.events.append(("Failed", message, True))
        return
    taken = {
        "phase": "Deploying",
        "deployer": {"h": me, "l": DEPLOY_LEASE_SECONDS},
        "progress": {"map": "0/0"},
    }
    plan.patches.append([test, {"op": "add", "path": "/status", "value": taken}])


def _deploy(
    mrj: Mapping[str, Any],
    observed: Observed,
    settings: OperatorSettings,
    me: str,
    now: float,
    plan: Plan,
) -> None:
    """Create the owned objects when this operator holds the deploy lease (or the holder's
    lease went stale), or again when the worker Job is gone; then mark the job Deployed."""
    status = state.status_of(mrj)
    deployed = _has_condition(status, "Deployed")
    mine = (status.get("deployer") or {}).get("h") == me or observed.deployer_stale
    if not ((not deployed and mine) or (deployed and observed.batch_job is None)):
        return
    spec = cluster_spec(mrj)
    plan.create = desired_objects(mrj, spec, settings)
    if deployed:
        return
    message = f"created Job {mrj['metadata']['name']} with {spec.replicas} worker pod(s)"
    cond = _condition("Deployed", "True", "Deployed", message, now)
    plan.patches.append(
        [
            {"op": "test", "path": "/status/phase", "value": status.get("phase")},
            {"op": "add", "path": "/status/conditions", "value": _with_condition(status, cond)},
        ]
    )
    plan.events.append(("Deployed", message, False))


def _fail_broken_workers(
    mrj: Mapping[str, Any], observed: Observed, now: float, plan: Plan
) -> bool:
    """A worker Job that failed or pods that can never start fail the job; True if so."""
    failure = worker_failure(observed, now)
    if not failure:
        return False
    plan.patches.append(_fail_patch(mrj, failure, now))
    plan.events.append(("Failed", failure, True))
    plan.delete_batch_job = True
    return True


def _report_progress(
    mrj: Mapping[str, Any], observed: Observed, terminal: bool, plan: Plan
) -> None:
    """Keep `status.progress` (what `kubectl get` shows) current, in steps (`progress_due`)."""
    current = progress(mrj)
    old = state.status_of(mrj).get("progress")
    if progress_due(old, current, terminal, observed.progress_age):
        plan.patches.append([{"op": "add", "path": "/status/progress", "value": current}])


def _report_task_failures(mrj: Mapping[str, Any], plan: Plan) -> None:
    """The failures the workers recorded, for the controller to report once each as Events."""
    for _, error in state.errors_of(mrj):
        plan.task_failures.append(
            (str(error.get("t")), int(error.get("a") or 0), str(error.get("e", "")))
        )


def _finish(mrj: Mapping[str, Any], observed: Observed, now: float, plan: Plan) -> None:
    """A finished job: its condition and Event once, lingering workers of a failed job
    stopped, and the job deleted after `ttlSecondsAfterFinished`."""
    status = state.status_of(mrj)
    phase = str(status.get("phase"))
    kind = "Complete" if phase == state.SUCCEEDED else "Failed"
    if not _has_condition(status, kind):
        message = str(status.get("message") or phase)
        cond = _condition(kind, "True", phase, message, now)
        plan.patches.append(
            [{"op": "add", "path": "/status/conditions", "value": _with_condition(status, cond)}]
        )
        if kind == "Complete":
            output = (mrj.get("spec") or {}).get("output")
            said = f"{state.result_count(mrj)} result file(s) in {output}"
            plan.events.append(("Completed", said, False))
        else:
            plan.events.append(("Failed", message, True))
    workers = observed.batch_job
    if phase == state.FAILED_PHASE and workers is not None:
        plan.delete_batch_job = bool(int((workers.get("status") or {}).get("active") or 0))
    ttl = (mrj.get("spec") or {}).get("ttlSecondsAfterFinished")
    done_at = state.parse_iso(status.get("completionTime"))
    if isinstance(ttl, int) and done_at is not None and done_at + ttl <= now:
        plan.delete_job = True


def refused(mrj: Mapping[str, Any], reason: str, now: float) -> Plan:
    """The API server refused an object the job needs (say, a template that makes the pod
    invalid): no retry can help, so the job fails with the server's reason."""
    message = state.clip(f"the cluster refused the job's worker objects: {reason}", 1000)
    plan = Plan()
    plan.patches.append(_fail_patch(mrj, message, now))
    plan.events.append(("Failed", message, True))
    return plan


def worker_failure(observed: Observed, now: float) -> str | None:
    """Why the worker pods cannot do the job, if they cannot."""
    job = observed.batch_job
    if job is not None:
        for cond in (job.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Failed" and cond.get("status") == "True":
                return (
                    f"the worker Job failed ({cond.get('reason', 'unknown')}): "
                    f"{cond.get('message', '')}".rstrip(": ")
                    + "; see `kubectl describe job` and the pods' logs."
                )
    for pod in observed.pods:
        name = pod.get("metadata", {}).get("name", "?")
        created = state.parse_iso(pod.get("metadata", {}).get("creationTimestamp")) or now
        pod_status = pod.get("status") or {}
        statuses = [
            *(pod_status.get("containerStatuses") or []),
            *(pod_status.get("initContainerStatuses") or []),
        ]
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in FATAL_WAITING or (
                reason in SLOW_WAITING and now - created > IMAGE_PULL_GRACE_SECONDS
            ):
                detail = waiting.get("message") or ""
                return f"pod {name} cannot start: {reason}" + (f": {detail}" if detail else "")
    return None
