"""The shuffle on S3: objects, requests, bytes, wall and CPU time of moving map outputs to
reduce tasks, the way kubemr does it now and the way it did before.

    source .devcluster/env      # hack/devcluster's MinIO (or any S3: AWS_ENDPOINT_URL, keys)
    .venv/bin/python bench/shuffle.py [--maps 200] [--partitions 1,16,256] [--mib 128]
                                      [--data text|random] [--ways before,none,zstd]
                                      [--workers 2] [--reps 1] [--json FILE]

M map tasks' sorted outputs (`--mib` in all, whatever the number of partitions P) are made
once per P on the local disk and then, for each way, stored in a fresh prefix of a bucket by
`--workers` processes (the write side), and merged by `--workers` processes (processes, as
workers are: threads would share one interpreter lock), one reduce task at a time, each
taking claims of consecutive partitions as workers do (`state.batch_size`, at most 64 a
claim): every partition's segments streamed into `sort -m` (GNU sort, as a reduce task runs
it; `sort` when the feed concatenates them) and hashed (the read side). Every way's merged
bytes are checked against the others (their SHA-256 over all partitions).

Ways:

- `before`: each map attempt stores one object per partition; a reduce task fetches its
  partition's object of every map task to local disk (8 at a time), then merges the files.
- `none`, `zstd`: kubemr.shuffle as the workers run it: one object per map attempt with an
  index at its start, uncompressed or zstd level 1; a reduce task reads the indexes (once
  per worker), then one range per map output, reading ahead the segments of the rest of its
  claim into the worker's spool, streamed into the merge through FIFOs (kubemr.shim.feed).

Columns: objects written; requests on the write side (PUTs, multipart parts included) per map
task; requests on the read side (GETs of indexes and ranges) per reduce task; bytes stored;
wall time of each side; CPU seconds (these processes, sort and wc, and MinIO's own when its
pid is known from hack/devcluster). Data: `text` is word-count-like lines
(`word<TAB>1`, 60,000 distinct words, Zipf-distributed), `random` is lines of random bytes,
which no codec compresses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubemr import layout, shuffle, state  # noqa: E402
from kubemr.partition import sort_keys  # noqa: E402
from kubemr.shim.config import DEFAULT_SORT_MEMORY  # noqa: E402
from kubemr.shim.feed import Feed  # noqa: E402
from kubemr.shim.reducer import merge_argv  # noqa: E402
from kubemr.state import Task  # noqa: E402
from kubemr.storage import storage_for  # noqa: E402
from kubemr.storage.base import Storage  # noqa: E402
from kubemr.storage.s3 import S3Storage  # noqa: E402

#: The sort a reduce task on a pod runs (kubemr.shim.attempt.sort_argv): its buffer, its keys.
SORT = ["sort", "-S", DEFAULT_SORT_MEMORY, *sort_keys(b"\t", 1)]
FETCH_THREADS = 8


@dataclass
class Figures:
    """One run of one way at one P."""

    way: str
    partitions: int
    objects: int = 0
    write_requests: int = 0
    read_requests: int = 0
    stored_bytes: int = 0
    read_bytes: int = 0
    write_s: float = 0.0
    read_s: float = 0.0
    cpu_s: float = 0.0
    minio_cpu_s: float = 0.0
    digest: str = ""

    @property
    def shuffle_s(self) -> float:
        return self.write_s + self.read_s


@dataclass
class Counter:
    """Requests seen by botocore's event hooks (its public extension point), by HTTP method."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    by_method: dict[str, int] = field(default_factory=dict)
    range_bytes: int = 0

    def __call__(self, request: Any, **_: Any) -> None:
        with self.lock:
            self.by_method[request.method] = self.by_method.get(request.method, 0) + 1
            got = request.headers.get("Range")
            if got:
                text = got.decode() if isinstance(got, bytes) else str(got)
                first, last = text.removeprefix("bytes=").split("-")
                self.range_bytes += int(last) - int(first) + 1

    def take(self) -> dict[str, int]:
        with self.lock:
            found, self.by_method = self.by_method, {}
            return found


# -- data -----------------------------------------------------------------------------------


