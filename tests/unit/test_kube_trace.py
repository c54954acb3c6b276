"""The request trace of `kubemr.kube` (KUBEMR_TRACE_FILE), which bench/coordination.py reads:
how patches are described, and that the trace follows the environment. What real requests
trace is checked against the apiserver in tests/cluster/test_request_trace.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubemr import state
from kubemr.kube import TRACE_ENV, TRACE_PREFIX, RequestTrace, describe_patch
from kubemr.state import Settings


def read_trace(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    assert all(line.startswith(TRACE_PREFIX) for line in lines)
    return [json.loads(line[len(TRACE_PREFIX) :]) for line in lines]


def doc() -> dict[str, Any]:
    return {
        "metadata": {"name": "j", "namespace": "ns"},
        "status": {"phase": "Mapping", "counters": {}, "map": state.new_stage(8)},
    }


def test_describe_patch_names_the_claims_commits_and_phases_a_patch_makes() -> None:
    s = Settings(holder="w1", now=1000.0, lease_seconds=30, max_attempts=3, batch=2)
    claim = state.decide(doc(), s)
    assert isinstance(claim, state.Claim)
    assert describe_patch(claim.patch) == "claim=map:0-1"
    assert describe_patch(state.renew(doc(), claim.held, 1, 2)) == "commit=map:2"
    planner = state.Held("plan", "w1", 1, 0, 1, 30, (1,))
    plan = state.commit_plan(planner, 1, 3, "s3://b/plan", "s3://b/w/", 0)
    assert describe_patch(plan) == "phase=Mapping"
    assert describe_patch([{"op": "add", "path": "/status/progress", "value": {}}]) == "-"


def test_the_trace_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(TRACE_ENV, raising=False)
    assert RequestTrace.from_env() is None
    monkeypatch.setenv(TRACE_ENV, "-")
    trace = RequestTrace.from_env()
    assert trace is not None
    trace.record("GET", 1.0, 0.002, 200, 0, 10)
    assert capsys.readouterr().err.startswith(TRACE_PREFIX + '{"v":"GET"')
    monkeypatch.setenv(TRACE_ENV, str(tmp_path / "no-such-dir" / "trace"))
    with pytest.raises(Exception, match="cannot open KUBEMR_TRACE_FILE"):
        RequestTrace.from_env()
