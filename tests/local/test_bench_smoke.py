"""The benchmarks still run: each script once, tiny, checked for its table and exit code.

The figures in docs/benchmarks.md come from these scripts at full size; this
only keeps them working as the code changes (mrjob, which the word count
benchmark installs from PyPI, and Hadoop, whose jars it fetches from Maven
Central, are left out, and so is bench/hadoop_parity.py, which is all Hadoop;
GNU parallel runs where it is installed).
"""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_wordcount_benchmark_runs() -> None:
    done = bench(
        "wordcount.py", "--size-mb", "2", "--reps", "1", "--skip-mrjob", "--skip-hadoop",
        "--workers", "1,2", "--sidecar",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert "way" in done.stdout and "x bare" in done.stdout
    for row in ("bare pipeline", "kubemr run -w 1", "kubemr run -w 2", "kubemr run -w 2 sidecar"):
        assert row in done.stdout
    assert "every way produced the same counts" in done.stdout


def test_scheduling_benchmark_runs() -> None:
    args = ("--tasks", "6", "--sleep", "0.05", "--workers", "1,2", "--reps", "1")
    done = bench("scheduling.py", *args)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "map eff" in done.stdout and "overhead ms" in done.stdout
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [r[0] for r in rows if r and r[0] in ("1", "2") and len(r) == 9] == ["1", "2"]
