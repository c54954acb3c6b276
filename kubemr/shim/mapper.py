"""A map task: split -> map command -> partition -> sort -> combine -> sorted runs.

The data never sits whole in Python. The split reaches the map command's
stdin as the input file itself, or through a pipe that a thread fills
(`kubemr.shim.stdin`: sendfile for local files, streaming for the rest). Its
stdout goes straight to the output file (map-only), or
through an OS pipe into one `sort`. With one partition, the sort's output
goes through the combiner, if any, into a file. With more, the partitioner
thread splits the sorted stream by partition (lines with one key are
adjacent there, so it moves a run of them at a time) into one file, or one
combiner and then a file, per partition: each partition's lines stay sorted,
and a combiner sees exactly the sorted lines of its partition. The files are
then stored under this attempt's own names, as `kubemr.shuffle` lays them out
(one object for all partitions on object storage).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
from collections.abc import Sequence
from typing import IO

from kubemr import layout, shuffle
from kubemr.partition import LowBytes, distribute_sorted, has_low_bytes, whole_lines_suffice
from kubemr.plan import Split
from kubemr.reporter import Counters
from kubemr.shim.attempt import Attempt, Failure
from kubemr.shim.process import Proc, wait_all
from kubemr.shim.results import ResultFile
from kubemr.shim.stdin import feed, local_ranges, open_whole, send_ranges


def run_map(att: Attempt, split: Split, workdir: str) -> Counters:
    """Run one map attempt and store its outputs; returns the counters it reported."""
    job = att.job
    env = job.task_env(att.task, att.number, {"KUBEMR_INPUT": split.input_env()})
    partitions = job.partitions
    failure = Failure()
    procs: list[Proc] = []
    readers: dict[int, Proc] = {}  # id of a process -> the process reading its output
    threads: list[threading.Thread] = []
    outputs: list[tuple[str, str]] = []  # map-only: (local file, storage URL)
    files: list[str] = []  # with partitions: the sorted lines of each
    spill: shuffle.Spill | None = None  # or all of them in one file (object storage)
    storage = job.storage(workdir)
    single = shuffle.one_object(storage, workdir)
    sep = job.spec.separator.encode()
    # Without a combiner, sort whole lines and check them afterwards (see whole_lines_suffice).
    whole_lines = (
        not job.commands.combine and not job.spec.key_comparator and whole_lines_suffice(sep)
    )
    check: LowBytes | None = None
    ranges = local_ranges(split, job.storage)
    whole = open_whole(ranges) if ranges is not None else None
    stdin: int = subprocess.PIPE if whole is None else whole

    try:
        if partitions == 0:
            codec = job.spec.output_compression
            local = os.path.join(att.out, layout.result_name(att.task, codec))
            outputs.append((local, layout.task_result(workdir, att.task, att.number, codec)))
            result = ResultFile(local, codec, failure)
            try:
                mapper = att.command("map command", job.commands.map, env, stdin, result.stdout)
                result.started(mapper)
            finally:
                result.close()
            if result.thread is not None:
                threads.append(result.thread)
        else:
            mapper = att.command("map command", job.commands.map, env, stdin, subprocess.PIPE)
    finally:
        if whole is not None:
            os.close(whole)  # the command has its own copy
    procs.append(mapper)
    if partitions > 0:
        assert mapper.popen.stdout is not None
        files = [os.path.join(att.out, f"part-{p:05d}") for p in range(partitions)]
        if partitions == 1:
            chain = _sort_and_combine(att, env, mapper.popen.stdout, files[0], whole_lines)
            procs.extend(chain)
            for upstream, reader in itertools.pairwise(chain):
                readers[id(upstream)] = reader
            mapper.popen.stdout.close()  # the sort owns the read end now
        else:
            argv = att.sort_argv(whole_lines=whole_lines)
            sorter = att.proc("sort", argv, att.sort_env(), mapper.popen.stdout, subprocess.PIPE)
            mapper.popen.stdout.close()
            procs.append(sorter)
            assert sorter.popen.stdout is not None
            source: IO[bytes] = sorter.popen.stdout
            if whole_lines:
                source = check = LowBytes(sorter.popen.stdout, sep)  # type: ignore[assignment]
            sinks: Sequence[IO[bytes] | CombineInput | shuffle.SpillSink]
            if single and not job.commands.combine:
                spill = shuffle.Spill(os.path.join(att.out, "spill"), partitions)
                sinks = spill.sinks()
            else:
                sinks = _partition_sinks(att, env, files, procs)
            threads.append(_start_partitioner(att, source, sinks, failure))

    if whole is None:
        assert mapper.popen.stdin is not None
        if ranges is not None:
            feeder = threading.Thread(
                target=send_ranges, args=(ranges, mapper.popen.stdin, failure), daemon=True
            )
        else:
            feeder = threading.Thread(
                target=feed, args=(split, job.storage, mapper.popen.stdin, failure), daemon=True
            )
        feeder.start()
        threads.append(feeder)
    try:
        wait_all(procs, att.watch, threads)
    finally:
        att.log.close()
        if spill is not None:
            spill.close()
    att.check(mapper, mapper.label)
    failure.raise_if_any()
    for proc in reversed(procs):
        att.check(proc, proc.label, readers.get(id(proc)))
    if partitions == 0:
        for local, url in outputs:
            job.storage(url).put_file(local, url)
        return att.log.counters
    if whole_lines and (check is None or check.found):
        # A line may hold a byte below the separator (the partitioner saw one go by, or, with
        # one partition, nothing looked yet): whole-line order may split a key. Only the
        # partitions holding such a line can be out of key order, so only they are sorted
        # again: one such line among many partitions costs one sort, not one per partition.
        if spill is not None:
            files = spill.extract(files)
            spill = None
        _sort_by_key(att, [local for local in files if has_low_bytes(local, sep)])
    codec = shuffle.codec_for(job.spec.map_output_compression, single)
    stored = spill if spill is not None else files
    shuffle.store(storage, workdir, att.task, att.number, stored, codec)
    return att.log.counters


def _sort_by_key(att: Attempt, files: list[str]) -> None:
    """Sort each of `files` again, in place, by key first (`partition.sort_keys`)."""
    for local in files:
        proc = att.proc(
            "sort", att.sort_argv("-o", local, local), att.sort_env(), subprocess.DEVNULL, None
        )
        wait_all([proc], att.watch)
        att.check(proc, "sort")


def _sort_and_combine(
    att: Attempt, env: dict[str, str], source: IO[bytes] | int, local: str, whole_lines: bool
) -> list[Proc]:
    """`sort [| combine] > local`, reading `source`; returns the processes, sort first."""
    combine = att.job.commands.combine
    argv = att.sort_argv(whole_lines=whole_lines)
    with open(local, "wb") as out:
        sorter = att.proc("sort", argv, att.sort_env(), source, subprocess.PIPE if combine else out)
        if not combine:
            return [sorter]
        assert sorter.popen.stdout is not None
        combiner = att.command("combine command", combine, env, sorter.popen.stdout, out)
        sorter.popen.stdout.close()
        return [sorter, combiner]


class CombineInput:
    """A combine command's stdin, as the partitioner writes it. A command that stops reading
    (`head`, at the end of a pipeline) gets no more of its partition, and no error: its own
    exit status says whether the attempt failed."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.pipe = pipe
        self.closed_early = False

    def write(self, data: bytes, /) -> int:
        if not self.closed_early:
            try:
                self.pipe.write(data)
            except BrokenPipeError:
                self.closed_early = True
        return len(data)

    def close(self) -> None:
        try:
            self.pipe.close()
        except BrokenPipeError:
            pass


