"""The publishing task: put every committed result in place, then `_SUCCESS`.

Runs once every reduce task (or, for a map-only job, every map task) has
committed. It copies each task's committed attempt to its final name
(`part-r-NNNNN`), which is atomic per object and harmless to repeat, so a
publisher that dies half-way is simply replaced by another; sums the task
counters; and writes `_SUCCESS` last. Readers that wait for `_SUCCESS` never
see a partial or duplicate part.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubemr import layout, reporter
from kubemr.errors import NotFound
from kubemr.shim.job import Job
from kubemr.state import Task

THREADS = 8


def run_publish(
    job: Job, workdir: str, stages: Mapping[str, Sequence[Mapping[str, Any]]]
) -> tuple[list[str], reporter.Counters]:
    """Place the results of the last of `stages` (map, reduce); sum every task's counters."""
    output = job.output
    every = [
        (Task(stage, i), int(e["a"]), bool(e.get("c")))
        for stage, items in stages.items()
        for i, e in enumerate(items)
    ]
    last = list(stages)[-1]
    tasks = [t for t in every if t[0].stage == last]
    results = [layout.output_url(output, layout.result_name(t)) for t, _, _ in tasks]

    def place(item: tuple[Task, int, bool]) -> None:
        task, attempt, _ = item
        src = layout.task_result(workdir, task, attempt)
        dst = layout.output_url(output, layout.result_name(task))
        if src.split("://", 1)[0] == dst.split("://", 1)[0]:
            job.storage(dst).copy(src, dst)
        else:
            _cross_copy(job, src, dst)

    def counters(item: tuple[Task, int, bool]) -> Mapping[str, Mapping[str, int]]:
        task, attempt, has = item
        if not has:
            return {}
        url = layout.counters_url(workdir, task, attempt)
        try:
            data: Mapping[str, Mapping[str, int]] = json.loads(job.storage(url).get_bytes(url))
        except NotFound:
            return {}
        return data

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(place, tasks))
        total = reporter.total(pool.map(counters, every))
    success = layout.output_url(output, layout.SUCCESS)
    job.storage(success).put_bytes(b"", success)
    return results, total


def _cross_copy(job: Job, src: str, dst: str) -> None:
    """Copy between storages (e.g. a local workdir and an s3:// output), streaming via disk."""
    fd, path = tempfile.mkstemp(prefix="kubemr-publish-")
    os.close(fd)
    try:
        with job.storage(src).open_read(src) as f, open(path, "wb") as out:
            while chunk := f.read(1024 * 1024):
                out.write(chunk)
        job.storage(dst).put_file(path, dst)
    finally:
        if os.path.exists(path):
            os.unlink(path)
