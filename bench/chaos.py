"""Chaos runs of `kubemr run`: faults injected into real local runs, results compared byte for byte.

    .venv/bin/python bench/chaos.py [--runs 20] [--kinds sigkill,sigstop,kill-run,unwritable]
                                    [--json FILE] [--svg FILE] [--seed N]

Runs one multi-task job (word count with a combiner, 16 map tasks, 3
partitions, 3 workers, 2-second leases) once cleanly, then `--runs` times
per kind of fault, and compares every completed run's parts with the clean
run's, byte for byte. Kinds:

- sigkill    SIGKILL a random worker every 0.5-2.5 s while the job runs (up to 5 per run)
- sigstop    freeze a worker holding a task (SIGSTOP) until another worker has
             taken the task over, then let it go on (SIGCONT): it must not commit
- kill-run   SIGKILL `kubemr run` itself mid-job, then run it again on the same
             run directory: it resumes, and no committed task runs again
- unwritable the output's parent is a regular file: the job must fail with a clear
             reason, no _SUCCESS, no part file
- disk-full  the output is a 4 KiB tmpfs, one page, so the second part does not fit
             (needs mount rights; left out otherwise): the job must fail, no
             _SUCCESS, and any part left visible is whole

Recovery is the time from a fault until the task the victim held is
running again under another worker (sigkill, sigstop), or until the tasks
the killed run left are running again (kill-run, including the time its
orphaned workers take to notice and exit). Prints a table; `--json` writes
every run, `--svg` a chart of the recovery times. The same scenarios, a few
runs each, are tests/local/test_chaos.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubemr import state

LEASE_SECONDS = "2"
WORKERS = 3
KINDS = ("sigkill", "sigstop", "kill-run", "unwritable", "disk-full")
MAX_KILLS = 5  # `kubemr run` restarts dead workers 3 x workers times before it gives up

MAP = """#!/bin/sh
sleep "${SLEEP:-0}"
tr -cs 'A-Za-z' '\\n' | awk 'NF { print tolower($0) "\\t1" }'
"""
REDUCE = """#!/bin/sh
awk -F '\\t' '$1 != w { if (NR > 1) print w "\\t" s; w = $1; s = 0 } { s += $2 }
  END { if (NR) print w "\\t" s }'
"""
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
    "boxing",
    "matches",
    "and",
    "a",
    "sphinx",
    "of",
    "black",
    "quartz",
    "judges",
    "my",
    "vow",
]


@dataclass
class Outcome:
    """One run: what was injected, how it ended, and whether its results matched."""

    kind: str
    run: int
    exit_code: int
    phase: str
    faults: int
    differed: bool
    expected_failure: bool
    reason: str = ""
    recoveries: list[float] = field(default_factory=list)
    seconds: float = 0.0
    parts: int = 0  # part files visible in the output when the run ended

    @property
    def ok(self) -> bool:
        if self.expected_failure:
            return self.phase != "Succeeded" and not self.differed
        return self.phase == "Succeeded" and not self.differed


def make_corpus(root: Path, files: int = 16, lines: int = 400, seed: int = 7) -> Path:
    rng = random.Random(seed)
    data = root / "corpus"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        text = "\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(lines)) + "\n"
        (data / f"part{i:02d}.txt").write_text(text)
    return data


def write_job(root: Path, name: str, corpus: Path, sleep: float) -> Path:
    doc = {
        "apiVersion": "kubemr.io/v1alpha1",
        "kind": "MapReduceJob",
        "metadata": {"name": name},
        "spec": {
            "inputs": [str(corpus) + "/"],
            "map": "./map.sh",
            "combine": "./reduce.sh",
            "reduce": "SLEEP=0 ./reduce.sh",
            "partitions": 3,
            "files": {"map.sh": MAP, "reduce.sh": REDUCE},
            "env": {"SLEEP": str(sleep)},
            "splitSize": "32Ki",
            "maxAttempts": 4,
        },
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Runner:
    """Starts `kubemr run` in a private KUBEMR_HOME and looks at its job document."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
        self.env.update(
            KUBEMR_HOME=str(root / "home"),
            KUBEMR_LEASE_SECONDS=LEASE_SECONDS,
            KUBEMR_POLL_SECONDS="0.1",
        )

    def start(self, job: Path, run_dir: Path, output: Path) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "kubemr", "run", str(job), "-q", "-w", str(WORKERS)]
        argv += ["--run-dir", str(run_dir), "-o", str(output)]
        return subprocess.Popen(
            argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.root
        )


