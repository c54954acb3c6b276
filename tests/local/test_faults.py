"""Faults during a local run: killed and frozen workers, a killed `kubemr run`.

Whatever happens to a worker, the job completes with exactly the results of a
clean run, and a task that committed is never run again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Kubemr,
    read_doc,
    results,
    running_task,
    tasks,
    unique_seconds,
    wait_for,
    worker_pids,
)


def make_inputs(root: Path, files: int) -> Path:
    data = root / "in"
    data.mkdir()
    for i in range(files):
        (data / f"part{i:02d}.txt").write_bytes(
            b"".join(b"word%d %d\n" % (j % 13, i) for j in range(120))
        )
    return data


def expected_output(data: Path) -> list[bytes]:
    lines: list[bytes] = []
    for f in sorted(data.iterdir()):
        lines.extend(f.read_bytes().splitlines(keepends=True))
    return sorted(lines)


#: Claims of one task (the local default), and of several tasks under one lease (as on a cluster).
BATCHES = pytest.mark.parametrize("batch", ["1", "4"], ids=["single", "batched"])


@BATCHES
def test_sigkill_worker_mid_task_loses_nothing(kubemr: Kubemr, batch: str) -> None:
    data = make_inputs(kubemr.tmp, 8)
    job = kubemr.job(
        "killed",
        inputs=["./in/"],
        map="sleep 1; cat",
        reduce="cat",
        partitions=2,
        splitSize="1Ki",
    )
    proc = kubemr.popen(
        "run", str(job), "-w", "2", "-o", str(kubemr.tmp / "out"), env={"KUBEMR_BATCH": batch}
    )
    run_dir = kubemr.run_dir("killed")
    index, _, pid = freeze_a_holder(run_dir)  # so it still holds the task when killed
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    got = results(kubemr.tmp / "out")
    assert sorted(got.splitlines(keepends=True)) == expected_output(data)
    doc = read_doc(run_dir)
    assert tasks(doc)[index]["a"] >= 2  # redone by another worker
    assert all(e["s"] == "d" for e in tasks(doc))


def freeze_outside_a_write(pid: int) -> None:
    """SIGSTOP `pid` at a moment it holds no exclusive file lock.

    A local run's job store is SQLite: a worker frozen inside a write
    transaction keeps its write lock and stalls every other worker until it
    continues (a known limit of local mode, not what this test is about), so
    a freeze that lands in the millisecond of a write is undone and retried.
    """
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        with open("/proc/locks") as f:
            held = [line.split() for line in f]
        if not any(len(x) > 4 and x[3] == "WRITE" and x[4] == str(pid) for x in held):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"worker {pid} held a write lock at every try")


def freeze_a_holder(run_dir: Path) -> tuple[int, dict[str, Any], int]:
    """Freeze the worker of a running map task; (task, its entry, the worker's pid). The
    task may finish between reading the job and the freeze: then the worker is let go and
    another is tried, so the frozen worker still holds the task it was frozen for."""
    for _ in range(20):
        index, entry = wait_for(lambda: running_task(run_dir), what="a running map task")
        holder = str(entry["h"])
        pid = wait_for(lambda h=holder: worker_pids(h).get(h), what="the worker's pid")
        freeze_outside_a_write(pid)
        now = tasks(read_doc(run_dir))[index]
        if now["s"] == "r" and now["h"] == entry["h"] and now["a"] == entry["a"]:
            return index, entry, pid
        os.kill(pid, signal.SIGCONT)
    raise AssertionError("no worker could be frozen while it held a task")


@BATCHES
def test_frozen_worker_whose_lease_was_taken_cannot_commit(kubemr: Kubemr, batch: str) -> None:
    make_inputs(kubemr.tmp, 4)
    job = kubemr.job("zombie", inputs=["./in/"], map="sleep 2; cat", reduce="cat", splitSize="1Ki")
    proc = kubemr.popen(
        "run", str(job), "-w", "2", "-o", str(kubemr.tmp / "out"), env={"KUBEMR_BATCH": batch}
    )
    run_dir = kubemr.run_dir("zombie")
    index, entry, pid = freeze_a_holder(run_dir)
    try:
        # Another worker takes the task over once the frozen worker's lease expires, and commits.
        def redone() -> bool:
            e = tasks(read_doc(run_dir))[index]
            return bool(e["s"] == "d" and e["a"] > entry["a"])

        wait_for(redone, what="the task to be redone by another worker")
    finally:
        os.kill(pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    doc = read_doc(run_dir)
    final = tasks(doc)[index]
    assert final["s"] == "d" and final["a"] != entry["a"]
    logs = "".join(p.read_text() for p in (run_dir / "logs").glob("worker-*.log"))
    assert re.search(r"abandoned after \d+ committed", logs) or re.search(r"of map lost", logs)


def test_killed_run_resumes_without_redoing_committed_tasks(kubemr: Kubemr) -> None:
    data = make_inputs(kubemr.tmp, 6)
    ran = kubemr.tmp / "ran.log"
    job = kubemr.job(
        "resume",
        inputs=["./in/"],
        map=f'echo "$KUBEMR_TASK" >> {ran}; sleep 0.5; cat',
        reduce="cat",
        splitSize="1Ki",
    )
    run_dir = kubemr.tmp / "rundir"
    out = str(kubemr.tmp / "out")
    proc = kubemr.popen("run", str(job), "-w", "1", "-o", out, "--run-dir", str(run_dir))

    def two_done() -> bool:
        doc = read_doc(run_dir)
        return sum(e["s"] == "d" for e in tasks(doc)) >= 2

    wait_for(two_done, what="two committed map tasks")
    proc.kill()
    proc.wait()
    # The orphaned worker notices its parent is gone and stops.
    wait_for(
        lambda: not worker_pids("w0-", under=kubemr.tmp), timeout=30, what="the worker to exit"
    )
    before = tasks(read_doc(run_dir))
    done_before = {i: e["a"] for i, e in enumerate(before) if e["s"] == "d"}
    again = kubemr("run", str(job), "-w", "2", "-o", out, "--run-dir", str(run_dir))
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr
    after = tasks(read_doc(run_dir))
    for i, attempt in done_before.items():
        assert after[i]["s"] == "d" and after[i]["a"] == attempt
    runs = ran.read_text().split()
    for i in done_before:
        assert runs.count(f"map-{i}") == 1
    assert sorted(results(Path(out)).splitlines(keepends=True)) == expected_output(data)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_stops_workers_and_commands(kubemr: Kubemr, signum: int, code: int) -> None:
    """Ctrl-C or SIGTERM: everything stops, and the exit code is the one shells report."""
    make_inputs(kubemr.tmp, 2)
    nap = unique_seconds(60)
    job = kubemr.job("ctrlc", inputs=["./in/"], map=f"sleep {nap}; cat", splitSize="1Ki")
    proc = kubemr.popen("run", str(job), "-w", "2")
    run_dir = kubemr.run_dir("ctrlc")
    wait_for(lambda: running_task(run_dir), what="a running map task")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert "resume with" in err
    assert not worker_pids(under=kubemr.tmp.parent)
    left = subprocess.run(["pgrep", "-f", f"^sleep {nap}"], capture_output=True, text=True)
    assert left.stdout.strip() == ""
    # The interrupted tasks were handed back, not counted as failures.
    doc = read_doc(run_dir)
    assert all(e["s"] == "p" and not e["f"] for e in tasks(doc))


def test_a_worker_stopped_from_outside_is_replaced(kubemr: Kubemr) -> None:
    """A worker that exits 0 without finishing (SIGTERM from a command that kills its parent)
    is replaced while the job has work, even when it is the only one."""
    make_inputs(kubemr.tmp, 3)
    marker = kubemr.tmp / "killed-once"
    job = kubemr.job(
        "stopped",
        inputs=["./in/"],
        map=f"if [ ! -e {marker} ]; then touch {marker}; kill -TERM $PPID; sleep 5; fi; cat",
        splitSize="1Ki",
    )
    done = kubemr("run", str(job), "-w", "1", "-o", str(kubemr.tmp / "out"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert marker.exists()
    assert sorted(results(kubemr.tmp / "out").splitlines(keepends=True)) == expected_output(
        kubemr.tmp / "in"
    )


def test_a_dead_workers_tasks_go_back_at_once_not_after_its_lease(kubemr: Kubemr) -> None:
    """With a 60 s lease, a SIGKILLed worker's tasks are handed back by `kubemr run` as soon
    as it sees the process gone: the job ends long before the lease would have expired."""
    make_inputs(kubemr.tmp, 4)
    job = kubemr.job("dead", inputs=["./in/"], map="sleep 1; cat", splitSize="1Ki")
    started = time.monotonic()
    proc = kubemr.popen(
        "run",
        str(job),
        "-w",
        "2",
        "-o",
        str(kubemr.tmp / "out"),
        env={"KUBEMR_LEASE_SECONDS": "60"},
    )
    run_dir = kubemr.run_dir("dead")
    _, _, pid = freeze_a_holder(run_dir)
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 40, "the tasks waited out the dead worker's lease"
    assert sorted(results(kubemr.tmp / "out").splitlines(keepends=True)) == expected_output(
        kubemr.tmp / "in"
    )


def test_a_second_run_of_a_live_run_is_refused(kubemr: Kubemr) -> None:
    """`kubemr run` of a run directory that another `kubemr run` is running takes nothing
    over: it says who runs it and exits, and the first finishes as if alone."""
    data = make_inputs(kubemr.tmp, 3)
    job = kubemr.job("twice", inputs=["./in/"], map="sleep 2; cat", splitSize="1Ki")
    first = kubemr.popen("run", str(job), "-w", "2", "-o", str(kubemr.tmp / "out"))
    run_dir = kubemr.run_dir("twice")
    wait_for(lambda: running_task(run_dir), what="a running map task")
    second = kubemr("run", str(job), "-w", "2", "-o", str(kubemr.tmp / "out"), timeout=30)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"being run by process {first.pid}" in second.stderr, second.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert sorted(results(kubemr.tmp / "out").splitlines(keepends=True)) == expected_output(data)
    doc = read_doc(run_dir)
    assert all(e["a"] == 1 for e in tasks(doc))  # nothing was taken over


@pytest.mark.parametrize("mode", ["wrapper", "sidecar"])
def test_a_killed_run_stops_its_running_commands_at_once(kubemr: Kubemr, mode: str) -> None:
    """SIGKILL of `kubemr run` while a task runs: its worker notices within a fraction of a
    second (not at its next lease renewal, up to a third of the lease later) and kills the
    command, so nothing runs on unseen."""
    nap = unique_seconds(90)
    job = kubemr.job("orphan", inputs=["opaque:x"], map=f"sleep {nap}", mode=mode)
    proc = kubemr.popen("run", str(job), "-w", "1", env={"KUBEMR_LEASE_SECONDS": "60"})
    run_dir = kubemr.run_dir("orphan")
    wait_for(lambda: running_task(run_dir), what="a running map task")
    wait_for(
        lambda: subprocess.run(["pgrep", "-f", f"^sleep {nap}"], capture_output=True).stdout,
        what="the command to start",
    )
    proc.kill()
    proc.wait()
    started = time.monotonic()
    wait_for(
        lambda: not subprocess.run(["pgrep", "-f", f"^sleep {nap}"], capture_output=True).stdout,
        timeout=15,
        what="the command to be killed",
    )
    wait_for(lambda: not worker_pids(under=kubemr.tmp.parent), timeout=15, what="the worker")
    assert time.monotonic() - started < 15