def make_outputs(root: Path, maps: int, partitions: int, total: int, kind: str) -> list[list[str]]:
    """M map outputs of P sorted partition files each, about `total` bytes in all; cached."""
    where = root / f"{kind}-m{maps}-p{partitions}-b{total}"
    files = [
        [str(where / f"{m:05d}" / f"part-{p:05d}") for p in range(partitions)] for m in range(maps)
    ]
    if (where / "done").exists():
        return files
    shutil.rmtree(where, ignore_errors=True)
    rng = random.Random(7)
    words = [f"w{rng.getrandbits(40):010x}".encode() for _ in range(60_000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    per_map = total // maps
    for m in range(maps):
        if kind == "text":
            count = per_map // 14
            lines = [w + b"\t1\n" for w in rng.choices(words, weights, k=count)]
        else:
            count = per_map // 100
            lines = []
            for _ in range(count):
                raw = rng.randbytes(99).replace(b"\n", b"x").replace(b"\t", b"y")
                lines.append(raw[:8] + b"\t" + raw[9:] + b"\n")
        lines.sort(key=lambda line: line.split(b"\t", 1)[0] + b"\0" + line)
        buckets: list[list[bytes]] = [[] for _ in range(partitions)]
        for line in lines:
            buckets[zlib.crc32(line.split(b"\t", 1)[0]) % partitions].append(line)
        os.makedirs(where / f"{m:05d}")
        for p in range(partitions):
            Path(files[m][p]).write_bytes(b"".join(buckets[p]))
        # The same, in one file, for ways that take their partitions from memory.
        Path(where / f"{m:05d}" / "all").write_bytes(b"".join(b"".join(b) for b in buckets))
    (where / "done").write_text("")
    return files


# -- the ways ------------------------------------------------------------------------------


def claims(partitions: int, workers: int) -> Iterator[tuple[int, int]]:
    """Consecutive ranges of reduce tasks in the sizes the workers' claims take."""
    settings = state.Settings("bench", 0.0, 60, 3, batch=64, workers=workers)
    start = 0
    while start < partitions:
        size = state.batch_size(partitions - start, settings)
        yield start, start + size
        start += size


def merge(paths: list[str], scratch: str, feed: Feed | None = None) -> tuple[int, bytes]:
    """`sort -m` of `paths` (or of the feed) into `wc -c`: (bytes, SHA-256 of the output)."""
    listing = os.path.join(scratch, "runs.lst")
    if feed is not None:
        argv = merge_argv(SORT, feed, listing)
    else:
        Path(listing).write_bytes(b"".join(os.fsencode(p) + b"\0" for p in paths))
        argv = [*SORT, "-m", f"--files0-from={listing}"]
    env = {**os.environ, "LC_ALL": "C"}
    merger = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert merger.stdout is not None
    if feed is not None:
        feed.start(merger.kill)
    digest = hashlib.sha256()
    size = 0
    try:
        while chunk := merger.stdout.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    finally:
        if feed is not None:
            feed.close()
    if feed is not None:
        feed.failure.raise_if_any()
    if merger.wait() != 0:
        raise RuntimeError(f"sort -m exited with {merger.returncode}")
    return size, digest.digest()


_process: dict[str, Any] = {}


def _start_process() -> None:
    """A writer's or reducer's own S3 client, its requests counted."""
    storage = S3Storage()
    counter = Counter()
    storage.client.meta.events.register("before-send.s3", counter)
    _process.update(storage=storage, counter=counter)


def _store(way: str, workdir: str, parts: list[str], copies: str, m: int) -> int:
    """What a map attempt does once its partitioner has written its sorted lines: P local
    files before, one spill file now (shuffle.Spill); the requests it made."""
    storage: S3Storage = _process["storage"]
    task = Task("map", m)
    local = os.path.join(copies, f"{m:05d}")
    os.makedirs(local, exist_ok=True)
    if way == "before":
        for p, src in enumerate(parts):
            dst = os.path.join(local, f"part-{p:05d}")
            shutil.copyfile(src, dst)
            storage.put_file(dst, layout.map_run(workdir, task, 1, p))
    else:
        # As the partitioner does, from the sorted lines in memory.
        data = Path(parts[0]).with_name("all").read_bytes()
        spill = shuffle.Spill(os.path.join(local, "spill"), len(parts))
        start = 0
        for sink, path in zip(spill.sinks(), parts, strict=True):
            size = os.path.getsize(path)
            sink.write(data[start : start + size])
            start += size
        spill.close()
        shuffle.store(storage, workdir, task, 1, spill, way)
    shutil.rmtree(local)
    return sum(_process["counter"].take().values())


def write_side(way: str, workdir: str, files: list[list[str]], workers: int, copies: str) -> int:
    """Store every map output, `workers` processes at a time; the requests made."""
    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=fork, initializer=_start_process) as pool:
        jobs = [pool.submit(_store, way, workdir, files[m], copies, m) for m in range(len(files))]
        return sum(job.result() for job in jobs)


@dataclass
class Reduced:
    """What one reducer process did: each partition's (bytes, digest), its requests."""

    results: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    requests: int = 0
    range_bytes: int = 0
    error: str = ""


def _reducer(
    w: int,
    way: str,
    workdir: str,
    maps: int,
    partitions: int,
    tmp: str,
    todo: Any,
    done: Any,
) -> None:
    """One worker's reduce tasks, claim after claim from `todo`; a `Reduced` to `done`."""
    _start_process()
    storage: S3Storage = _process["storage"]
    out = Reduced()
    attempts = [1] * maps

    def storage_of(url: str) -> Storage:
        return storage if url.startswith("s3://") else storage_for(url)

    try:
        cache = shuffle.IndexCache()
        spool = shuffle.Spool(os.path.join(tmp, f"spool-{w}"))
        spool.clear()
        while (claim := todo.get()) is not None:
            a, b = claim
            spool.prune(a)  # as a worker does when its claim starts
            for p in range(a, b):
                scratch = os.path.join(tmp, f"w{w}-p{p}")
                os.makedirs(scratch)
                if way == "before":
                    urls = [layout.map_run(workdir, Task("map", i), 1, p) for i in range(maps)]
                    paths = [os.path.join(scratch, f"{i:06d}") for i in range(maps)]

                    def fetch(i: int, urls: list[str] = urls, paths: list[str] = paths) -> None:
                        with storage.open_read(urls[i]) as src, open(paths[i], "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)

                    with ThreadPoolExecutor(FETCH_THREADS) as pool:
                        list(pool.map(fetch, range(maps)))
                    out.results[p] = merge(paths, scratch)
                else:
                    segments = shuffle.locate(
                        storage, workdir, attempts, p, partitions, way, cache, spool=spool, upto=b
                    )
                    feed = Feed(storage_of, segments, os.path.join(scratch, "fifos"), spool=spool)
                    out.results[p] = merge([], scratch, feed)
                shutil.rmtree(scratch)
    except Exception as exc:  # reported by the parent
        out.error = f"reducer {w}: {exc!r}"
    counter: Counter = _process["counter"]
    out.requests = sum(counter.take().values())
    out.range_bytes = counter.range_bytes
    done.put(out)


def read_side(
    way: str, workdir: str, maps: int, partitions: int, workers: int, tmp: str
) -> tuple[int, bytes, int, int]:
    """Run every reduce task's merge in `workers` processes; (bytes merged, a digest over all
    partitions, requests made, bytes asked for in ranges)."""
    fork = multiprocessing.get_context("fork")
    todo, done = fork.Queue(), fork.Queue()
    for claim in claims(partitions, workers):
        todo.put(claim)
    for _ in range(workers):
        todo.put(None)
    procs = [
        fork.Process(target=_reducer, args=(w, way, workdir, maps, partitions, tmp, todo, done))
        for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    outs: list[Reduced] = [done.get() for _ in procs]
    for proc in procs:
        proc.join()
    errors = [o.error for o in outs if o.error]
    if errors:
        raise RuntimeError("; ".join(errors))
    results = {p: r for o in outs for p, r in o.results.items()}
    if len(results) != partitions:
        raise RuntimeError("a reduce task was not run")
    digest = hashlib.sha256()
    for p in range(partitions):
        digest.update(results[p][1])
    merged = sum(size for size, _ in results.values())
    return merged, digest.digest(), sum(o.requests for o in outs), sum(o.range_bytes for o in outs)


def minio_pid() -> int | None:
    path = REPO / ".devcluster" / "run" / "minio.pid"
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def run_way(
    way: str,
    storage: S3Storage,
    bucket: str,
    files: list[list[str]],
    partitions: int,
    workers: int,
    tmp: str,
) -> Figures:
    workdir = f"s3://{bucket}/bench-{uuid.uuid4().hex[:8]}/"
    figures = Figures(way, partitions)
    pid = minio_pid()
    cpu0, minio0, t0 = cpu_now(), proc_cpu(pid), time.perf_counter()
    figures.write_requests = write_side(way, workdir, files, workers, os.path.join(tmp, "copies"))
    t1 = time.perf_counter()
    merged, digest, figures.read_requests, figures.read_bytes = read_side(
        way, workdir, len(files), partitions, workers, tmp
    )
    t2 = time.perf_counter()
    figures.write_s, figures.read_s = t1 - t0, t2 - t1
    figures.cpu_s = cpu_now() - cpu0
    figures.minio_cpu_s = proc_cpu(pid) - minio0
    listed = storage.list(workdir)
    figures.objects = len(listed)
    figures.stored_bytes = sum(item.size for item in listed)
    figures.digest = f"{merged}:{digest.hex()[:16]}"
    storage.delete_prefix(workdir)
    return figures


def table(rows: list[Figures], maps: int) -> str:
    head = (
        "| P | way | objects | write req/map | read req/reduce | stored MiB | write s | read s "
        "| shuffle s | CPU s | MinIO CPU s |\n"
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    lines = []
    for r in rows:
        lines.append(
            f"| {r.partitions} | {r.way} | {r.objects:,} | {r.write_requests / maps:.2f} "
            f"| {r.read_requests / r.partitions:.1f} | {r.stored_bytes / 2**20:.1f} "
            f"| {r.write_s:.2f} | {r.read_s:.2f} | {r.shuffle_s:.2f} | {r.cpu_s:.1f} "
            f"| {r.minio_cpu_s:.1f} |"
        )
    return head + "\n".join(lines)


def medians(runs: list[Figures]) -> Figures:
    first = runs[0]
    out = Figures(first.way, first.partitions, first.objects, first.write_requests)
    out.read_requests = int(statistics.median(r.read_requests for r in runs))
    out.stored_bytes = first.stored_bytes
    for name in ("write_s", "read_s", "cpu_s", "minio_cpu_s"):
        setattr(out, name, statistics.median(getattr(r, name) for r in runs))
    out.digest = first.digest
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=int, default=200, help="map tasks M (default 200)")
    parser.add_argument("--partitions", default="1,16,256", help="values of P (default 1,16,256)")
    parser.add_argument("--mib", type=int, default=128, help="map output in all, MiB (128)")
    parser.add_argument("--data", choices=("text", "random"), default="text")
    parser.add_argument("--ways", default="before,none,zstd", help="before,none,zstd")
    parser.add_argument("--workers", type=int, default=2, help="writers and reducers (2)")
    parser.add_argument("--reps", type=int, default=1, help="runs of each way, alternating")
    parser.add_argument("--bucket", default="kubemr-bench")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if not os.environ.get("AWS_ENDPOINT_URL"):
        print(
            "bench/shuffle.py needs an S3 server: run `hack/devcluster up` and "
            "`source .devcluster/env` (or set AWS_ENDPOINT_URL and the AWS keys).",
            file=sys.stderr,
        )
        return 2
    ways = args.ways.split(",")
    storage = S3Storage()
    try:
        storage.client.create_bucket(Bucket=args.bucket)
    except storage.client.exceptions.BucketAlreadyOwnedByYou:
        pass
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubemr-bench"
    rows: list[Figures] = []
    for partitions in [int(x) for x in args.partitions.split(",")]:
        files = make_outputs(cache / "shuffle", args.maps, partitions, args.mib << 20, args.data)
        runs: dict[str, list[Figures]] = {way: [] for way in ways}
        for _ in range(args.reps):
            for way in ways:
                with tempfile.TemporaryDirectory(prefix="kubemr-shuffle-") as tmp:
                    runs[way].append(
                        run_way(way, storage, args.bucket, files, partitions, args.workers, tmp)
                    )
                print(f"P={partitions} {way}: {runs[way][-1]}", file=sys.stderr)
        digests = {run.digest for way in ways for run in runs[way]}
        if len(digests) != 1:
            raise SystemExit(f"the ways merged different bytes at P={partitions}: {digests}")
        rows.extend(medians(runs[way]) for way in ways)
    print(f"M={args.maps}, {args.mib} MiB of {args.data} map output, {args.workers} workers")
    print(table(rows, args.maps))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