def read_doc(run_dir: Path) -> dict[str, Any]:
    db = sqlite3.connect(run_dir / "job.db", timeout=10)
    try:
        row = db.execute("SELECT doc FROM job WHERE id = 1").fetchone()
    finally:
        db.close()
    doc: dict[str, Any] = json.loads(row[0])
    return doc


def try_doc(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_doc(run_dir)
    except (sqlite3.Error, OSError, TypeError):
        return None


def workers(run_dir: Path) -> dict[str, int]:
    """Live `kubemr shim` processes of this run directory, by worker id."""
    store = f"KUBEMR_STORE=sqlite://{run_dir}/job.db".encode()
    out: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if store not in environ or state == "Z":
            continue
        for item in environ:
            if item.startswith(b"KUBEMR_WORKER_ID="):
                out[item.split(b"=", 1)[1].decode()] = int(entry)
    return out


def held(doc: dict[str, Any] | None) -> dict[str, tuple[str, int]]:
    """Unfinished claims by holder: the task it runs (or is about to) and its attempt."""
    out: dict[str, tuple[str, int]] = {}
    for stage in ("map", "reduce"):
        st = state.stage_of(doc or {}, stage)
        for holder, claim in st.running() if st is not None else ():
            first = int(claim["d"])
            out[holder] = (f"{stage}-{first}", st.attempt_of(first))
    return out


def entry(doc: dict[str, Any] | None, task: str) -> dict[str, Any]:
    """A task as {"s": "d" (committed) or "p", "a": its latest attempt}; {} if none."""
    stage, _, index = task.partition("-")
    st = state.stage_of(doc or {}, stage)
    i = int(index)
    if st is None or i >= st.n:
        return {}
    return {"s": "d" if i in st.committed() else "p", "a": st.attempt_of(i)}


def moved_on(run_dir: Path, task: str, attempt: int) -> bool:
    """Whether `task` is running again under a later attempt than `attempt`, or is done."""
    e = entry(try_doc(run_dir), task)
    return int(e.get("a", 0)) > attempt or e.get("s") == "d"


def wait(predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def parts(output: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(output.glob("part-*"))}


def finish(
    proc: subprocess.Popen[bytes], timeout: float = 300
) -> tuple[int, str]:  # exit code, the first line of stderr
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return -1, "timed out"
    lines = err.decode(errors="replace").strip().splitlines()
    return proc.returncode, lines[0] if lines else ""


def pick_victim(run_dir: Path, rng: random.Random) -> tuple[str, int, tuple[str, int] | None]:
    """A live worker, preferably one holding a task."""
    live = workers(run_dir)
    holding = held(try_doc(run_dir))
    busy = [w for w in live if w in holding]
    wid = rng.choice(busy or list(live))
    return wid, live[wid], holding.get(wid)


# ---- the faults ---------------------------------------------------------------


def fault_sigkill(runner: Runner, job: Path, run_dir: Path, out: Path, rng: random.Random) -> Any:
    proc = runner.start(job, run_dir, out)
    faults, recoveries = 0, []
    wait(lambda: bool(held(try_doc(run_dir))), 60)
    while proc.poll() is None and faults < MAX_KILLS:
        time.sleep(rng.uniform(0.5, 2.5))
        if proc.poll() is not None or not workers(run_dir):
            break
        _, pid, task = pick_victim(run_dir, rng)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        faults += 1
        if task and wait(lambda t=task: moved_on(run_dir, *t), 60):
            recoveries.append(time.monotonic() - t0)
    return proc, faults, recoveries


def fault_sigstop(runner: Runner, job: Path, run_dir: Path, out: Path, rng: random.Random) -> Any:
    proc = runner.start(job, run_dir, out)
    faults, recoveries = 0, []
    if wait(lambda: bool(held(try_doc(run_dir))), 60):
        _, pid, task = pick_victim(run_dir, rng)
        if task is not None:
            t0 = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            faults += 1
            try:
                if wait(lambda: moved_on(run_dir, *task), 60):
                    recoveries.append(time.monotonic() - t0)
            finally:
                os.kill(pid, signal.SIGCONT)
    return proc, faults, recoveries


def fault_kill_run(runner: Runner, job: Path, run_dir: Path, out: Path, rng: random.Random) -> Any:
    proc = runner.start(job, run_dir, out)
    target = rng.randint(1, 10)
    wait(
        lambda: sum(e.get("s") == "d" for e in entry_list(try_doc(run_dir))) >= target,
        60,
    )
    left = held(try_doc(run_dir))
    t0 = time.monotonic()
    proc.kill()
    proc.wait()
    wait(lambda: not workers(run_dir), 60)  # orphaned workers notice and stop
    again = runner.start(job, run_dir, out)
    recoveries = []
    if left and wait(lambda: all(moved_on(run_dir, *t) for t in left.values()), 60):
        recoveries.append(time.monotonic() - t0)
    return again, 1, recoveries


def entry_list(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    st = state.stage_of(doc or {}, "map")
    return [entry(doc, f"map-{i}") for i in range(st.n)] if st is not None else []


def fault_unwritable(
    runner: Runner, job: Path, run_dir: Path, out: Path, rng: random.Random
) -> Any:
    blocker = out.parent / f"{out.name}-file"
    blocker.write_text("a regular file where the output's parent directory should be\n")
    proc = runner.start(job, run_dir, blocker / "out")
    return proc, 1, []


def fault_disk_full(runner: Runner, job: Path, run_dir: Path, out: Path, rng: random.Random) -> Any:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(out)], check=True)
    proc = runner.start(job, run_dir, out)
    return proc, 1, []


FAULTS = {
    "sigkill": fault_sigkill,
    "sigstop": fault_sigstop,
    "kill-run": fault_kill_run,
    "unwritable": fault_unwritable,
    "disk-full": fault_disk_full,
}
EXPECTED_FAILURE = ("unwritable", "disk-full")


def can_mount_tmpfs(root: Path) -> bool:
    probe = root / "mount-probe"
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(probe)], capture_output=True
    )
    if ok.returncode == 0:
        subprocess.run(["umount", str(probe)], check=True)
        return True
    return False


