"""bench/coordination.py still runs: tiny jobs on the devcluster, checked for sane figures.

The figures in docs/benchmarks.md come from the script at T = 100, 1,000 and
10,000 with 8 worker pods; this runs it at T = 10 and 20 with 2, so the
operator, the worker pods' request traces, the apiserver's metrics, the watch
and the /proc sampling it relies on keep working as the code changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from devcluster_support import Cluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


def test_coordination_benchmark_runs(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "coordination.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "coordination.py"),
            "--tasks",
            "10,20",
            "--workers",
            "2",
            "--timeout",
            "240",
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "tasks/s" in done.stdout and "growth exponent" in done.stdout
    data = json.loads(out.read_text())
    rows = {r["tasks"]: r for r in data["rows"]}
    assert sorted(rows) == [10, 20]
    for tasks, r in rows.items():
        assert r["complete"] and r["done"] == tasks
        assert r["tasks_per_s"] > 0 and 0 < r["map_s"] <= r["job_s"]
        assert r["max_kib"] > 0 and r["stored_kib"] > 0
        assert r["patches_per_task"] > 0  # claims and commits (several tasks each, batched)
        assert r["gets_per_task"] > 0
        assert r["patch_ms"][0] > 0 and r["patch_ms"][1] >= r["patch_ms"][0]
        assert r["cpu_ms_per_task"]["workers"] > 0
        assert r["cpu_ms_per_task"]["kube-apiserver"] > 0
    assert data["growth"] == data["growth"]  # a number, not NaN


def test_the_job_object_stays_bounded_at_5000_tasks(
    cluster: Cluster, tmp_path: Path, quiet_cluster_operator: None
) -> None:
    """The protocol alone (real workers, the real apiserver, tasks that move no data) at
    T = 5,000: no version of the MapReduceJob may pass 64 KiB (it is about 2 KiB, whatever
    T), writes stay well under one per task, and waiting workers read from the watch. (No
    operator: one installed by another test would take the job before the benchmark sets
    its status.)"""
    out = tmp_path / "protocol.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "coordination.py"),
            "--protocol",
            "--tasks",
            "5000",
            "--workers",
            "8",
            "--timeout",
            "600",
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["complete"] and row["done"] == 5000
    assert 0 < row["max_kib"] <= 64, row["max_kib"]
    assert row["versions_per_task"] < 0.15, row["versions_per_task"]
    assert row["gets_per_task"] < 0.05, row["gets_per_task"]
