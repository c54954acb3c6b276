"""Index sets and maps as range strings: parsing, printing, and set algebra checked against
Python's own sets and dicts on random inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubemr.intervals import IndexMap, IndexSet

indices = st.sets(st.integers(min_value=0, max_value=200), max_size=60)


def of(values: set[int]) -> IndexSet:
    return IndexSet((i, i + 1) for i in values)


@pytest.mark.parametrize(
    ("text", "values"),
    [("", set()), ("0", {0}), ("0-3,7", {0, 1, 2, 3, 7}), ("5-6,8-9", {5, 6, 8, 9})],
)
def test_parse_and_print(text: str, values: set[int]) -> None:
    parsed = IndexSet.parse(text)
    assert set(parsed) == values and str(parsed) == text and len(parsed) == len(values)


@pytest.mark.parametrize("text", ["a", "1-", "-1", "3-1", "01", "1,,2", " 1", 5])
def test_malformed_sets_are_refused(text: object) -> None:
    with pytest.raises(ValueError):
        IndexSet.parse(text)


def test_adjacent_runs_merge_and_a_full_stage_is_one_range() -> None:
    assert str(IndexSet([(0, 5), (5, 10), (12, 13)])) == "0-9,12"
    assert str(IndexSet.range(0, 100_000)) == "0-99999"


@given(indices, indices)
def test_set_algebra_matches_python_sets(a: set[int], b: set[int]) -> None:
    x, y = of(a), of(b)
    assert set(x | y) == a | b
    assert set(x - y) == a - b
    assert set(x & y) == a & b
    assert IndexSet.parse(str(x)) == x
    assert all((i in x) == (i in a) for i in range(0, 202))


@given(indices, st.integers(min_value=1, max_value=30))
def test_first_run_is_the_start_of_the_lowest_run(a: set[int], most: int) -> None:
    run = of(a).first_run(most)
    if not a:
        assert run is None
        return
    assert run is not None
    start, end = run
    assert start == min(a) and 0 < end - start <= most
    assert all(i in a for i in range(start, end))


@given(
    st.dictionaries(
        st.integers(min_value=0, max_value=100), st.integers(min_value=1, max_value=4), max_size=40
    ),
    indices,
    st.integers(min_value=0, max_value=3),
)
def test_map_operations_match_python_dicts(
    values: dict[int, int], where: set[int], step: int
) -> None:
    m = IndexMap((i, i + 1, v) for i, v in values.items())
    assert IndexMap.parse(str(m)) == m
    assert all(m.get(i) == values.get(i, 0) for i in range(0, 102))
    plus = m.plus(of(where), step, default=1)
    expected = dict(values)
    for i in where:
        expected[i] = values.get(i, 1) + step
    assert all(plus.get(i) == expected.get(i, 0) for i in range(0, 202))
    without = m.without(of(where))
    assert all(without.get(i) == (0 if i in where else values.get(i, 0)) for i in range(0, 102))
    assert set(m.keys()) == set(values)
    best, at = m.most(of(where))
    inside = [values[i] for i in where if i in values]
    assert best == (max(inside) if inside else 0)
    if inside:
        assert values[at] == best and at in where


def test_map_strings() -> None:
    m = IndexMap.parse("5:2,17-40:1")
    assert m.get(5) == 2 and m.get(20) == 1 and m.get(6) == 0
    assert str(m.assign(IndexSet.range(41, 45), 1)) == "5:2,17-44:1"
    with pytest.raises(ValueError):
        IndexMap.parse("1-5:1,3:2")
    with pytest.raises(ValueError):
        IndexMap.parse("1-5")