def one_run(
    root: Path, kind: str, n: int, job: Path, reference: dict[str, bytes], rng: random.Random
) -> Outcome:
    runner = Runner(root)
    run_dir = root / "runs" / f"{kind}-{n}"
    out = root / "outputs" / f"{kind}-{n}"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc, faults, recoveries = FAULTS[kind](runner, job, run_dir, out, rng)
    try:
        code, first = finish(proc)
    finally:
        if kind == "disk-full":
            wait(lambda: not workers(run_dir), 30)
    doc = try_doc(run_dir) or {}
    phase = str((doc.get("status") or {}).get("phase") or f"not started (exit code {code})")
    message = str((doc.get("status") or {}).get("message") or first)
    final_out = out if kind != "unwritable" else out.parent / f"{out.name}-file" / "out"
    visible = parts(final_out) if final_out.is_dir() else {}
    if phase == "Succeeded":
        differed = visible != reference
    else:
        # A failed job may leave whole parts behind (never _SUCCESS); none may be partial.
        differed = (final_out / "_SUCCESS").exists() or any(
            reference.get(name) != data for name, data in visible.items()
        )
    if kind == "disk-full":
        subprocess.run(["umount", str(out)], check=False)
    return Outcome(
        kind=kind,
        run=n,
        exit_code=code,
        phase=phase,
        faults=faults,
        differed=differed,
        expected_failure=kind in EXPECTED_FAILURE,
        reason="" if phase == "Succeeded" else message,
        recoveries=[round(r, 2) for r in recoveries],
        seconds=round(time.monotonic() - started, 1),
        parts=len(visible),
    )


def clean_reference(root: Path, job: Path) -> tuple[dict[str, bytes], float]:
    runner = Runner(root)
    out = root / "outputs" / "clean"
    started = time.monotonic()
    code, first = finish(runner.start(job, root / "runs" / "clean", out))
    if code != 0:
        raise SystemExit(f"the clean run failed: {first}")
    return parts(out), time.monotonic() - started


