"""Where a job's data lives: the names `kubemr.layout` gives results, runs and logs.

Checks the documented layout, that every attempt writes under names of its
own (so a late attempt never overwrites a committed one), and that reading a
job's output back as input sees only the results, never `_SUCCESS` or the
work directory.
"""

from __future__ import annotations

from kubemr import layout
from kubemr.plan import list_inputs
from kubemr.state import Task
from kubemr.storage.base import ObjectInfo

OUT = "s3://results/wc/"
WORK = "s3://results/wc/_kubemr/uid-1/"


def test_default_workdir_is_hidden_under_the_output() -> None:
    assert layout.default_workdir(OUT, "uid-1") == WORK
    assert layout.default_workdir("file:///out", "u") == "file:///out/_kubemr/u/"


def test_names_follow_the_documented_layout() -> None:
    m3, r1 = Task("map", 3), Task("reduce", 1)
    assert layout.plan_url(WORK, 2) == WORK + "plan-a2.json"
    assert layout.data_root(WORK) == WORK + "data/"
    assert layout.attempt_dir(WORK, m3, 2) == WORK + "data/map-3/a2/"
    assert layout.map_run(WORK, m3, 2, 4) == WORK + "data/map-3/a2/part-00004"
    assert layout.task_result(WORK, r1, 5) == WORK + "data/reduce-1/a5/part-r-00001"
    assert layout.task_result(WORK, m3, 1) == WORK + "data/map-3/a1/part-m-00003"
    assert layout.log_url(WORK, m3, 2) == WORK + "logs/map-3.a2.stderr"
    assert layout.output_url(OUT, "part-r-00001") == OUT + "part-r-00001"
    assert layout.output_url(OUT, layout.SUCCESS) == OUT + "_SUCCESS"


def test_result_names() -> None:
    assert layout.result_name(Task("map", 0)) == "part-m-00000"
    assert layout.result_name(Task("reduce", 12)) == "part-r-00012"
    assert layout.result_name(Task("reduce", 123456)) == "part-r-123456"


def test_every_attempt_writes_under_its_own_names() -> None:
    names = set()
    for task in (Task("map", 0), Task("map", 1), Task("reduce", 0), Task("reduce", 1)):
        for attempt in (1, 2, 3):
            owned = {
                layout.map_run(WORK, task, attempt, 0),
                layout.task_result(WORK, task, attempt),
                layout.log_url(WORK, task, attempt),
            }
            assert len(owned) == 3 and not owned & names
            names |= owned


def test_reading_an_output_back_sees_only_the_results() -> None:
    stored = [
        layout.output_url(OUT, "part-r-00000"),
        layout.output_url(OUT, "part-r-00001"),
        layout.output_url(OUT, layout.SUCCESS),
        layout.plan_url(WORK, 1),
        layout.map_run(WORK, Task("map", 0), 1, 0),
        layout.log_url(WORK, Task("map", 0), 1),
    ]
    found = list_inputs((OUT,), lambda url: [ObjectInfo(u, 10) for u in sorted(stored)])
    assert found == [ObjectInfo(OUT + "part-r-00000", 10), ObjectInfo(OUT + "part-r-00001", 10)]
