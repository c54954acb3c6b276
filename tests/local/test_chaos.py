"""Chaos in short: the scenarios of `bench/chaos.py`, one run each, results compared byte for byte.

Workers killed at random several times, a frozen worker, a killed `kubemr
run`, and an output that cannot be written: a job either completes with the
clean run's exact parts, or fails with a clear reason leaving no `_SUCCESS`
and no partial part. `bench/chaos.py --runs 20` runs the same scenarios many
times and reports the figures in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Kubemr, results, running_task, wait_for, worker_pids

KINDS = ["sigkill", "sigstop", "kill-run", "unwritable"]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One run of each fault kind by `bench/chaos.py`, run as a user runs it (its clean run
    of the same job is the reference it compares every part with, byte for byte)."""
    report = tmp_path_factory.mktemp("chaos") / "runs.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "chaos.py"),
            "--runs",
            "1",
            "--kinds",
            ",".join(KINDS),
            "--sleep",
            "0.5",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.exists(), proc.stderr
    found = json.loads(report.read_text())
    clean = found["clean_parts"]  # the reference: 3 partitions, none empty
    assert len(clean) == 3 and all(clean.values()), clean
    return {run["kind"]: run for run in found["runs"]}


@pytest.mark.parametrize("kind", KINDS)
def test_chaos_run_completes_identically_or_fails_cleanly(
    outcomes: dict[str, dict[str, Any]], kind: str
) -> None:
    outcome = outcomes[kind]
    assert outcome["faults"] >= 1, outcome
    assert not outcome["differed"], outcome
    if kind == "unwritable":
        assert outcome["phase"] != "Succeeded" and outcome["exit_code"] in (1, 2), outcome
        assert "not a directory" in outcome["reason"].lower(), outcome
        assert outcome["parts"] == 0, outcome  # no part file anywhere under the output
        return
    assert outcome["phase"] == "Succeeded" and outcome["exit_code"] == 0, outcome
    if kind in ("sigkill", "sigstop"):
        assert outcome["recoveries"], outcome  # a task held by the victim moved on
        assert max(outcome["recoveries"]) < 30, outcome


def test_a_killed_workers_commands_do_not_outlive_it(kubemr: Kubemr) -> None:
    """SIGKILL a worker mid-task: its command (own process group) is killed with it."""
    (kubemr.tmp / "in.txt").write_bytes(b"a\n")
    job = kubemr.job("orphan", inputs=["./in.txt"], map="sleep 41; cat")
    proc = kubemr.popen("run", str(job), "-w", "1", "-o", str(kubemr.tmp / "out"))
    run_dir = kubemr.run_dir("orphan")
    _, entry = wait_for(lambda: running_task(run_dir), what="a running map task")
    wait_for(lambda: pgrep("^sleep 41"), what="the map command")
    pid = wait_for(lambda: worker_pids(entry["h"]).get(entry["h"]), what="the worker's pid")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pgrep("^sleep 41") or None, timeout=5, what="the orphaned command to end")
    wait_for(lambda: pgrep("^sleep 41"), what="the task to run again on a new worker")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert not pgrep("^sleep 41")


def pgrep(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return found.stdout.split()


def test_a_worker_that_cannot_start_is_one_clear_sentence(kubemr: Kubemr) -> None:
    """Resuming a run whose logs directory became a file: a sentence, not an internal error."""
    (kubemr.tmp / "in.txt").write_bytes(b"a\n")
    job = kubemr.job("nolog", inputs=["./in.txt"], map="sleep 60; cat")
    run_dir = kubemr.tmp / "run"
    first = kubemr.popen("run", str(job), "-w", "1", "-q", "--run-dir", str(run_dir))
    wait_for(lambda: running_task(run_dir), what="a running map task")
    first.kill()  # the run is left unfinished
    first.wait()
    wait_for(lambda: not worker_pids(under=kubemr.tmp), timeout=30, what="the worker to exit")
    shutil.rmtree(run_dir / "logs")
    (run_dir / "logs").write_text("not a directory\n")
    again = kubemr("run", str(job), "-w", "1", "-q", "--run-dir", str(run_dir))
    assert again.returncode == 1, again.stderr
    assert "internal error" not in again.stderr and "Traceback" not in again.stderr
    assert "cannot start worker process 0" in again.stderr and "logs" in again.stderr


def test_chaos_results_helper_sees_a_missing_success(tmp_path: Path) -> None:
    """The comparison the chaos runs rely on refuses an output without _SUCCESS."""
    (tmp_path / "part-r-00000").write_bytes(b"x\n")
    with pytest.raises(AssertionError):
        results(tmp_path)