def table(outcomes: list[Outcome], clean_seconds: float) -> str:
    rows = [
        "| fault | runs | faults injected | completed | results differed | ended Failed "
        "| recovery s (median / max) | run s (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in dict.fromkeys(o.kind for o in outcomes):
        mine = [o for o in outcomes if o.kind == kind]
        rec = [r for o in mine for r in o.recoveries]
        rec_text = f"{statistics.median(rec):.1f} / {max(rec):.1f}" if rec else "-"
        rows.append(
            f"| {kind} | {len(mine)} | {sum(o.faults for o in mine)} "
            f"| {sum(o.phase == 'Succeeded' for o in mine)} | {sum(o.differed for o in mine)} "
            f"| {sum(o.phase == 'Failed' for o in mine)} | {rec_text} "
            f"| {statistics.median(o.seconds for o in mine):.1f} |"
        )
    rows.append(f"\nclean run: {clean_seconds:.1f} s")
    return "\n".join(rows)


def failure_reasons(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        if o.phase != "Succeeded":
            lines.append(f"- {o.kind} #{o.run} ({o.phase}): {o.reason[:300]}")
    return "\n".join(lines)


def svg(outcomes: list[Outcome], path: Path) -> None:
    """A strip chart of every recovery time, one row per kind of fault (no dependencies)."""
    kinds = [k for k in dict.fromkeys(o.kind for o in outcomes) if any(
        o.recoveries for o in outcomes if o.kind == k)]  # fmt: skip
    top = max([r for o in outcomes for r in o.recoveries] + [1.0])
    width, left, row = 640, 90, 40
    height = 50 + row * len(kinds)
    scale = (width - left - 20) / top
    parts_ = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="{left}" y="16">time from fault to recovery (s), each dot one fault</text>',
    ]
    for i, kind in enumerate(kinds):
        y = 40 + i * row
        parts_.append(f'<text x="4" y="{y + 4}">{kind}</text>')
        parts_.append(f'<line x1="{left}" y1="{y}" x2="{width - 20}" y2="{y}" stroke="#ddd"/>')
        for o in outcomes:
            if o.kind == kind:
                for r in o.recoveries:
                    x = left + r * scale
                    parts_.append(
                        f'<circle cx="{x:.1f}" cy="{y}" r="4" fill="#4a7fc4" fill-opacity="0.5"/>'
                    )
    axis_y = height - 10
    for tick in range(0, int(top) + 1, max(1, int(top) // 8 or 1)):
        x = left + tick * scale
        parts_.append(f'<text x="{x:.1f}" y="{axis_y}" text-anchor="middle">{tick}</text>')
    parts_.append("</svg>")
    path.write_text("\n".join(parts_) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per kind of fault")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated fault kinds")
    parser.add_argument("--sleep", type=float, default=1.5, help="seconds each map task sleeps")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="write every run as JSON")
    parser.add_argument("--svg", metavar="FILE", help="write a chart of the recovery times")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="kubemr-chaos-"))
    try:
        if "disk-full" in kinds and not can_mount_tmpfs(root):
            print("disk-full needs the right to mount a tmpfs; left out", file=sys.stderr)
            kinds.remove("disk-full")
        corpus = make_corpus(root)
        job = write_job(root, "chaos", corpus, args.sleep)
        reference, clean_seconds = clean_reference(root, job)
        outcomes: list[Outcome] = []
        for kind in kinds:
            for n in range(args.runs):
                o = one_run(root, kind, n, job, reference, rng)
                outcomes.append(o)
                mark = "ok" if o.ok else "UNEXPECTED"
                print(
                    f"{kind:10} #{n:<3} {o.phase:10} faults={o.faults} differed={o.differed} "
                    f"recovery={o.recoveries} {o.seconds:.1f}s {mark}",
                    file=sys.stderr,
                    flush=True,
                )
        print(table(outcomes, clean_seconds))
        reasons = failure_reasons(outcomes)
        if reasons:
            print("\nruns that ended Failed:\n" + reasons)
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "clean_seconds": clean_seconds,
                        "clean_parts": {name: len(data) for name, data in reference.items()},
                        "runs": [asdict(o) for o in outcomes],
                    },
                    indent=1,
                )
            )
        if args.svg:
            svg(outcomes, Path(args.svg))
        return 0 if all(o.ok for o in outcomes) else 1
    finally:
        if args.keep:
            print(f"scratch kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
