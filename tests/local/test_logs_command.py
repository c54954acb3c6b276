"""`kubemr logs --task` on tasks that have no stored log yet: one that is still running shows
what it wrote so far, and a task that never ran (or does not exist) is explained, not
reported as one that "has no task"."""

from __future__ import annotations

import subprocess
import time

from conftest import Kubemr


def test_a_running_task_shows_its_stderr_so_far(kubemr: Kubemr) -> None:
    (kubemr.tmp / "in.txt").write_text("a\n")
    gate = kubemr.tmp / "gate"
    job = kubemr.job(
        "live",
        inputs=["./in.txt"],
        map=f"echo halfway there >&2; while [ ! -e {gate} ]; do sleep 0.05; done; cat",
    )
    run = subprocess.Popen(
        kubemr.argv("run", str(job), "-q", "-o", str(kubemr.tmp / "out")),
        env=kubemr.environ(None),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            logs = kubemr("logs", "live", "--task", "map-0")
            if "halfway there" in logs.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout == "halfway there\n"
        assert "map-0 attempt 1 is still running: its stderr so far" in logs.stderr
    finally:
        gate.touch()
        assert run.wait(60) == 0
    done = kubemr("logs", "live", "--task", "map-0")
    assert done.stdout == "halfway there\n" and "still running" not in done.stderr


def test_tasks_that_never_ran_or_do_not_exist_are_explained(kubemr: Kubemr) -> None:
    (kubemr.tmp / "in.txt").write_text("a\n")
    failed = kubemr.job("fails", inputs=["./in.txt"], map="exit 3", reduce="cat", maxAttempts=1)
    assert kubemr("run", str(failed), "-q", "-o", str(kubemr.tmp / "o1")).returncode == 1
    maponly = kubemr.job("maponly", inputs=["./in.txt"], map="cat")
    assert kubemr("run", str(maponly), "-q", "-o", str(kubemr.tmp / "o2")).returncode == 0
    cases = {
        ("fails", "reduce-0"): "reduce-0 never ran: fails failed before its reduce stage began.",
        ("fails", "map-3"): "fails has no task map-3: its only map task is map-0.",
        ("maponly", "reduce-0"): "maponly is map-only: it has no reduce tasks.",
    }
    for (name, task), said in cases.items():
        proc = kubemr("logs", name, "--task", task)
        assert proc.returncode != 0 and said in proc.stderr, (name, task, proc.stderr)
        assert "Traceback" not in proc.stderr
