"""The request trace of `kubemr.kube` (KUBEMR_TRACE_FILE), which bench/coordination.py reads.

Checks the line format, that reads and patches of a MapReduceJob are each
traced with their HTTP status and sizes (a 422 too, still raised as
Conflict), that the objects returned are the parsed responses, and that
nothing is traced when the variable is unset. The API client is a stand-in
answering with canned bytes, so no cluster is needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubemr import state
from kubemr.errors import Conflict
from kubemr.kube import TRACE_ENV, TRACE_PREFIX, Kube, RequestTrace, describe_patch
from kubemr.state import Settings

REFUSED = b'{"kind":"Status","message":"the server rejected our request","code":422}'


class Response:
    """What the client returns with `_preload_content=False`: status and raw bytes."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        self.data = body
        self.status = status


class FakeCustom:
    """Answers get and patch of one MapReduceJob; a patch may be refused with 422."""

    def __init__(self, doc: dict[str, Any], refuse: bool = False) -> None:
        self.doc = doc
        self.refuse = refuse
        self.calls: list[dict[str, Any]] = []

    def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Response:
        self.calls.append(kwargs)
        return Response(json.dumps(self.doc).encode())

    def patch_namespaced_custom_object_status(self, *args: Any, **kwargs: Any) -> Response:
        self.calls.append(kwargs)
        if self.refuse:
            refused = ApiException(status=422, reason="Unprocessable Entity")
            refused.body = REFUSED
            raise refused
        return Response(json.dumps(self.doc).encode())


def kube_with(custom: FakeCustom, trace: RequestTrace | None) -> Kube:
    kube = Kube.__new__(Kube)  # no kubeconfig: only the MapReduceJob calls are used
    kube.custom = custom
    kube.trace = trace
    kube.timeout = 5.0
    return kube


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


def test_reads_and_patches_are_traced_with_status_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "trace"
    custom = FakeCustom(doc())
    ops = [{"op": "replace", "path": "/status/map/held/w1/d", "value": 3}]
    with open(path, "a", encoding="utf-8") as stream:
        kube = kube_with(custom, RequestTrace(stream))
        assert kube.get_job("ns", "j") == doc()
        assert kube.patch_job_status("ns", "j", ops) == doc()
    assert all(call.get("_preload_content") is False for call in custom.calls)
    get, patch = read_trace(path)
    size = len(json.dumps(doc()).encode())
    assert get["v"] == "GET" and get["code"] == 200 and get["in"] == size and get["out"] == 0
    assert "what" not in get and get["ms"] >= 0 and get["t"] > 1e9
    assert patch["v"] == "PATCH" and patch["code"] == 200 and patch["in"] == size
    assert patch["out"] == len(json.dumps(ops)) and patch["what"] == "commit=map:3"


def test_a_lost_race_is_traced_as_422_and_raised_as_conflict(tmp_path: Path) -> None:
    path = tmp_path / "trace"
    with open(path, "a", encoding="utf-8") as stream:
        kube = kube_with(FakeCustom(doc(), refuse=True), RequestTrace(stream))
        with pytest.raises(Conflict):
            test = [{"op": "test", "path": "/status/phase", "value": "X"}]
            kube.patch_job_status("ns", "j", test)
    (line,) = read_trace(path)
    assert line["v"] == "PATCH" and line["code"] == 422 and line["what"] == "-"
    assert line["in"] == len(REFUSED)


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
