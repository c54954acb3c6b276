"""Key comparison options (spec.keyComparator, Hadoop's KeyFieldBasedComparator with
mapreduce.partition.keycomparator.options): numeric and reverse order per key field, ties
broken by the whole line bytewise, so top-N and latest-first jobs port unchanged. Real
`kubemr run` processes and shell commands, against Python's sort as the reference."""

from __future__ import annotations

import random

import pytest
from conftest import Kubemr


def counts(n: int) -> list[tuple[str, int]]:
    rng = random.Random(3)
    return [(f"w{rng.randrange(10**6):06d}", rng.randrange(1, 60)) for _ in range(n)]


@pytest.mark.parametrize("partitions", [1, 3])
def test_counts_sorted_numerically_descending_then_by_word(kubemr: Kubemr, partitions: int) -> None:
    rows = [*counts(2000), ("same", 7), ("same", 7), ("alpha", 7), ("beta", 100), ("b", 9)]
    (kubemr.tmp / "in.txt").write_text("".join(f"{w}\t{c}\n" for w, c in rows))
    job = kubemr.job(
        "top",
        inputs=["in.txt"],
        map="cat",
        reduce="cat",
        keyFields=2,
        keyComparator="-k2,2nr -k1,1",
        partitions=partitions,
        splitSize="4Ki",
        output=str(kubemr.tmp / "out"),
    )
    done = kubemr("run", str(job), "-w", "2", "-q")
    assert done.returncode == 0, done.stderr
    for part in sorted((kubemr.tmp / "out").glob("part-r-*")):
        lines = part.read_text().splitlines()
        pairs = [(w, int(c)) for w, c in (line.split("\t") for line in lines)]
        assert pairs == sorted(pairs, key=lambda p: (-p[1], p[0]))
    got = sorted(
        line for p in (kubemr.tmp / "out").glob("part-r-*") for line in p.read_text().splitlines()
    )
    assert got == sorted(f"{w}\t{c}" for w, c in rows)
    if partitions == 1:
        top = (kubemr.tmp / "out" / "part-r-00000").read_text().splitlines()[:3]
        assert top == ["beta\t100", *[f"{w}\t59" for w, c in sorted(rows) if c == 59][:2]]


def test_global_reverse_and_a_key_to_the_keys_end(kubemr: Kubemr) -> None:
    """`-r -k1` (Hadoop: to the end of the key) with two key fields is `-k1,2r`: the keys in
    reverse byte order, equal keys still ordered by the whole line, ascending."""
    rows = ["a\t1\tz", "a\t1\ty", "b\t0\tq", "a\t2\tx", "c\t5\tw"]
    (kubemr.tmp / "in.txt").write_text("\n".join(rows) + "\n")
    job = kubemr.job(
        "rev",
        inputs=["in.txt"],
        map="cat",
        reduce="cat",
        keyFields=2,
        keyComparator="-r -k1",
        output=str(kubemr.tmp / "out"),
    )
    done = kubemr("run", str(job), "-q")
    assert done.returncode == 0, done.stderr
    got = (kubemr.tmp / "out" / "part-r-00000").read_text().splitlines()
    assert got == ["c\t5\tw", "b\t0\tq", "a\t2\tx", "a\t1\ty", "a\t1\tz"]


@pytest.mark.parametrize(
    ("comparator", "says"),
    [
        ("-k3,3n", "-k3,3n must lie within the key's 2 field(s)"),
        ("-k1,1f", "-k1,1f is not one of them"),
        ("--numeric-sort", "'--numeric-sort' is not one of them"),
        ("-n", "gives no key"),
    ],
)
def test_unsupported_comparators_are_refused_naming_the_option(
    kubemr: Kubemr, comparator: str, says: str
) -> None:
    job = kubemr.job(
        "bad", inputs=["opaque:x"], map="cat", reduce="cat", keyFields=2, keyComparator=comparator
    )
    done = kubemr("run", str(job))
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert "spec.keyComparator" in done.stderr and "Traceback" not in done.stderr
