"""A map task: split -> map command -> partition -> sort -> combine -> sorted runs.

The data never sits whole in Python. A thread streams the split into the map
command's stdin. Its stdout goes straight to the output file (map-only), or
through an OS pipe into one `sort` (one partition), or through the
partitioner thread into one `sort` per partition. Each sort's output goes
through the combiner, if any, into a file; the files are then stored under
this attempt's own names.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable
from typing import IO

from kubemr import layout
from kubemr.errors import TaskFailed
from kubemr.partition import distribute
from kubemr.plan import Split, read_split
from kubemr.shim.attempt import Attempt, Failure
from kubemr.shim.process import Proc, shell, wait_all
from kubemr.storage.base import Storage


def feed(
    split: Split, storage_for: Callable[[str], Storage], sink: IO[bytes], failure: Failure
) -> None:
    """Stream the split into the command's stdin; a command may stop reading early."""
    try:
        for chunk in read_split(split, storage_for):
            sink.write(chunk)
    except BrokenPipeError:
        pass
    except BaseException as exc:  # reported by the main thread
        failure.record(exc)
    finally:
        try:
            sink.close()
        except BrokenPipeError:
            pass


def run_map(att: Attempt, split: Split, workdir: str) -> bool:
    """Run one map attempt and store its outputs; returns whether it reported counters."""
    job = att.job
    env = job.task_env(att.task, att.number, {"KUBEMR_INPUT": split.input_env()})
    partitions = job.partitions
    failure = Failure()
    procs: list[Proc] = []
    threads: list[threading.Thread] = []
    outputs: list[tuple[str, str]] = []  # (local file, storage URL)

    if partitions == 0:
        local = os.path.join(att.out, layout.result_name(att.task))
        outputs.append((local, layout.task_result(workdir, att.task, att.number)))
        with open(local, "wb") as out:
            mapper = att.proc("map command", shell(job.commands.map), env, subprocess.PIPE, out)
        procs.append(mapper)
    else:
        mapper = att.proc(
            "map command", shell(job.commands.map), env, subprocess.PIPE, subprocess.PIPE
        )
        procs.append(mapper)
        assert mapper.popen.stdout is not None
        sinks: list[IO[bytes]] = []
        for p in range(partitions):
            local = os.path.join(att.out, f"part-{p:05d}")
            outputs.append((local, layout.map_run(workdir, att.task, att.number, p)))
            source = mapper.popen.stdout if partitions == 1 else subprocess.PIPE
            stage_procs = _sort_and_combine(att, env, source, local)
            procs.extend(stage_procs)
            if partitions > 1:
                stdin = stage_procs[0].popen.stdin
                assert stdin is not None
                sinks.append(stdin)
        if partitions == 1:
            mapper.popen.stdout.close()  # the sort owns the read end now
        else:
            threads.append(_start_partitioner(att, mapper.popen.stdout, sinks, failure))

    assert mapper.popen.stdin is not None
    feeder = threading.Thread(
        target=feed, args=(split, job.storage, mapper.popen.stdin, failure), daemon=True
    )
    feeder.start()
    threads.append(feeder)
    try:
        wait_all(procs, att.watch, threads)
    finally:
        att.log.close()
    att.check(mapper, mapper.label)
    failure.raise_if_any()
    for proc in procs:
        att.check(proc, proc.label)
    for local, url in outputs:
        job.storage(url).put_file(local, url)
    if att.log.counters:
        url = layout.counters_url(workdir, att.task, att.number)
        job.storage(url).put_bytes(json.dumps(att.log.counters).encode(), url)
    return bool(att.log.counters)


def _sort_and_combine(
    att: Attempt, env: dict[str, str], source: IO[bytes] | int, local: str
) -> list[Proc]:
    """`sort [| combine] > local`, reading `source`; returns the processes, sort first."""
    combine = att.job.commands.combine
    with open(local, "wb") as out:
        sorter = att.proc(
            "sort", att.sort_argv(), att.sort_env(), source, subprocess.PIPE if combine else out
        )
        if not combine:
            return [sorter]
        assert sorter.popen.stdout is not None
        combiner = att.proc("combine command", shell(combine), env, sorter.popen.stdout, out)
        sorter.popen.stdout.close()
        return [sorter, combiner]


def _start_partitioner(
    att: Attempt, source: IO[bytes], sinks: list[IO[bytes]], failure: Failure
) -> threading.Thread:
    sep = att.job.spec.separator.encode()
    fields = att.job.spec.key_fields

    def run() -> None:
        try:
            distribute(source, sinks, sep, fields, att.watch.cancel)
        except BrokenPipeError:
            failure.record(TaskFailed("a sort process stopped reading its partition"))
        except BaseException as exc:
            failure.record(exc)
        finally:
            source.close()
            for sink in sinks:
                try:
                    sink.close()
                except BrokenPipeError:
                    pass

    thread = threading.Thread(target=run, daemon=True, name=f"partition-{att.task.name}")
    thread.start()
    return thread
