"""Chaos in short: the scenarios of `bench/chaos.py`, one run each, results compared byte for byte.

Workers killed at random several times, a frozen worker, a killed `kubemr
run`, and an output that cannot be written: a job either completes with the
clean run's exact parts, or fails with a clear reason leaving no `_SUCCESS`
and no partial part. `bench/chaos.py --runs 20` runs the same scenarios many
times and reports the figures in docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, Kubemr, results, worker_pids
from test_faults import running_task, wait_for

sys.path.insert(0, str(REPO / "bench"))
import chaos


@pytest.fixture(scope="module")
def scene(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, Path, dict[str, bytes]]]:
    """A corpus, the chaos job (16 map tasks, 3 partitions) and its clean run's parts."""
    root = tmp_path_factory.mktemp("chaos")
    corpus = chaos.make_corpus(root)
    job = chaos.write_job(root, "chaos", corpus, sleep=0.5)
    reference, _ = chaos.clean_reference(root, job)
    assert len(reference) == 3 and all(reference.values())
    yield root, job, reference


@pytest.mark.parametrize("kind", ["sigkill", "sigstop", "kill-run", "unwritable"])
def test_chaos_run_completes_identically_or_fails_cleanly(
    scene: tuple[Path, Path, dict[str, bytes]], kind: str
) -> None:
    root, job, reference = scene
    outcome = chaos.one_run(root, kind, 0, job, reference, random.Random(kind))
    assert outcome.faults >= 1, outcome
    assert not outcome.differed, outcome
    if kind == "unwritable":
        assert outcome.phase != "Succeeded" and outcome.exit_code in (1, 2), outcome
        assert "Not a directory" in outcome.reason or "not a directory" in outcome.reason, outcome
        assert not list((root / "outputs").glob(f"{kind}-0-file*/**/part-*"))
        return
    assert outcome.phase == "Succeeded" and outcome.exit_code == 0, outcome
    if kind in ("sigkill", "sigstop"):
        assert outcome.recoveries, outcome  # a task held by the victim moved on
        assert max(outcome.recoveries) < 30, outcome


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