def _partition_sinks(
    att: Attempt, env: dict[str, str], files: list[str], procs: list[Proc]
) -> list[IO[bytes] | CombineInput]:
    """Where each partition's sorted lines go: its file, or its combine command's stdin."""
    combine = att.job.commands.combine
    if not combine:
        return [open(local, "wb") for local in files]  # closed by the partitioner
    sinks: list[IO[bytes] | CombineInput] = []
    for local in files:
        with open(local, "wb") as out:
            combiner = att.command("combine command", combine, env, subprocess.PIPE, out)
        procs.append(combiner)
        assert combiner.popen.stdin is not None
        sinks.append(CombineInput(combiner.popen.stdin))
    return sinks


def _start_partitioner(
    att: Attempt,
    source: IO[bytes],
    sinks: Sequence[IO[bytes] | CombineInput | shuffle.SpillSink],
    failure: Failure,
) -> threading.Thread:
    """Split the sorted map output by partition, in a thread; it closes source and sinks."""
    sep = att.job.spec.separator.encode()
    # Partition on the first partitionFields fields of the key (all of it by default); the
    # lines sharing them are contiguous in lines sorted by the whole key.
    fields = att.job.spec.partition_fields or att.job.spec.key_fields

    def run() -> None:
        try:
            distribute_sorted(source, sinks, sep, fields, att.watch.cancel)
        except BaseException as exc:
            failure.record(exc)
        finally:
            source.close()
            for sink in sinks:
                try:
                    sink.close()
                except OSError as exc:
                    if not isinstance(exc, BrokenPipeError):
                        failure.record(exc)

    thread = threading.Thread(target=run, daemon=True, name=f"partition-{att.task.name}")
    thread.start()
    return thread
