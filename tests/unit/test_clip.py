"""How failure texts are shortened for the job document (`state.clip`): what failed stays,
the quoted stderr loses its start, and nothing is ever longer than its limit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kubemr.state import clip

HEAD = "input file:///data/in.txt bytes 0-4096: the map command exited with code 3; stderr ends:"


def test_a_long_traceback_keeps_what_failed_and_the_last_line() -> None:
    traceback = "\n".join(f'  File "map.py", line {i}, in f{i}' for i in range(200))
    text = f"{HEAD}\n{traceback}\nValueError: bad record 17"
    got = clip(text, 400)
    assert len(got) <= 400
    assert got.startswith(HEAD + "\n...")
    assert got.endswith("ValueError: bad record 17")


def test_short_texts_are_unchanged() -> None:
    assert clip(f"  {HEAD}\nboom\n ", 400) == f"{HEAD}\nboom"


def test_one_long_line_keeps_its_start_and_end() -> None:
    got = clip("start " + "x" * 1000 + " end", 100)
    assert len(got) <= 100 and got.startswith("start ") and got.endswith(" end") and " ... " in got


@given(st.text(), st.integers(min_value=20, max_value=2000))
def test_never_longer_than_the_limit(text: str, limit: int) -> None:
    got = clip(text, limit)
    assert len(got) <= limit
    if len(text.strip()) <= limit:
        assert got == text.strip()
