"""Word count three ways: the bare shell pipeline, mrjob's local runner, and `kubemr run`.

    .venv/bin/python bench/wordcount.py [--size-mb 150] [--reps 3] [--skip-mrjob] [--sidecar]
                                        [--plot FILE]

A framework over shell commands can be no faster than the commands
themselves, so the reference is the hand-written pipeline

    cat corpus | map.sh | LC_ALL=C sort | reduce.sh

with the map and reduce scripts of examples/bash-wordcount. The same two
scripts also run as mrjob 0.7.4's `mapper_cmd`/`reducer_cmd` on its local
runner (installed by this script into its own virtual environment under
~/.cache/kubemr-bench, from PyPI) and as a `kubemr run` job with one worker
and with one worker per CPU. The corpus is real text made at run time: the
Python standard library's .py and .txt files, concatenated (and repeated)
until it is large enough. With `--sidecar`, kubemr also runs the job in
sidecar mode (`spec.mode: sidecar`: every command handed to an executor
through FIFOs, as in a sidecar-mode pod), which measures that mode's
overhead over the default.

The ways run alternately, `--reps` times each, every run in a fresh process
tree. For each run: wall time, CPU time (user+sys of the whole process tree,
from wait4), peak RSS of the largest single process (from wait4), and the
peak total RSS of the tree (sampled from /proc). The table shows medians and
ratios to the bare pipeline; every way's counts are checked against the
pipeline's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "bash-wordcount"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubemr-bench"
MRJOB_VERSION = "0.7.4"

MRJOB_SCRIPT = '''\
"""Word count with mrjob, running the same shell scripts as the other ways."""
from mrjob.job import MRJob

MAP = {map!r}
REDUCE = {reduce!r}


class ShellWordCount(MRJob):
    def mapper_cmd(self):
        return "sh " + MAP

    def reducer_cmd(self):
        return "sh " + REDUCE


if __name__ == "__main__":
    ShellWordCount.run()
'''


@dataclass(frozen=True)
class Measure:
    """One run of one way."""

    wall: float
    cpu: float
    max_rss_mib: float
    tree_rss_mib: float


@dataclass(frozen=True)
class Way:
    """A way to count words: how to start it and where its output ends up."""

    name: str
    argv: list[str]
    env: dict[str, str]
    output: Path


# -- the corpus ---------------------------------------------------------------------------


def stdlib_texts() -> list[Path]:
    """The standard library's .py and .txt files (no site-packages), in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[Path] = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "__pycache__"))
        found.extend(Path(directory, n) for n in sorted(names) if n.endswith((".py", ".txt")))
    return found


def make_corpus(path: Path, size: int) -> int:
    """Concatenate standard library texts into `path` until it holds `size` bytes."""
    sources = stdlib_texts()
    if not sources:
        raise SystemExit("no .py or .txt files found in the standard library")
    written = 0
    with open(path, "wb") as out:
        while written < size:
            for source in sources:
                data = source.read_bytes()
                if not data.endswith(b"\n"):
                    data += b"\n"
                out.write(data)
                written += len(data)
                if written >= size:
                    break
    return written


# -- measuring one run --------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _tree_rss_kib(root: int) -> int:
    """The summed RSS of `root` and all its descendants, now."""
    tree = _children()
    total = 0
    todo = [root]
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, ()))
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * page_kib
        except (OSError, IndexError, ValueError):
            pass
    return total


def measure(argv: list[str], env: dict[str, str], cwd: Path, sample: float = 0.25) -> Measure:
    """Run `argv` to its end; its tree's wall time, CPU time and memory."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    peak = 0
    done = threading.Event()

    def sampler() -> None:
        nonlocal peak
        while not done.wait(sample):
            peak = max(peak, _tree_rss_kib(proc.pid))

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    assert proc.stderr is not None
    errors = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    thread.join()
    if proc.returncode != 0:
        tail = errors.decode("utf-8", "replace")[-3000:]
        raise SystemExit(f"{' '.join(argv)} exited with {proc.returncode}:\n{tail}")
    return Measure(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        max_rss_mib=usage.ru_maxrss / 1024,
        tree_rss_mib=peak / 1024,
    )


def counts_digest(output: Path) -> tuple[str, int]:
    """A digest of the sorted `word<TAB>count` lines of every part file under `output`."""
    files = [output] if output.is_file() else sorted(output.glob("part-*"))
    lines: list[bytes] = []
    for path in files:
        lines.extend(path.read_bytes().splitlines())
    lines.sort()
    return hashlib.sha256(b"\n".join(lines)).hexdigest(), len(lines)


# -- the ways -----------------------------------------------------------------------------


def mrjob_python() -> Path:
    """The Python of a virtual environment holding mrjob (made on first use)."""
    venv = CACHE / "mrjob-venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import mrjob; assert mrjob.__version__ == {MRJOB_VERSION!r}"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"installing mrjob {MRJOB_VERSION} into {venv} ...", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", f"mrjob=={MRJOB_VERSION}"]
    subprocess.run(pip, check=True)
    return python


def kubemr_job(
    work: Path, corpus: Path, partitions: int, split_size: str, mode: str = "wrapper"
) -> Path:
    """The word count manifest for `kubemr run`: the example's scripts, shipped as files."""
    job = work / f"wordcount-{mode}.yaml"
    spec = {
        "mode": mode,
        "inputs": [str(corpus)],
        "map": "./map.sh",
        "reduce": "./reduce.sh",
        "partitions": partitions,
        "splitSize": split_size,
        "files": {
            "map.sh": (EXAMPLE / "map.sh").read_text(),
            "reduce.sh": (EXAMPLE / "reduce.sh").read_text(),
        },
    }
    manifest = {
        "apiVersion": "kubemr.io/v1alpha1",
        "kind": "MapReduceJob",
        "metadata": {"generateName": "bench-wordcount-"},
        "spec": spec,
    }
    job.write_text(yaml.safe_dump(manifest))
    return job


