"""The writer: lost races are retried from the winner's document with growing, jittered waits;
lost answers are recognised; patches that can never apply are refused with a sentence.

Runs against a real SqliteStore; `Flaky` wraps it at kubemr's own Store interface and stands
in for a network that loses the answer to a patch the store applied.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from kubemr.errors import Refused, TemporaryError
from kubemr.store.base import Doc, Store
from kubemr.store.sqlite import SqliteStore
from kubemr.store.writes import BACKOFF_CAP, MAX_RACES, Backoff, Writer, preconditions_hold


def store(tmp_path: Path, n: int = 0) -> SqliteStore:
    return SqliteStore.create(
        str(tmp_path / "job.db"), {"metadata": {"name": "j"}, "status": {"n": n}}
    )


class Flaky(Store):
    """Applies every patch; loses the answer to the first `lose` of them."""

    def __init__(self, inner: Store, lose: int) -> None:
        self.inner, self.lose = inner, lose

    def get(self) -> Doc:
        return self.inner.get()

    def patch(self, ops: list[dict[str, Any]]) -> Doc:
        new = self.inner.patch(ops)
        if self.lose > 0:
            self.lose -= 1
            raise TemporaryError("no answer")
        return new


def increment(doc: Doc) -> list[dict[str, Any]]:
    n = doc["status"]["n"]
    return [
        {"op": "test", "path": "/status/n", "value": n},
        {"op": "replace", "path": "/status/n", "value": n + 1},
    ]


def test_backoff_grows_to_its_cap_with_full_jitter() -> None:
    backoff = Backoff(random.Random(1))
    waits = [backoff.next() for _ in range(12)]
    assert all(0 <= w <= BACKOFF_CAP for w in waits)
    assert max(waits[:3]) <= 0.2 and max(waits[6:]) > 0.2
    assert len(set(waits)) == len(waits)  # jittered, so racing workers spread out


def test_a_lost_race_is_built_again_from_the_winners_document(tmp_path: Path) -> None:
    s = store(tmp_path)
    stale = s.get()
    s.patch(increment(s.get()))  # a rival got there first
    sleeps: list[float] = []
    writer = Writer(s, sleep=sleeps.append)
    new, _ = writer.send(stale, increment)
    assert new is not None and new["status"]["n"] == 2
    assert writer.conflicts == 1 and len(sleeps) == 1


def test_a_race_not_worth_retrying_is_given_up(tmp_path: Path) -> None:
    s = store(tmp_path)
    stale = s.get()
    s.patch(increment(s.get()))
    writer = Writer(s, sleep=lambda _: None)
    writer.race_wait = 0.01
    new, latest = writer.send(stale, increment, retry_races=False)
    assert new is None and latest["status"]["n"] == 1
    never = [{"op": "test", "path": "/status/n", "value": -1}]
    new, _ = writer.send(s.get(), lambda d: never)
    assert new is None and writer.conflicts == 1 + MAX_RACES


def test_a_lost_answer_is_recognised_and_not_applied_twice(tmp_path: Path) -> None:
    s = Flaky(store(tmp_path), lose=1)
    writer = Writer(s, sleep=lambda _: None)
    new, _ = writer.send(s.get(), increment, applied=lambda d: d["status"]["n"] == 1)
    assert new is not None and new["status"]["n"] == 1 and s.get()["status"]["n"] == 1


def test_a_patch_that_can_never_apply_is_refused_not_retried(tmp_path: Path) -> None:
    s = store(tmp_path)
    writer = Writer(s, sleep=lambda _: None)
    broken = [
        {"op": "test", "path": "/status/n", "value": 0},
        {"op": "remove", "path": "/status/missing"},
    ]
    assert preconditions_hold(s.get(), broken) is None
    with pytest.raises(Refused, match="preconditions hold"):
        writer.send(s.get(), lambda d: broken, what="renewal")
    assert s.get()["status"]["n"] == 0
