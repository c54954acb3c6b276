"""Sets and maps of task indices as short strings, the way Indexed Jobs write `completedIndexes`.

A job of 100,000 tasks keeps its bookkeeping in one small Kubernetes object,
so task states are never stored one entry per task. A set of indices is a
string of inclusive ranges, `"0-99,150,152-160"` (sorted, disjoint, never two
adjacent), and a map from indices to small integers is `"5:2,17-40:1"` (the
same, each range with its value; adjacent ranges of equal value merge). Both
are immutable; their size follows the number of runs, not the number of
indices, so 100,000 tasks that all finished are `"0-99999"`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class IndexSet:
    """An immutable set of non-negative integers, stored as sorted half-open runs."""

    __slots__ = ("runs",)

    def __init__(self, runs: Iterable[tuple[int, int]] = ()) -> None:
        self.runs: tuple[tuple[int, int], ...] = _normalise(runs)

    @staticmethod
    def range(start: int, end: int) -> IndexSet:
        """The integers from `start` up to, not including, `end`."""
        return IndexSet([(start, end)] if end > start else [])

    @staticmethod
    def parse(text: object) -> IndexSet:
        """`"0-3,7"` -> {0, 1, 2, 3, 7}; raises ValueError for anything else."""
        if text is None or text == "":
            return IndexSet()
        if not isinstance(text, str):
            raise ValueError(f"an index set is a string like '0-3,7', not {text!r}")
        runs: list[tuple[int, int]] = []
        for part in text.split(","):
            low, dash, high = part.partition("-")
            first = _index(low, text)
            last = _index(high, text) if dash else first
            if last < first:
                raise ValueError(f"{part!r} in {text!r} is an empty range")
            runs.append((first, last + 1))
        return IndexSet(runs)

    def __str__(self) -> str:
        return ",".join(str(a) if b == a + 1 else f"{a}-{b - 1}" for a, b in self.runs)

    def __repr__(self) -> str:
        return f"IndexSet({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IndexSet) and self.runs == other.runs

    def __hash__(self) -> int:
        return hash(self.runs)

    def __len__(self) -> int:
        return sum(b - a for a, b in self.runs)

    def __bool__(self) -> bool:
        return bool(self.runs)

    def __contains__(self, index: int) -> bool:
        return any(a <= index < b for a, b in self.runs)

    def __iter__(self) -> Iterator[int]:
        for a, b in self.runs:
            yield from range(a, b)

    def __or__(self, other: IndexSet) -> IndexSet:
        return IndexSet([*self.runs, *other.runs])

    def __sub__(self, other: IndexSet) -> IndexSet:
        out: list[tuple[int, int]] = []
        cut = list(other.runs)
        for a, b in self.runs:
            start = a
            for c, d in cut:
                if d <= start or c >= b:
                    continue
                if c > start:
                    out.append((start, c))
                start = max(start, d)
                if start >= b:
                    break
            if start < b:
                out.append((start, b))
        return IndexSet(out)

    def __and__(self, other: IndexSet) -> IndexSet:
        out: list[tuple[int, int]] = []
        for a, b in self.runs:
            for c, d in other.runs:
                low, high = max(a, c), min(b, d)
                if low < high:
                    out.append((low, high))
        return IndexSet(out)

    def first_run(self, most: int) -> tuple[int, int] | None:
        """The first `most` indices of the lowest run, as (start, end); None if empty."""
        if not self.runs or most < 1:
            return None
        a, b = self.runs[0]
        return a, min(b, a + most)


class IndexMap:
    """An immutable map from non-negative integers to positive integers, stored as runs."""

    __slots__ = ("runs",)

    def __init__(self, runs: Iterable[tuple[int, int, int]] = ()) -> None:
        self.runs: tuple[tuple[int, int, int], ...] = _merge_valued(runs)

    @staticmethod
    def parse(text: object) -> IndexMap:
        """`"5:2,17-40:1"` -> {5: 2, 17: 1, ..., 40: 1}; raises ValueError for anything else."""
        if text is None or text == "":
            return IndexMap()
        if not isinstance(text, str):
            raise ValueError(f"an index map is a string like '5:2,17-40:1', not {text!r}")
        runs: list[tuple[int, int, int]] = []
        for part in text.split(","):
            where, sep, value = part.partition(":")
            if not sep:
                raise ValueError(f"{part!r} in {text!r} has no ':value'")
            ranges = IndexSet.parse(where)
            number = _index(value, text)
            runs.extend((a, b, number) for a, b in ranges.runs)
        try:
            return IndexMap(runs)
        except ValueError as exc:
            raise ValueError(f"{text!r} gives some index two values") from exc

    def __str__(self) -> str:
        return ",".join(
            (f"{a}" if b == a + 1 else f"{a}-{b - 1}") + f":{v}" for a, b, v in self.runs
        )

    def __repr__(self) -> str:
        return f"IndexMap({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IndexMap) and self.runs == other.runs

    def __hash__(self) -> int:
        return hash(self.runs)

    def __bool__(self) -> bool:
        return bool(self.runs)

    def get(self, index: int, default: int = 0) -> int:
        for a, b, v in self.runs:
            if a <= index < b:
                return v
            if a > index:
                break
        return default

    def keys(self) -> IndexSet:
        return IndexSet((a, b) for a, b, _ in self.runs)

    def items(self, where: IndexSet | None = None) -> Iterator[tuple[int, int, int]]:
        """(start, end, value) runs, cut to `where` if given."""
        for a, b, v in self.runs:
            if where is None:
                yield a, b, v
                continue
            for c, d in where.runs:
                low, high = max(a, c), min(b, d)
                if low < high:
                    yield low, high, v

    def without(self, where: IndexSet) -> IndexMap:
        """This map with the indices of `where` removed."""
        out: list[tuple[int, int, int]] = []
        for a, b, v in self.runs:
            for c, d in (IndexSet.range(a, b) - where).runs:
                out.append((c, d, v))
        return IndexMap(out)

    def assign(self, where: IndexSet, value: int) -> IndexMap:
        """This map with every index of `where` mapped to `value`."""
        return IndexMap([*self.without(where).runs, *((a, b, value) for a, b in where.runs)])

    def plus(self, where: IndexSet, step: int = 1, default: int = 0) -> IndexMap:
        """This map with `step` added to the value of every index of `where` (absent: `default`)."""
        kept = self.without(where)
        runs: list[tuple[int, int, int]] = list(kept.runs)
        covered = IndexSet()
        for a, b, v in self.items(where):
            runs.append((a, b, v + step))
            covered = covered | IndexSet.range(a, b)
        runs.extend((a, b, default + step) for a, b in (where - covered).runs)
        return IndexMap(runs)

    def most(self, where: IndexSet | None = None) -> tuple[int, int]:
        """(the largest value within `where`, an index holding it); (0, -1) if none."""
        best, at = 0, -1
        for a, _, v in self.items(where):
            if v > best:
                best, at = v, a
        return best, at


def _index(text: str, whole: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"{whole!r} is not a list of ranges of task indices")
    return int(text)


def _normalise(runs: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in runs if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


def _merge_valued(runs: Iterable[tuple[int, int, int]]) -> tuple[tuple[int, int, int], ...]:
    out: list[tuple[int, int, int]] = []
    for a, b, v in sorted(r for r in runs if r[1] > r[0]):
        if out and a < out[-1][1]:
            raise ValueError("an index map cannot give an index two values")
        if out and a == out[-1][1] and v == out[-1][2]:
            out[-1] = (out[-1][0], b, v)
        else:
            out.append((a, b, v))
    return tuple(out)
