"""The publishing task: put every committed result in place, and list them if there are many.

Runs once every reduce task (or, for a map-only job, every map task) has
committed. It copies each task's committed attempt to its final name
(`part-r-NNNNN`), which is atomic per object and harmless to repeat, so a
publisher that dies half-way is simply replaced by another. A job with more
results than the job document lists gets a manifest, `_RESULTS`, one URL a
line. `_SUCCESS` is not written here: it follows the commit that makes the
job Succeeded (see `kubemr.state.commit_publish`), so a job that fails while
publishing never shows it. Readers that wait for `_SUCCESS` never see a
partial or duplicate part.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubemr import layout, state
from kubemr.shim.job import Job
from kubemr.state import Task

THREADS = 16


def run_publish(job: Job, workdir: str, doc: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """Place the results of the job's last stage; (their URLs, the manifest if written)."""
    output = job.output
    last = "reduce" if int(state.status_of(doc).get("partitions", 0) or 0) else "map"
    tasks = [(Task(last, i), a) for i, a in enumerate(state.attempts_of(doc, last))]
    codec = job.spec.output_compression
    results = [layout.output_url(output, layout.result_name(t, codec)) for t, _ in tasks]

    def place(item: tuple[Task, int]) -> None:
        task, attempt = item
        src = layout.task_result(workdir, task, attempt, codec)
        dst = layout.output_url(output, layout.result_name(task, codec))
        if src.split("://", 1)[0] == dst.split("://", 1)[0]:
            job.storage(dst).copy(src, dst)
        else:
            _cross_copy(job, src, dst)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(place, tasks))
    if len(results) <= state.MAX_LISTED_RESULTS:
        return results, None
    manifest = layout.output_url(output, layout.RESULTS)
    job.storage(manifest).put_bytes("".join(f"{url}\n" for url in results).encode(), manifest)
    return results, manifest


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
