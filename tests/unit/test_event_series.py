"""Which Events are repeats (`kube.EventSeries`): the same object, reason, note and type within
the window count on the first Event; anything else, or later, is a new one."""

from __future__ import annotations

from kubemr.kube import EventSeries


def test_repeats_within_the_window_count_on_the_first_event() -> None:
    series = EventSeries(window=360)
    key = ("ns", "uid-1", "TaskFailed", "map-3 failed: exit 4", "Warning")
    assert series.repeat(key, 0.0) is None
    series.created(key, "job.abc", 0.0)
    assert series.repeat(key, 10.0) == ("job.abc", 2)
    assert series.repeat(key, 300.0) == ("job.abc", 3)
    assert series.repeat(key, 650.0) == ("job.abc", 4)  # 350 s after the last: still a repeat
    other = ("ns", "uid-1", "TaskFailed", "map-4 failed: exit 4", "Warning")
    assert series.repeat(other, 651.0) is None


def test_an_event_quiet_for_longer_than_the_window_starts_anew() -> None:
    series = EventSeries(window=360)
    key = ("ns", "uid-1", "Failed", "boom", "Warning")
    series.created(key, "job.abc", 0.0)
    assert series.repeat(key, 361.0) is None
    series.created(key, "job.def", 361.0)
    series.forget(key)
    assert series.repeat(key, 362.0) is None
