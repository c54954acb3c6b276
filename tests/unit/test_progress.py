"""Progress display: a bar redrawn in place on a terminal, one line per change otherwise."""

from __future__ import annotations

import io
from typing import Any

from kubemr import state
from kubemr.intervals import IndexSet
from kubemr.progress import Progress, describe


def stage(states: list[str]) -> dict[str, Any]:
    """A stage whose task i is done ("d"), running ("r", held by w1) or waiting ("p")."""
    out = state.new_stage(
        len(states), IndexSet.parse(",".join(str(i) for i, s in enumerate(states) if s == "p"))
    )
    out["done"] = str(IndexSet((i, i + 1) for i, s in enumerate(states) if s == "d"))
    for i, s in enumerate(states):
        if s == "r":
            out["held"][f"w{i}"] = {"n": 1, "w": 0, "a": i, "b": i + 1, "d": i, "l": 30}
    return out


def doc(phase: str, maps: list[str], reduces: list[str], partitions: int = 2) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "partitions": partitions, "map": stage(maps)}
    if reduces:
        status["reduce"] = stage(reduces)
    return {"status": status}


def test_describe_counts_done_tasks() -> None:
    assert describe(doc("Mapping", ["d", "r", "p"], [])) == "Mapping    map 1/3  reduce 0/2"
    assert describe(doc("Mapping", ["d"], [], partitions=0)) == "Mapping    map 1/1"


def test_plain_output_prints_only_changes() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False)
    progress.update(doc("Mapping", ["p", "p"], []))
    progress.update(doc("Mapping", ["p", "p"], []))
    progress.update(doc("Mapping", ["d", "p"], []))
    progress.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("map 0/2  reduce 0/2") and lines[1].endswith("map 1/2  reduce 0/2")
    assert "\r" not in out.getvalue()


def test_terminal_output_redraws_one_line_with_bars() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.update(doc("Mapping", ["d", "p"], []))
    progress.update(doc("Reducing", ["d", "d"], ["d", "p"]))
    progress.finish()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    last = text.split("\r")[-1]
    assert "map [" + "#" * 24 + "] 2/2" in last
    assert "reduce [" + "#" * 12 + "-" * 12 + "] 1/2" in last
