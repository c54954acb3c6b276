"""How often the operator writes `status.progress` (every write rewrites the whole object)."""

from __future__ import annotations

from typing import Any

import pytest

from kubemr.operator.reconcile import progress_due


@pytest.mark.parametrize(
    ("old", "new", "terminal", "due"),
    [
        (None, {"map": "0/10000"}, False, True),  # the first figure
        ({"map": "5/10000"}, {"map": "5/10000"}, True, False),  # nothing changed
        ({"map": "5/10000"}, {"map": "104/10000"}, False, False),  # under 1% of the stage
        ({"map": "5/10000"}, {"map": "105/10000"}, False, True),  # 1% further
        ({"map": "9990/10000"}, {"map": "10000/10000"}, False, True),  # a stage ends
        ({"map": "10000/10000"}, {"map": "10000/10000", "reduce": "0/4"}, False, True),
        ({"map": "1/10"}, {"map": "2/10"}, False, True),  # small stages: every task
        ({"map": "17/10000"}, {"map": "18/10000"}, True, True),  # the job ended: the last figure
        ({"map": "bogus"}, {"map": "1/10"}, False, True),
    ],
)
def test_progress_moves_in_steps_of_a_stage(
    old: Any, new: dict[str, str], terminal: bool, due: bool
) -> None:
    assert progress_due(old, new, terminal) is due


def test_progress_is_written_at_most_every_couple_of_seconds_while_a_stage_runs() -> None:
    old, new = {"map": "5/1000"}, {"map": "500/1000"}
    assert not progress_due(old, new, False, age=0.5)
    assert progress_due(old, new, False, age=2.5)
    assert progress_due(old, {"map": "1000/1000"}, False, age=0.1)  # a stage's end at once
    assert progress_due(old, {"map": "6/1000"}, True, age=0.1)  # and the job's
