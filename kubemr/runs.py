"""Local runs kept on this machine: `kubemr runs` lists them, `kubemr delete` removes them.

Every `kubemr run` keeps a run directory in $KUBEMR_HOME/runs (its job
document, logs, plan and, by default, its output), so that it can be
resumed, inspected and replayed. Nothing removes a finished run by itself:
these two commands are how a user sees what is kept and frees the space,
as `docker ps -a` and `docker rm` are for containers. A run that a process
is running (it holds `run.lock`) is never deleted.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubemr import state
from kubemr.errors import KubemrError, RunError, UsageError
from kubemr.store.sqlite import SqliteStore


def runs_home(env: Mapping[str, str] | None = None) -> str:
    """Where runs live: $KUBEMR_HOME/runs, else $XDG_STATE_HOME/kubemr/runs."""
    env = os.environ if env is None else env
    if env.get("KUBEMR_HOME"):
        return os.path.join(env["KUBEMR_HOME"], "runs")
    state_home = env.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state_home, "kubemr", "runs")


def find_run(name_or_dir: str) -> str:
    """The run directory for a run name or a path; raises RunError if there is none."""
    candidates = [name_or_dir, os.path.join(runs_home(), name_or_dir)]
    for path in candidates:
        if os.path.isfile(os.path.join(path, "job.db")):
            return os.path.abspath(path)
    raise RunError(
        f"no local run named {name_or_dir!r} (looked in {runs_home()}); give a run name or the "
        "run directory that `kubemr run` printed."
    )


def lock_run(run_dir: str) -> int:
    """Hold `<run dir>/run.lock` for as long as this process runs the job (the lock goes with
    the process, however it ends); returns the file descriptor. Raises RunError naming the
    process that holds it, so that a second `kubemr run` never takes over live tasks."""
    path = os.path.join(run_dir, "run.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunError(f"cannot open {path}: {exc.strerror or exc}.") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunError(
            f"{run_dir} is being run by process {holder}; wait for it to end, or stop it "
            f"(Ctrl-C in its terminal, or kill {holder}) and run this again to resume."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


@dataclass(frozen=True)
class RunInfo:
    """What `kubemr runs` shows of one run directory."""

    name: str
    path: str
    phase: str
    created: float | None
    size: int
    holder: str | None  # the process running it, if one does
    output: str | None


def lock_holder(run_dir: str) -> str | None:
    """The pid of the process that holds `run.lock` (is running the job), or None; read from
    /proc/locks, so that looking never takes the lock from a run that is starting."""
    try:
        inode = os.stat(os.path.join(run_dir, "run.lock")).st_ino
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
            return fields[4]
    return None


def disk_usage(path: str) -> int:
    """Bytes the files under `path` take on disk (as `du -s`), not following links."""
    total = 0
    for directory, _dirs, files in os.walk(path):
        for name in [*files, "."]:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except OSError:
                pass
    return total


def read_doc(run_dir: str) -> dict[str, Any]:
    """The job document of the run in `run_dir` (its `job.db`)."""
    store = SqliteStore(os.path.join(run_dir, "job.db"))
    try:
        return store.get()
    finally:
        store.close()


def read_run(path: str) -> RunInfo:
    """A run directory's name, phase, age and size; a run whose document cannot be read is
    listed as Unreadable (it can still be deleted)."""
    name, phase, created, output = os.path.basename(path), "Unreadable", None, None
    try:
        doc = read_doc(path)
        name = str(doc["metadata"]["name"])
        phase = state.phase_of(doc) or "Pending"
        created = state.parse_iso(doc["metadata"].get("creationTimestamp"))
        output = doc.get("spec", {}).get("output")
    except (KubemrError, KeyError, TypeError, OSError):
        pass
    return RunInfo(name, path, phase, created, disk_usage(path), lock_holder(path), output)


def all_runs() -> list[RunInfo]:
    """Every run in the runs directory, oldest first."""
    home = os.path.abspath(runs_home())  # as find_run gives them, so the two compare
    try:
        names = sorted(os.listdir(home))
    except FileNotFoundError:
        return []
    found = [
        read_run(os.path.join(home, n))
        for n in names
        if os.path.isfile(os.path.join(home, n, "job.db"))
    ]
    return sorted(found, key=lambda r: (r.created or 0.0, r.name))


def shown_phase(run: RunInfo) -> str:
    if run.phase in state.TERMINAL or run.phase == "Unreadable":
        return run.phase
    return run.phase if run.holder else f"{run.phase}, stopped"


def cmd_runs(args: argparse.Namespace) -> int:
    runs = all_runs()
    if not runs:
        print(f"no local runs in {runs_home()}", file=sys.stderr)
        return 0
    now = time.time()
    rows = [("NAME", "PHASE", "AGE", "SIZE")]
    rows += [
        (r.name, shown_phase(r), age(now - r.created) if r.created else "?", size(r.size))
        for r in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("   ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[3]]))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    if not args.runs and not args.finished:
        raise UsageError(
            "name the runs to delete, or give --finished to delete every finished run."
        )
    targets = [find_run(name) for name in args.runs]
    if args.finished:
        targets += [r.path for r in all_runs() if r.phase in state.TERMINAL]
    seen: set[str] = set()
    for path in targets:
        if path in seen:
            continue
        seen.add(path)
        run = read_run(path)
        if run.holder:
            raise RunError(
                f"{run.name} is running (process {run.holder}); stop it first (Ctrl-C in its "
                f"terminal, or kill {run.holder}), then delete it."
            )
        fd = lock_run(path)  # held while deleting, so that no run starts in it meanwhile
        try:
            shutil.rmtree(path)
        finally:
            os.close(fd)
        kept = ""
        if run.output and not run.output.startswith("file://" + path.rstrip("/") + "/"):
            kept = f"; its output stays in {run.output}"
        print(f"deleted {run.name} ({size(run.size)}){kept}")
    if not seen:
        print("no finished runs to delete", file=sys.stderr)
    return 0


def age(seconds: float) -> str:
    """As kubectl shows ages: 45s, 12m, 5h, 3d."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 2 * 3600:
        return f"{s // 60}m"
    if s < 48 * 3600:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
