"""A reduce task: k-way merge of every map task's sorted run -> reduce command -> part-r-NNNNN.

`sort -m` (GNU sort, bytewise) merges this partition's segment of every committed map
attempt (`kubemr.shuffle` says where they are), spilling to disk when there are more than it
merges at once, and streams straight into the reduce command's stdin through an OS pipe.
Plain files on the local disk are read where they are; the rest (ranges of objects in S3,
compressed files) stream into it through FIFOs (`kubemr.shim.feed`).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Sequence

from kubemr import layout, shuffle
from kubemr.reporter import Counters
from kubemr.shim.attempt import Attempt, Failure
from kubemr.shim.feed import Feed
from kubemr.shim.job import Job
from kubemr.shim.process import Proc, signal_group, wait_all
from kubemr.shim.results import ResultFile


def merge_inputs(
    job: Job,
    workdir: str,
    map_attempts: Sequence[int],
    partition: int,
    directory: str,
    cache: shuffle.IndexCache,
    check: Callable[[], None] = lambda: None,
    spool: shuffle.Spool | None = None,
    upto: int = 0,
) -> Feed:
    """The inputs of partition `partition`'s merge (FIFOs, if any, in `directory`); with a
    `spool`, reading ahead for partitions partition+1..upto-1 (see `shuffle.Spool`)."""
    storage = job.storage(workdir)
    codec = shuffle.codec_for(job.spec.map_output_compression, shuffle.one_object(storage, workdir))
    segments = shuffle.locate(
        storage, workdir, map_attempts, partition, job.partitions, codec, cache, check, spool, upto
    )
    return Feed(job.storage, segments, directory, spool=spool)


def merge_argv(sort_argv: list[str], feed: Feed, listing: str) -> list[str]:
    """`sort -m` over the feed's inputs (`sort` when the feed concatenates them), named
    through a NUL-separated list at `listing` (no argv length limit); `sort_argv` is the sort
    that made them, keys and all."""
    with open(listing, "wb") as f:
        f.write(b"".join(os.fsencode(r) + b"\0" for r in feed.paths))
    merge = ["-m"] if feed.merged else []
    return [*sort_argv, *merge, f"--batch-size={feed.batch}", f"--files0-from={listing}"]


def run_reduce(
    att: Attempt,
    workdir: str,
    map_attempts: Sequence[int],
    cache: shuffle.IndexCache,
    spool: shuffle.Spool | None = None,
    upto: int = 0,
) -> Counters:
    """Run one reduce attempt and store its part; returns the counters it reported. `upto`:
    this worker goes on with the partitions before it (read ahead into `spool`)."""
    job = att.job
    reduce_cmd = job.commands.reduce
    assert reduce_cmd is not None
    partition = att.task.index
    env = job.task_env(att.task, att.number, {"KUBEMR_PARTITION": str(partition)})
    fifos = os.path.join(att.root, "runs")
    feed = merge_inputs(
        job, workdir, map_attempts, partition, fifos, cache, att.watch.check, spool, upto
    )
    codec = job.spec.output_compression
    local = os.path.join(att.out, layout.result_name(att.task, codec))
    procs: list[Proc] = []
    failure = Failure()
    result = ResultFile(local, codec, failure)
    try:
        try:
            out = result.stdout
            if feed.paths:
                merger = att.proc(
                    "merge (sort -m)",
                    merge_argv(att.sort_argv(), feed, os.path.join(att.root, "runs.lst")),
                    att.sort_env(),
                    subprocess.DEVNULL,
                    subprocess.PIPE,
                )
                assert merger.popen.stdout is not None
                reducer = att.command("reduce command", reduce_cmd, env, merger.popen.stdout, out)
                merger.popen.stdout.close()
                procs = [reducer, merger]
                feed.start(lambda: signal_group(merger.popen.pid, signal.SIGKILL))
            else:
                reducer = att.command("reduce command", reduce_cmd, env, subprocess.DEVNULL, out)
                procs = [reducer]
            result.started(reducer)
        finally:
            result.close()
        try:
            wait_all(procs, att.watch, [result.thread] if result.thread else [])
        finally:
            att.log.close()
    finally:
        feed.close()
    feed.failure.raise_if_any()  # before the merge's exit status: it was killed for this
    reducer = procs[0]
    att.check(reducer, reducer.label)
    for proc in procs[1:]:
        att.check(proc, proc.label, reader=reducer)  # the merge, if the reduce stopped early
    failure.raise_if_any()
    url = layout.task_result(workdir, att.task, att.number, codec)
    job.storage(url).put_file(local, url)
    return att.log.counters
