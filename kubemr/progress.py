"""Showing a job's progress: a bar on a terminal, plain lines otherwise.

Both `kubemr run` and `kubemr submit --wait` show the same thing, computed
from the job document alone: the phase, map done/total, reduce done/total.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from kubemr import state

BAR_WIDTH = 24


def summary(doc: Mapping[str, Any]) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """(phase, (map done, map total), (reduce done, reduce total))."""
    return (
        state.phase_of(doc) or "Pending",
        state.counts(doc, "map"),
        state.counts(doc, "reduce"),
    )


def _bar(done: int, total: int) -> str:
    if total <= 0:
        return " " * BAR_WIDTH
    filled = int(BAR_WIDTH * done / total)
    return "#" * filled + "-" * (BAR_WIDTH - filled)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def describe(doc: Mapping[str, Any]) -> str:
    """One plain line: `Mapping  map 3/10  reduce 0/4`."""
    phase, (md, mt), (rd, rt) = summary(doc)
    partitions = int(state.status_of(doc).get("partitions", 0) or 0)
    text = f"{phase:<10} map {md}/{mt}"
    if partitions or rt:
        text += f"  reduce {rd}/{rt or partitions}"
    return text


class Progress:
    """Renders progress updates to `out`, in place on a terminal."""

    def __init__(self, out: TextIO | None = None, tty: bool | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.start = time.monotonic()
        self._last = ""
        self._width = 0

    def update(self, doc: Mapping[str, Any]) -> None:
        if self.tty:
            phase, (md, mt), (rd, rt) = summary(doc)
            partitions = int(state.status_of(doc).get("partitions", 0) or 0)
            rtotal = rt or partitions
            line = f"{phase:<10} map [{_bar(md, mt)}] {md}/{mt}"
            if rtotal:
                line += f"  reduce [{_bar(rd, rtotal)}] {rd}/{rtotal}"
            line += f"  {_clock(time.monotonic() - self.start)}"
            pad = max(self._width - len(line), 0)
            self.out.write("\r" + line + " " * pad)
            self.out.flush()
            self._width = len(line)
            return
        line = describe(doc)
        if line != self._last:
            self.out.write(f"{_clock(time.monotonic() - self.start)} {line}\n")
            self.out.flush()
            self._last = line

    def finish(self) -> None:
        if self.tty and self._width:
            self.out.write("\n")
            self.out.flush()
            self._width = 0
