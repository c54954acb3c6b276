"""The planning task: list the inputs, cut splits, store the plan.

Whichever worker wins the claim plans, as in the original kubemr; the
operator never needs storage credentials. The plan (the split list, which
can be large) is stored in the job's workdir under the attempt's own name,
and only its URL and the task count go into the job document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubemr import layout
from kubemr.output import check_output
from kubemr.plan import dump_plan, plan_splits
from kubemr.shim.job import Job


@dataclass(frozen=True)
class Planned:
    tasks: int
    plan_url: str
    workdir: str
    partitions: int


def check_output_free(job: Job) -> None:
    """Refuse an output that cannot take the job's results (see `kubemr.output`)."""
    check_output(job.output, job.spec.inputs, job.storage, "choose another spec.output")


def run_plan(job: Job, doc: Mapping[str, Any], attempt: int) -> Planned:
    check_output_free(job)
    splits = plan_splits(
        job.spec.inputs,
        lambda url: job.storage(url).list(url),
        job.spec.split_size,
        job.spec.lines_per_map,
        lambda url: job.storage(url).open_read(url),
    )
    workdir = job.workdir(doc)
    url = layout.plan_url(workdir, attempt)
    extra = {
        "commands": {
            "map": job.commands.map,
            "combine": job.commands.combine,
            "reduce": job.commands.reduce,
        },
        "partitions": job.partitions,
    }
    job.storage(url).put_bytes(dump_plan(splits, extra), url)
    return Planned(len(splits), url, workdir, job.partitions)
