"""A reduce task: k-way merge of every map task's sorted run -> reduce command -> part-r-NNNNN.

`sort -m` (GNU sort, bytewise) merges the runs, spilling to disk when there
are more than it can open at once, and streams straight into the reduce
command's stdin through an OS pipe. Runs on the local disk are read where
they are; runs in remote storage are first fetched to scratch, several at a
time, streaming to disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from kubemr import layout
from kubemr.reporter import Counters
from kubemr.shim.attempt import Attempt
from kubemr.shim.job import Job
from kubemr.shim.process import Proc, wait_all
from kubemr.state import Task
from kubemr.storage.base import Storage

FETCH_THREADS = 8


def run_urls(workdir: str, map_attempts: Sequence[int], partition: int) -> list[str]:
    """The committed sorted run of every map task for `partition`, in map task order
    (`map_attempts`: the committed attempt of each map task)."""
    return [
        layout.map_run(workdir, Task("map", i), attempt, partition)
        for i, attempt in enumerate(map_attempts)
    ]


def fetch_runs(
    job: Job, urls: list[str], fetch_dir: str, check: Callable[[], None] = lambda: None
) -> list[str]:
    """Local paths of the runs: those on this disk as they are, the others fetched into
    `fetch_dir` (in parallel, calling `check` before each, so a stopped task stops)."""
    paths: list[str | None] = [job.storage(u).local_path(u) for u in urls]
    missing = [i for i, p in enumerate(paths) if p is None]
    if missing:
        os.makedirs(fetch_dir, exist_ok=True)

        def fetch(i: int) -> None:
            check()
            target = os.path.join(fetch_dir, f"{i:06d}")
            fetch_to(job.storage(urls[i]), urls[i], target)
            paths[i] = target

        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            list(pool.map(fetch, missing))
    return [p for p in paths if p is not None]


def fetch_to(storage: Storage, url: str, path: str) -> None:
    with storage.open_read(url) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)


def merge_argv(sort_argv: list[str], runs: list[str], listing: str) -> list[str]:
    """`sort -m` over the runs, named through a NUL-separated list at `listing` (no argv
    length limit); `sort_argv` is the sort that made them, keys and all."""
    with open(listing, "wb") as f:
        f.write(b"".join(os.fsencode(r) + b"\0" for r in runs))
    return [*sort_argv, "-m", f"--files0-from={listing}"]


def run_reduce(att: Attempt, workdir: str, map_attempts: Sequence[int]) -> Counters:
    """Run one reduce attempt and store its part; returns the counters it reported."""
    job = att.job
    reduce_cmd = job.commands.reduce
    assert reduce_cmd is not None
    partition = att.task.index
    env = job.task_env(att.task, att.number, {"KUBEMR_PARTITION": str(partition)})
    urls = run_urls(workdir, map_attempts, partition)
    runs = fetch_runs(job, urls, os.path.join(att.root, "runs"), att.watch.check)
    local = os.path.join(att.out, layout.result_name(att.task))
    procs: list[Proc] = []
    with open(local, "wb") as out:
        if runs:
            merger = att.proc(
                "merge (sort -m)",
                merge_argv(att.sort_argv(), runs, os.path.join(att.root, "runs.lst")),
                att.sort_env(),
                subprocess.DEVNULL,
                subprocess.PIPE,
            )
            assert merger.popen.stdout is not None
            reducer = att.command("reduce command", reduce_cmd, env, merger.popen.stdout, out)
            merger.popen.stdout.close()
            procs = [reducer, merger]
        else:
            reducer = att.command("reduce command", reduce_cmd, env, subprocess.DEVNULL, out)
            procs = [reducer]
    try:
        wait_all(procs, att.watch)
    finally:
        att.log.close()
    reducer = procs[0]
    att.check(reducer, reducer.label)
    for proc in procs[1:]:
        att.check(proc, proc.label, reader=reducer)  # the merge, if the reduce stopped early
    url = layout.task_result(workdir, att.task, att.number)
    job.storage(url).put_file(local, url)
    return att.log.counters