def ways(args: argparse.Namespace, work: Path, corpus: Path) -> list[Callable[[int], Way]]:
    """Each way as a function of the repetition number (each run writes a fresh output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
    found: list[Callable[[int], Way]] = []
    mapper, reducer = EXAMPLE / "map.sh", EXAMPLE / "reduce.sh"

    def bare(rep: int) -> Way:
        out = work / f"bare-{rep}.txt"
        line = f"cat {corpus} | sh {mapper} | LC_ALL=C sort | sh {reducer} > {out}"
        return Way("bare pipeline", ["sh", "-c", line], env, out)

    found.append(bare)
    if not args.skip_mrjob:
        python = mrjob_python()
        script = work / "mr_shell_wordcount.py"
        script.write_text(MRJOB_SCRIPT.format(map=str(mapper), reduce=str(reducer)))

        def mrjob(rep: int) -> Way:
            out = work / f"mrjob-{rep}"
            argv = [str(python), str(script), "-r", "local", "--no-conf", str(corpus)]
            argv += ["--output-dir", str(out), "--local-tmp-dir", str(work / "mrjob-tmp")]
            return Way(f"mrjob {MRJOB_VERSION} local", argv, env, out)

        found.append(mrjob)
    for mode in ("wrapper", "sidecar") if args.sidecar else ("wrapper",):
        job = kubemr_job(work, corpus, args.partitions, args.split_size, mode)
        suffix = " sidecar" if mode == "sidecar" else ""
        for workers in args.workers:

            def kubemr(
                rep: int, workers: int = workers, job: Path = job, suffix: str = suffix
            ) -> Way:
                tag = f"{workers}{suffix.strip()}-{rep}"
                out = work / f"kubemr-{tag}"
                home = work / "kubemr-home"
                argv = [sys.executable, "-m", "kubemr", "run", str(job), "-w", str(workers), "-q"]
                argv += ["-o", str(out), "--run-dir", str(home / f"run-{tag}")]
                name = f"kubemr run -w {workers}{suffix}"
                return Way(name, argv, {**env, "KUBEMR_HOME": str(home)}, out)

            found.append(kubemr)
    return found


# -- reporting ----------------------------------------------------------------------------


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def table(results: dict[str, list[Measure]]) -> str:
    base = results["bare pipeline"]
    ref = {
        "wall": statistics.median(m.wall for m in base),
        "cpu": statistics.median(m.cpu for m in base),
        "max_rss_mib": statistics.median(m.max_rss_mib for m in base),
        "tree_rss_mib": statistics.median(m.tree_rss_mib for m in base),
    }
    head = (
        f"{'way':<22}{'wall s':>8}{'(min-max)':>14}{'x bare':>8}{'CPU s':>8}{'x bare':>8}"
        f"{'max RSS MiB':>13}{'tree RSS MiB':>14}{'x bare':>8}"
    )
    rows = [head, "-" * len(head)]
    for name, runs in results.items():
        wall = statistics.median(m.wall for m in runs)
        cpu = statistics.median(m.cpu for m in runs)
        rss = statistics.median(m.max_rss_mib for m in runs)
        tree = statistics.median(m.tree_rss_mib for m in runs)
        spread = f"{min(m.wall for m in runs):.1f}-{max(m.wall for m in runs):.1f}"
        rows.append(
            f"{name:<22}{wall:>8.2f}{spread:>14}{wall / ref['wall']:>8.2f}{cpu:>8.2f}"
            f"{cpu / ref['cpu']:>8.2f}{rss:>13.0f}{tree:>14.0f}"
            f"{tree / max(ref['tree_rss_mib'], 1e-9):>8.2f}"
        )
    return "\n".join(rows)


def plot(results: dict[str, dict[str, float]], path: str) -> None:
    """A bar chart of the medians: wall time, CPU time, peak tree RSS."""
    import matplotlib  # type: ignore[import-not-found,unused-ignore]  # only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    names = list(results)
    panels = [
        ("wall", "wall time (s)"),
        ("cpu", "CPU time, user+sys (s)"),
        ("tree_rss_mib", "peak RSS of the process tree (MiB)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    colours = ["#555555", "#c4694a", "#4a7fc4", "#2f5f9e", "#1d3f6e", "#0f2440"]
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [results[n][key] for n in names]
        ax.bar(range(len(names)), values, color=colours[: len(names)])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.1f}" if key != "tree_rss_mib" else f"{v:.0f}", ha="center",
                    va="bottom", fontsize=8)  # fmt: skip
    fig.suptitle("word count: medians", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def draw(medians: dict[str, dict[str, float]], path: str) -> None:
    """Plot here if matplotlib imports, else in a virtual environment of its own."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        venv = CACHE / "plot-venv"
        python = venv / "bin" / "python"
        if not python.exists():
            print(f"installing matplotlib into {venv} ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "matplotlib", "pyyaml"],
                           check=True)  # fmt: skip
        data = json.dumps(medians)
        argv = [str(python), __file__, "--plot-from", data, "--plot", path]
        subprocess.run(argv, check=True)
        return
    plot(medians, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cpus = os.cpu_count() or 1
    parser.add_argument("--size-mb", type=float, default=150, help="corpus size (default 150)")
    parser.add_argument("--reps", type=int, default=3, help="runs of each way (default 3)")
    parser.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=sorted({1, cpus}),
        help=f"kubemr worker counts, comma-separated (default 1,{cpus})",
    )
    parser.add_argument("--partitions", type=int, default=cpus, help="kubemr reduce tasks")
    parser.add_argument("--split-size", default="16Mi", help="kubemr splitSize (default 16Mi)")
    parser.add_argument("--skip-mrjob", action="store_true", help="leave mrjob out")
    parser.add_argument(
        "--sidecar",
        action="store_true",
        help="also run kubemr in sidecar mode (commands through the executor)",
    )
    parser.add_argument("--plot", metavar="FILE", help="write a PNG bar chart of the medians")
    parser.add_argument("--plot-from", help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    args = parser.parse_args()
    if args.plot_from:
        plot(json.loads(args.plot_from), args.plot)
        return 0

    work = Path(tempfile.mkdtemp(prefix="kubemr-bench-wc-"))
    try:
        corpus = work / "corpus.txt"
        size = make_corpus(corpus, int(args.size_mb * 1024 * 1024))
        makers = ways(args, work, corpus)
        print(
            f"corpus: {size / 2**20:.1f} MiB of standard library text; {args.reps} rep(s); "
            f"{cpus} CPU(s); load average {load()}",
            flush=True,
        )
        results: dict[str, list[Measure]] = {}
        digests: dict[str, set[tuple[str, int]]] = {}
        for rep in range(args.reps):
            for make in makers:
                way = make(rep)
                m = measure(way.argv, way.env, work)
                results.setdefault(way.name, []).append(m)
                digests.setdefault(way.name, set()).add(counts_digest(way.output))
                print(
                    f"  rep {rep + 1} {way.name:<22} {m.wall:7.2f}s wall {m.cpu:7.2f}s CPU "
                    f"{m.max_rss_mib:6.0f} MiB max {m.tree_rss_mib:6.0f} MiB tree",
                    flush=True,
                )
                if way.output.is_dir():
                    shutil.rmtree(way.output)
                else:
                    way.output.unlink()
                shutil.rmtree(work / "kubemr-home", ignore_errors=True)
                shutil.rmtree(work / "mrjob-tmp", ignore_errors=True)
        print(f"load average after: {load()}\n")
        print(table(results))
        reference = digests["bare pipeline"]
        same = all(d == reference for d in digests.values()) and len(reference) == 1
        _, lines = next(iter(reference))
        print(
            f"\ncounts: {lines} distinct words; "
            + ("every way produced the same counts" if same else "COUNTS DIFFER")
        )
        medians = {
            name: {
                key: statistics.median(getattr(m, key) for m in runs)
                for key in ("wall", "cpu", "max_rss_mib", "tree_rss_mib")
            }
            for name, runs in results.items()
        }
        if args.json:
            raw = {name: [asdict(m) for m in runs] for name, runs in results.items()}
            Path(args.json).write_text(json.dumps({"medians": medians, "runs": raw}, indent=1))
        if args.plot:
            draw(medians, args.plot)
            print(f"plot: {args.plot}")
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
