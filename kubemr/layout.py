"""Where a job's data lives in storage: one function per kind of object.

    <output>/part-r-00000 ...           results (part-m-NNNNN for map-only jobs)
    <output>/_RESULTS                   the result URLs, one a line (jobs with many results)
    <output>/_SUCCESS                   written last, once the job has Succeeded
    <workdir>/plan-a<N>.json            the plan written by planning attempt N
    <workdir>/data/<task>/a<N>/...      what attempt N of a task wrote: a map attempt's
                                        map.out (object storage) or part-PPPPP[.zst] (a local
                                        disk; see kubemr.shuffle), a reduce attempt's part
    <workdir>/logs/<task>.a<N>.stderr   the stderr of attempt N of a task

The workdir defaults to `<output>/_kubemr/<job uid>/` (names starting with
`_` are skipped by readers, as in Hadoop). Every attempt writes under its
own name, so a late or zombie attempt never overwrites the committed one.
"""

from __future__ import annotations

from kubemr.state import Task
from kubemr.storage import join

SUCCESS = "_SUCCESS"
RESULTS = "_RESULTS"


def default_workdir(output: str, uid: str) -> str:
    return join(output, "_kubemr", uid) + "/"


def plan_url(workdir: str, attempt: int) -> str:
    return join(workdir, f"plan-a{attempt}.json")


def attempt_dir(workdir: str, task: Task, attempt: int) -> str:
    return join(workdir, "data", task.name, f"a{attempt}") + "/"


def data_root(workdir: str) -> str:
    return join(workdir, "data") + "/"


def map_run(workdir: str, task: Task, attempt: int, partition: int, codec: str = "none") -> str:
    """Attempt `attempt` of map task `task` on a local disk: its sorted run for `partition`."""
    suffix = ".zst" if codec == "zstd" else ""
    return join(attempt_dir(workdir, task, attempt), f"part-{partition:05d}{suffix}")


def map_output(workdir: str, task: Task, attempt: int) -> str:
    """Attempt `attempt` of map task `task` on object storage: all its partitions, indexed."""
    return join(attempt_dir(workdir, task, attempt), "map.out")


#: spec.outputCompression -> the extension of result files.
RESULT_SUFFIX = {"none": "", "gzip": ".gz", "zstd": ".zst"}


def result_name(task: Task, codec: str = "none") -> str:
    """The file name a task's result gets in the output (map-only jobs: part-m), with the
    extension of `codec` (spec.outputCompression)."""
    kind = "m" if task.stage == "map" else "r"
    return f"part-{kind}-{task.index:05d}{RESULT_SUFFIX[codec]}"


def task_result(workdir: str, task: Task, attempt: int, codec: str = "none") -> str:
    return join(attempt_dir(workdir, task, attempt), result_name(task, codec))


def log_url(workdir: str, task: Task, attempt: int) -> str:
    return join(workdir, "logs", f"{task.name}.a{attempt}.stderr")


def output_url(output: str, name: str) -> str:
    return join(output, name)
