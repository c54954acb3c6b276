"""Scheduling efficiency of `kubemr run`: many short tasks that only sleep.

    .venv/bin/python bench/scheduling.py [--tasks 64] [--sleep 0.25] [--workers 1,2,4,8]
                                         [--mode wrapper|sidecar]

A map-only job whose inputs are opaque strings (`opaque:task-0` ... `task-63`, one
map task each) and whose map command is `sleep 0.25` does no work, so every
millisecond beyond `tasks * sleep / workers` is kubemr's: starting workers,
claiming tasks, starting the command, noticing it ended, committing, and
noticing that the job ended. For each worker count the table shows

- the whole run: wall time of `kubemr run` (worker start-up and shutdown
  included) and its efficiency, ideal / measured;
- the map phase, from the first map task's start to the last map task's
  commit, read from the workers' logs, and its efficiency;
- per-task overhead in milliseconds, from the same logs: `claim` is the time
  from the end of a worker's previous task (or its plan commit) to the start
  of its next (the next task of its claim, or reading the job, deciding and
  the claim patch), `run+commit` is a task's start-to-finish time minus the
  sleep (scratch directory, starting the command, noticing its exit, storing
  its output). A claim of several tasks is committed with its holder's lease
  renewals and at its end, which the claim figure includes.

With more workers than CPUs the workers compete for the CPUs, so overhead
that costs CPU time shows up in every worker's latency.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<worker>\S+) \w+ "
    r"(?P<task>\S+) attempt \d+ (?P<what>started|finished|committed)"
)


@dataclass(frozen=True)
class Outcome:
    """One run of the job with one worker count."""

    workers: int
    wall: float
    map_phase: float
    claim_ms: float
    run_ms: float
    tasks: int


def parse_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def read_logs(logs: Path, sleep: float) -> tuple[float, float, float, int]:
    """(map phase seconds, mean claim ms, mean run+commit overhead ms, map tasks) from logs."""
    starts: dict[str, float] = {}
    commits: dict[str, float] = {}
    claims: list[float] = []
    for path in sorted(logs.glob("*.log")):
        last: dict[str, float] = {}  # worker -> its last commit (a log is in time order)
        for line in path.read_text(errors="replace").splitlines():
            m = LINE.match(line)
            if not m:
                continue
            ts, worker, task = parse_time(m["ts"]), m["worker"], m["task"]
            if m["what"] in ("finished", "committed"):
                commits[task] = ts
                last[worker] = ts
                continue
            starts[task] = ts
            if task.startswith("map-") and worker in last:
                claims.append(ts - last[worker])
    maps = [t for t in commits if t.startswith("map-") and t in starts]
    if not maps:
        raise SystemExit(f"no committed map tasks in the logs under {logs}")
    phase = max(commits[t] for t in maps) - min(starts[t] for t in maps)
    runs = [commits[t] - starts[t] - sleep for t in maps]
    claim_ms = 1000 * statistics.mean(claims) if claims else float("nan")
    return phase, claim_ms, 1000 * statistics.mean(runs), len(maps)


def job_manifest(path: Path, tasks: int, sleep: float, mode: str = "wrapper") -> None:
    spec = {
        "inputs": [f"opaque:task-{i}" for i in range(tasks)],
        "map": f"sleep {sleep:g}",
        "mode": mode,
    }
    manifest = {
        "apiVersion": "kubemr.io/v1alpha1",
        "kind": "MapReduceJob",
        "metadata": {"generateName": "bench-sched-"},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(manifest))


def run_once(work: Path, job: Path, workers: int, sleep: float, rep: int) -> Outcome:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
    env["KUBEMR_HOME"] = str(work / "home")
    run_dir = work / "home" / f"run-{workers}-{rep}"
    argv = [sys.executable, "-m", "kubemr", "run", str(job), "-w", str(workers), "-q"]
    argv += ["--run-dir", str(run_dir), "-o", str(work / f"out-{workers}-{rep}")]
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"kubemr run -w {workers} failed:\n{done.stderr[-3000:]}")
    phase, claim_ms, run_ms, tasks = read_logs(run_dir / "logs", sleep)
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(work / f"out-{workers}-{rep}", ignore_errors=True)
    return Outcome(workers, wall, phase, claim_ms, run_ms, tasks)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64, help="map tasks (default 64)")
    parser.add_argument("--sleep", type=float, default=0.25, help="seconds per task (0.25)")
    parser.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2, 4, 8],
        help="worker counts, comma-separated (default 1,2,4,8)",
    )
    parser.add_argument("--reps", type=int, default=3, help="runs per worker count (median)")
    parser.add_argument(
        "--mode",
        choices=("wrapper", "sidecar"),
        default="wrapper",
        help="spec.mode: sidecar hands every command to an executor (default wrapper)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kubemr-bench-sched-"))
    try:
        job = work / "sleep.yaml"
        job_manifest(job, args.tasks, args.sleep, args.mode)
        print(
            f"{args.tasks} map tasks of `sleep {args.sleep:g}`, {args.mode} mode, "
            f"{args.reps} rep(s); "
            f"{os.cpu_count()} CPU(s); load average {load()}",
            flush=True,
        )
        outcomes: dict[int, list[Outcome]] = {}
        for rep in range(args.reps):
            for workers in args.workers:
                o = run_once(work, job, workers, args.sleep, rep)
                outcomes.setdefault(workers, []).append(o)
                print(
                    f"  rep {rep + 1} workers {workers}: {o.wall:.2f}s run, {o.map_phase:.2f}s "
                    f"map phase, claim {o.claim_ms:.1f} ms, run+commit {o.run_ms:.1f} ms",
                    flush=True,
                )
        print(f"load average after: {load()}\n")
        head = (
            f"{'workers':>7}{'ideal s':>9}{'run s':>8}{'run eff':>9}{'map s':>8}{'map eff':>9}"
            f"{'claim ms':>10}{'run+commit ms':>15}{'overhead ms':>13}"
        )
        print(head)
        print("-" * len(head))
        for workers, runs in outcomes.items():
            ideal = args.tasks * args.sleep / workers
            wall = statistics.median(o.wall for o in runs)
            phase = statistics.median(o.map_phase for o in runs)
            claim = statistics.median(o.claim_ms for o in runs)
            run_ms = statistics.median(o.run_ms for o in runs)
            print(
                f"{workers:>7}{ideal:>9.2f}{wall:>8.2f}{ideal / wall:>9.0%}{phase:>8.2f}"
                f"{ideal / phase:>9.0%}{claim:>10.1f}{run_ms:>15.1f}{claim + run_ms:>13.1f}"
            )
        print(
            "\nrun eff: ideal / whole `kubemr run`; map eff: ideal / map phase (first start to "
            "last commit);\noverhead ms = claim + run+commit, per task, from the worker logs."
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
