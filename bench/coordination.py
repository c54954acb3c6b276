"""Coordination on a real control plane: map-only jobs of no-op tasks on hack/devcluster.

    .venv/bin/python bench/coordination.py [--protocol] [--tasks 100,1000,10000] [--workers 8]
        [--reps 1] [--plot FILE] [--json FILE] [--timeout 3600] [--devcluster DIR]
        [--etcd-limit-mib 1280] [--report FILE,...]

On a cluster every claim and commit is a JSON patch on one MapReduceJob, so
this measures how that protocol scales with the number of tasks T. For each T
one MapReduceJob runs on `hack/devcluster` (started if none runs, shared
through `hack/devcluster acquire/release` as the cluster tests do): one input
object of T KiB of 16-byte lines in the devcluster's S3 and `splitSize: 1Ki`,
so exactly T map tasks, each `cat >/dev/null`; no reduce; `--workers` real
worker pods started by a real operator (`kubemr operator -n NAMESPACE`, a
process of this script, in a namespace of its own). The worker pods run the
kubemr of the checkout this script is in (PYTHONPATH), so a copy of the
repository can be measured against the cluster of another (`--devcluster`).

With --protocol, the same measurements are of the protocol alone: no
operator, no pods and no storage. The script creates the MapReduceJob with
phase Pending and starts `--workers` real worker processes on this machine
(`Worker` of kubemr.shim.worker: the decisions, claims, lease keeper,
renewals, commits, watch and writer that pods run, against the real
apiserver), whose `TaskRunner` plans T map tasks and runs each one by doing
nothing. That is where a worker hands a task to the data path, so the
figures are what coordinating T tasks costs, and nothing of what moving their
data costs; the full jobs give the rest.

For each T the tables show

- map s: the map phase, from the plan commit (phase Mapping) to the last map
  commit, as the workers' traces time them; with tasks that do nothing, it
  is all coordination and per-task overhead. tasks/s = map tasks committed /
  map s. A job still running after `--timeout` seconds is stopped; its row
  shows `~` and the map phase it would have taken at its rate so far.
- job s: from creating the MapReduceJob to phase Succeeded (operator, pod
  start-up, planning and publishing included).
- PATCH and GET latency p50/p99 of the MapReduceJob: as the workers see it
  (every request, timed in kubemr.kube when KUBEMR_TRACE_FILE is set, which
  this script sets in the pods, whose logs then hold one line per request),
  and as the apiserver sees it (its apiserver_request_duration_seconds
  histogram, resource mapreducejobs, before and after the job; quantiles
  interpolated within buckets, as Prometheus does). The apiserver's figures
  cover every client of every MapReduceJob on the cluster, this operator's
  included, and anybody else's test jobs running at the time.
- conflicts/task: lost races, PATCHes answered 422 (a failed `test`), per task.
- max KiB: the MapReduceJob at its largest, in bytes of its JSON as the
  apiserver sends it (watched: every version of the object passes by);
  stored KiB is the object as etcd holds it at the end (read from etcd).
- per task: GETs and PATCHes of the workers, bytes they received and sent,
  bytes the apiserver sent to watchers of MapReduceJobs (the operator and
  this script), versions of the object written, the apiserver's update
  transactions on etcd (more than the versions written when two writes
  overlap: the loser is decoded, patched and validated again inside the
  apiserver), and CPU milliseconds, during the map phase, of the worker
  processes (Python), of their commands (sh, cat), of kube-apiserver, etcd,
  the operator, MinIO and the rest (controller-manager, node agent), sampled
  from /proc every half second (the whole job's CPU seconds are in --json).
- growth: the least-squares slope of log(map s) against log(T) (1.0: linear),
  and of the coordination CPU (workers, apiserver, etcd, operator during the
  map phase) against T (1.0: a flat cost per task).

etcd keeps every version of the object until the apiserver compacts its
history (every 5 minutes), and every patch writes the whole object, so a
large T writes gigabytes; the script stops a job whose etcd database grows
beyond --etcd-limit-mib rather than let it reach etcd's 2 GiB quota (which
would make the cluster read-only for everybody).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubemr import state  # noqa: E402  (the kubemr of this checkout)
from kubemr.errors import Conflict  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubemr-bench"
TRACE_PREFIX = "kubemr-trace "
LINE_BYTES = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")
PHASE = re.compile(rb'"phase":"(\w+)"')
VERSION = re.compile(rb'"resourceVersion":"(\d+)"')
#: A commit of map tasks by the holder of a claim, in a traced patch's `what`.
MAP_COMMIT = re.compile(r"(?:^|,)commit=map:\d+(?=,|$)")
#: The patch that ends the map phase (it starts reducing or publishing).
MAP_END = re.compile(r"(?:^|,)phase=(?:Reducing|Publishing)(?=,|$)")
#: Processes of the devcluster whose CPU time is sampled, by their pid file's name.
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "minio", "nodeagent")


# -- results ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One job: what was measured."""

    tasks: int
    workers: int
    map_s: float
    job_s: float
    patch_ms: tuple[float, float]  # p50, p99 as the workers saw them
    get_ms: tuple[float, float]
    api_patch_ms: tuple[float, float]  # as the apiserver saw them
    api_get_ms: tuple[float, float]
    gets: int
    patches: int
    conflicts: int
    received: int  # bytes the workers received (GET and PATCH responses)
    sent: int  # bytes of the workers' patches
    watch_bytes: int  # bytes the apiserver sent to MapReduceJob watchers
    max_bytes: int
    stored_bytes: int
    versions: int  # versions of the object (writes) the watch saw
    api_requests: dict[str, int]  # apiserver's count, by verb (and 422), all MapReduceJobs
    etcd_requests: dict[str, int]  # the apiserver's to etcd, by operation, all MapReduceJobs
    etcd_db_max: int  # the largest etcd database size seen during the job
    cpu_ms: dict[str, float]  # by process group, whole job
    done: int = 0  # map tasks committed (all of them unless the job was stopped)
    stopped: str = ""  # why the job was stopped before it ended, if it was
    notes: list[str] = field(default_factory=list)
    map_cpu_ms: dict[str, float] = field(default_factory=dict)  # by group, in the map phase
    phases: dict[str, float] = field(default_factory=dict)  # first seen, s after creation
    protocol: bool = False  # workers ran the protocol only (no operator, pods or data)
    written_bytes: int = 0  # the bytes of every version: what the apiserver wrote to etcd

    @property
    def rate(self) -> float:
        """Map tasks committed per second of the map phase (so far, for a stopped job)."""
        return self.done / self.map_s if self.map_s > 0 else 0.0

    @property
    def complete(self) -> bool:
        return not self.stopped and self.done == self.tasks

    @property
    def projected_map_s(self) -> float:
        """The map phase, or for a stopped job how long it would have taken at its rate."""
        if self.complete or self.rate <= 0:
            return self.map_s
        return self.tasks / self.rate


# -- the devcluster -----------------------------------------------------------------------


class Devcluster:
    """A devcluster acquired for this process, and what the benchmark needs from it."""

    def __init__(self, checkout: Path) -> None:
        self.checkout = checkout
        self.script = checkout / "hack" / "devcluster"
        self.state = checkout / ".devcluster"
        self.env: dict[str, str] = {}

    def acquire(self) -> None:
        running = subprocess.run([str(self.script), "status"], capture_output=True).returncode
        if running != 0:
            print("starting hack/devcluster (shared with cluster tests) ...", flush=True)
        up = subprocess.run(
            [str(self.script), "acquire", str(os.getpid())], capture_output=True, text=True
        )
        if up.returncode != 0:
            raise SystemExit(f"hack/devcluster acquire failed:\n{up.stderr[-3000:]}")
        for line in (self.state / "env").read_text().splitlines():
            m = re.match(r"^export ([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
            if m:
                self.env[m.group(1)] = m.group(2)

    def release(self) -> None:
        subprocess.run([str(self.script), "release", str(os.getpid())], capture_output=True)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.env["DEVCLUSTER_KUBECTL"], "--kubeconfig", self.env["KUBECONFIG"], *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.state / "run" / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if os.path.isdir(f"/proc/{pid}") else None

    def etcd_url(self) -> str | None:
        """etcd's client URL, from the apiserver's command line."""
        try:
            words = (self.state / "run" / "kube-apiserver.cmd").read_text().split()
        except OSError:
            return None
        for i, word in enumerate(words[:-1]):
            if word == "--etcd-servers":
                return words[i + 1].split(",")[0]
        return None


def etcd_call(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call to etcd's JSON gateway (the devcluster's etcd listens on 127.0.0.1, plain)."""
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        out: dict[str, Any] = json.loads(response.read())
        return out


def etcd_db_size(url: str) -> int:
    return int(etcd_call(url, "/v3/maintenance/status", {}).get("dbSize", 0))


def etcd_value_size(url: str, key: str) -> int:
    """Bytes of the value etcd stores under `key` (0 if there is none)."""
    found = etcd_call(url, "/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})
    kvs = found.get("kvs") or []
    return len(base64.b64decode(kvs[0]["value"])) if kvs else 0


# -- apiserver metrics --------------------------------------------------------------------

Sample = tuple[str, dict[str, str], float]


def parse_metrics(text: str, keep: Callable[[str], bool]) -> list[Sample]:
    """The samples of the Prometheus text `text` whose metric name `keep` accepts."""
    out: list[Sample] = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or not keep(m.group(1)):
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def metric_delta(before: list[Sample], after: list[Sample]) -> list[Sample]:
    old = {(n, tuple(sorted(lab.items()))): v for n, lab, v in before}
    return [(n, lab, v - old.get((n, tuple(sorted(lab.items()))), 0.0)) for n, lab, v in after]


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over cumulative bucket counts {upper bound: count}."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return float("nan")
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def api_latency(delta: list[Sample], verb: str, subresource: str) -> tuple[float, float]:
    buckets: dict[float, float] = {}
    for name, lab, value in delta:
        if (
            name == "apiserver_request_duration_seconds_bucket"
            and lab.get("resource") == "mapreducejobs"
            and lab.get("verb") == verb
            and lab.get("subresource", "") == subresource
        ):
            bound = float(lab["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return (
        1000 * histogram_quantile(0.5, buckets),
        1000 * histogram_quantile(0.99, buckets),
    )


def api_counts(delta: list[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, lab, value in delta:
        if name == "apiserver_request_total" and lab.get("resource") == "mapreducejobs":
            verb = lab.get("verb", "?")
            counts[verb] = counts.get(verb, 0) + int(value)
            code = lab.get("code", "")
            if code == "422" or code.startswith("5"):
                counts[code] = counts.get(code, 0) + int(value)
    return counts


def watch_bytes(delta: list[Sample]) -> int:
    return int(
        sum(
            v
            for n, lab, v in delta
            if n == "apiserver_watch_events_sizes_sum" and lab.get("resource") == "mapreducejobs"
        )
    )


def etcd_requests(delta: list[Sample]) -> dict[str, int]:
    """The apiserver's requests to etcd for MapReduceJobs, by operation (get, update, ...)."""
    counts: dict[str, int] = {}
    for name, lab, value in delta:
        if name == "etcd_request_duration_seconds_count" and lab.get("resource") == "mapreducejobs":
            op = lab.get("operation", "?")
            counts[op] = counts.get(op, 0) + int(value)
    return counts


METRICS = (
    "apiserver_request_total",
    "apiserver_request_duration_seconds_bucket",
    "apiserver_watch_events_sizes_sum",
    "etcd_request_duration_seconds_count",
)


def scrape(cluster: Devcluster) -> list[Sample]:
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    return parse_metrics(text, lambda name: name in METRICS)


# -- CPU time from /proc ------------------------------------------------------------------


def proc_times(pid: int) -> tuple[float, float] | None:
    """(own user+sys, waited-for children's user+sys) CPU seconds of a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    children = (int(fields[13]) + int(fields[14])) / CLK_TCK
    return own, children


def is_worker_of(pid: int, store: str) -> bool:
    """Whether `pid` is `kubemr shim` working on the job whose store URL is `store`."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        # python .venv/bin/kubemr shim, or kubemr shim; not the bwrap that started it; or
        # this script's own protocol-only worker
        protocol = len(argv) > 2 and argv[1].endswith(b"coordination.py") and argv[2] == b"--worker"
        if not protocol:
            if b"shim" not in argv[1:3] or os.path.basename(argv[0]) == b"bwrap":
                return False
            if not any(a.endswith(b"kubemr") for a in argv[:2]):
                return False
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"KUBEMR_STORE={store}".encode() in f.read().split(b"\0")
    except OSError:
        return False


class CpuSampler:
    """Samples CPU time of named processes and of a job's worker processes until stopped.

    A worker's last sample is taken at most `period` before it exits; its
    commands' CPU time reaches it (as children's time) when it reaps them.
    Every sample's totals are kept, so the CPU time of a window (the map
    phase) can be told apart from start-up and publishing."""

    def __init__(self, named: dict[str, int], store: str, period: float = 0.5) -> None:
        self.named = named
        self.store = store
        self.period = period
        self.first: dict[int, tuple[float, float]] = {}
        self.last: dict[int, tuple[float, float]] = {}
        self.workers: set[int] = set()
        self.history: list[tuple[float, dict[str, float]]] = []
        self._seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu")

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """Stop; CPU milliseconds by group over the sampled time."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.history[-1][1]

    def window(self, start: float, end: float) -> dict[str, float]:
        """CPU milliseconds by group between the samples nearest to `start` and `end`."""

        def at(t: float) -> dict[str, float]:
            return min(self.history, key=lambda h: abs(h[0] - t))[1]

        a, b = at(start), at(end)
        return {k: b[k] - a.get(k, 0.0) for k in b}

    def _totals(self) -> dict[str, float]:
        def used(pid: int, which: int) -> float:
            if pid not in self.last:
                return 0.0
            start = self.first.get(pid, (0.0, 0.0)) if pid not in self.workers else (0.0, 0.0)
            return 1000 * (self.last[pid][which] - start[which])

        out = {name: used(pid, 0) for name, pid in self.named.items()}
        out["workers"] = sum(used(pid, 0) for pid in self.workers)
        out["commands"] = sum(used(pid, 1) for pid in self.workers)
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def _sample(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid not in self._seen:
                self._seen.add(pid)
                if is_worker_of(pid, self.store):
                    self.workers.add(pid)
        for pid in [*self.named.values(), *self.workers]:
            times = proc_times(pid)
            if times is not None:
                self.first.setdefault(pid, times)
                self.last[pid] = times
        self.history.append((time.time(), self._totals()))


# -- watching the object ------------------------------------------------------------------


class ObjectWatch:
    """Watches one MapReduceJob: every version's size, and when each phase was first seen."""

    def __init__(self, api: Any, namespace: str, name: str, version: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.version = version
        self.phases: dict[str, float] = {}
        self.max_bytes = 0
        self.versions = 0
        self.total_bytes = 0
        self.done = threading.Event()
        self.error: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name="watch")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                self._watch_once()
            except Exception as exc:  # a dropped watch: watch again from the last version
                self.error.append(str(exc))
                time.sleep(0.5)

    def _watch_once(self) -> None:
        from kubernetes import client

        custom = client.CustomObjectsApi(self.api)
        response = custom.list_namespaced_custom_object(
            "kubemr.io",
            "v1alpha1",
            self.namespace,
            "mapreducejobs",
            field_selector=f"metadata.name={self.name}",
            watch=True,
            resource_version=self.version,
            allow_watch_bookmarks=False,
            timeout_seconds=300,
            _preload_content=False,
        )
        try:
            for line in _lines(response.stream(1 << 16)):
                self._event(line, time.time())
                if self.done.is_set():
                    return
        finally:
            response.release_conn()

    def _event(self, line: bytes, now: float) -> None:
        start = line.find(b'"object":')
        if line.startswith(b'{"type":"ERROR"') or start < 0:
            raise RuntimeError(line[:300].decode(errors="replace"))
        size = len(line) - start - len(b'"object":') - 1
        version = VERSION.search(line)
        if version:
            self.version = version.group(1).decode()
        self.versions += 1
        self.total_bytes += size
        self.max_bytes = max(self.max_bytes, size)
        phase = PHASE.search(line)
        if phase:
            self.phases.setdefault(phase.group(1).decode(), now)
            if phase.group(1) in (b"Succeeded", b"Failed"):
                self.done.set()

    def stop(self) -> None:
        self.done.set()


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            yield pending[:end]
            pending = pending[end + 1 :]


# -- one job ------------------------------------------------------------------------------


@dataclass
class Request:
    """One worker request on the job document, from a trace line."""

    verb: str
    start: float
    ms: float
    code: int
    sent: int
    received: int
    what: str

    @property
    def end(self) -> float:
        return self.start + self.ms / 1000


def parse_trace(log: str) -> list[Request]:
    out: list[Request] = []
    for line in log.splitlines():
        if not line.startswith(TRACE_PREFIX):
            continue
        try:
            e = json.loads(line[len(TRACE_PREFIX) :])
            out.append(
                Request(e["v"], e["t"], e["ms"], e["code"], e["out"], e["in"], e.get("what", ""))
            )
        except (ValueError, KeyError, TypeError):
            continue
    return out


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    """(p50, p99), nearest rank."""
    if not values:
        return float("nan"), float("nan")
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return rank(0.5), rank(0.99)


@dataclass
class Bench:
    """Everything shared by the jobs of one benchmark run."""

    cluster: Devcluster
    kube: Any  # kubemr.kube.Kube
    namespace: str
    bucket: str
    workers: int
    etcd_limit: int
    named_pids: dict[str, int]
    protocol: bool = False
    work: Path = Path("/tmp")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def manifest(self, tasks: int, rep: int) -> dict[str, Any]:
        env = [
            {"name": "KUBEMR_TRACE_FILE", "value": "-"},  # one line per request, in the pod log
            {"name": "PYTHONPATH", "value": str(REPO)},  # the kubemr of this checkout
        ]
        return {
            "apiVersion": "kubemr.io/v1alpha1",
            "kind": "MapReduceJob",
            "metadata": {"generateName": f"coord-{tasks}-", "namespace": self.namespace},
            "spec": {
                "replicas": self.workers,
                "inputs": [f"s3://{self.bucket}/input-{tasks}.txt"],
                "map": "cat >/dev/null",
                "splitSize": "1Ki",
                "output": f"s3://{self.bucket}/out-{tasks}-{rep}/",
                "storage": {"endpoint": self.cluster.env["AWS_ENDPOINT_URL"]},
                "keepIntermediate": True,
                "template": {"spec": {"containers": [{"name": "worker", "env": env}]}},
            },
        }

    def protocol_manifest(self, tasks: int) -> dict[str, Any]:
        return {
            "apiVersion": "kubemr.io/v1alpha1",
            "kind": "MapReduceJob",
            "metadata": {"generateName": f"proto-{tasks}-", "namespace": self.namespace},
            "spec": {
                "replicas": self.workers,
                "inputs": [f"opaque:{tasks} no-op tasks"],
                "map": "true",
                "output": "s3://unused/out/",
            },
        }

    def start_workers(self, name: str, tasks: int) -> None:
        """`workers` real worker processes on this machine, running the protocol with a
        runner that moves no data (see `worker_main`)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
        traces = self.work / name
        traces.mkdir(parents=True, exist_ok=True)
        env.update(
            KUBECONFIG=self.cluster.env["KUBECONFIG"],
            PYTHONPATH=str(REPO),
            KUBEMR_STORE=f"kube://{self.namespace}/{name}",
            KUBEMR_WORKERS=str(self.workers),
            KUBEMR_BENCH_TASKS=str(tasks),
        )
        self.procs = []
        for i in range(self.workers):
            env["KUBEMR_WORKER_ID"] = f"{name}-w{i}"
            env["KUBEMR_TRACE_FILE"] = str(traces / f"w{i}.trace")
            with open(traces / f"w{i}.log", "wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, __file__, "--worker"],
                        env=dict(env),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def run(self, tasks: int, rep: int, timeout: float) -> Outcome:
        before = scrape(self.cluster)
        created_at = time.time()
        if self.protocol:
            obj = self.kube.create_job(self.namespace, self.protocol_manifest(tasks))
            name = obj["metadata"]["name"]
            version = obj["metadata"]["resourceVersion"]
            try:
                obj = self.kube.patch_job_status(
                    self.namespace,
                    name,
                    [
                        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
                        {"op": "add", "path": "/status", "value": {"phase": "Pending"}},
                    ],
                )
            except Conflict:
                raise SystemExit(
                    "an operator took the job before the benchmark could: --protocol measures "
                    "workers alone; scale the kubemr-operator Deployment to 0 first."
                ) from None
        else:
            obj = self.kube.create_job(self.namespace, self.manifest(tasks, rep))
            name = obj["metadata"]["name"]
        watch = ObjectWatch(
            self.kube.api_client, self.namespace, name, obj["metadata"]["resourceVersion"]
        )
        watch.start()
        sampler = CpuSampler(dict(self.named_pids), f"kube://{self.namespace}/{name}")
        sampler.start()
        if self.protocol:
            self.start_workers(name, tasks)
        etcd = self.cluster.etcd_url()
        stopped = ""
        db_max = 0
        deadline = time.monotonic() + timeout
        while not watch.done.wait(2.0):
            size = etcd_db_size(etcd) if etcd else 0
            db_max = max(db_max, size)
            if time.monotonic() > deadline:
                stopped = f"stopped after {timeout:.0f}s (--timeout)"
            elif size > self.etcd_limit:
                stopped = (
                    f"stopped: the etcd database reached {size / 2**20:.0f} MiB "
                    f"(--etcd-limit-mib {self.etcd_limit // 2**20})"
                )
            if stopped:
                break
        finished_at = watch.phases.get("Succeeded") or watch.phases.get("Failed") or time.time()
        if not stopped:
            self._wait_workers_exit(name)
        requests = self._traces(name)  # before a stopped job's pods go away
        final = self.kube.get_job(self.namespace, name)
        stored = 0
        if etcd:
            key = f"/registry/kubemr.io/mapreducejobs/{self.namespace}/{name}"
            stored = etcd_value_size(etcd, key)
        if stopped:
            self.kube.delete_job(self.namespace, name)
            self._wait_workers_exit(name)
        watch.stop()
        sampler.stop()
        delta = metric_delta(before, scrape(self.cluster))
        phase = final.get("status", {}).get("phase")
        if not stopped and phase != "Succeeded":
            stopped = f"ended {phase}: {final.get('status', {}).get('message')}"
        succeeded = phase == "Succeeded" and not stopped
        committed = state.counts(final, "map")[0] if not succeeded else tasks
        out = self._outcome(
            tasks, watch, requests, delta, sampler, created_at, finished_at, succeeded, committed
        )
        out.stored_bytes = stored
        out.etcd_db_max = db_max
        out.stopped = stopped
        if watch.error:
            out.notes.append(f"the watch was restarted {len(watch.error)} time(s)")
        self.kube.delete_job(self.namespace, name)
        return out

    def _wait_workers_exit(self, name: str, timeout: float = 120) -> None:
        """Wait until the job's worker pods have ended (or are gone): all their CPU time counts."""
        deadline = time.monotonic() + timeout
        if self.protocol:
            for proc in self.procs:
                try:
                    proc.wait(max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            return
        while time.monotonic() < deadline:
            pods = self.kube.list_pods(self.namespace, f"kubemr.io/job={name}")
            ended = ("Succeeded", "Failed")
            if all(p.get("status", {}).get("phase") in ended for p in pods):
                return
            time.sleep(0.5)

    def _traces(self, name: str) -> list[Request]:
        out: list[Request] = []
        if self.protocol:
            for path in sorted((self.work / name).glob("*.trace")):
                out.extend(parse_trace(path.read_text(errors="replace")))
            return out
        for pod in self.kube.list_pods(self.namespace, f"kubemr.io/job={name}"):
            log = self.kube.pod_log(self.namespace, pod["metadata"]["name"], "worker")
            out.extend(parse_trace(log))
        return out

    def _outcome(
        self,
        tasks: int,
        watch: ObjectWatch,
        requests: list[Request],
        delta: list[Sample],
        sampler: CpuSampler,
        created_at: float,
        finished_at: float,
        succeeded: bool,
        committed: int,
    ) -> Outcome:
        ok = [r for r in requests if 200 <= r.code < 300]
        mapping = [r.end for r in ok if r.verb == "PATCH" and "phase=Mapping" in r.what]
        commits = [
            r.end
            for r in ok
            if r.verb == "PATCH" and (MAP_COMMIT.search(r.what) or MAP_END.search(r.what))
        ]
        done = committed
        notes: list[str] = []
        if mapping and commits:
            start, end = min(mapping), max(commits)
        else:  # no traces: the watch's view (the last commit is just before Publishing)
            notes.append("map phase from the watch (no worker traces)")
            start = watch.phases.get("Mapping", created_at)
            end = watch.phases.get("Publishing", finished_at)
        failed = [r for r in requests if not 200 <= r.code < 300 and r.code != 422]
        if failed:
            codes = sorted({r.code for r in failed})
            notes.append(f"{len(failed)} request(s) failed (HTTP {codes}; 0: no answer)")
        map_s = end - start
        patches = [r for r in requests if r.verb == "PATCH"]
        gets = [r for r in requests if r.verb == "GET"]
        return Outcome(
            tasks=tasks,
            workers=self.workers,
            map_s=map_s,
            job_s=finished_at - created_at,
            patch_ms=percentiles([r.ms for r in patches]),
            get_ms=percentiles([r.ms for r in gets]),
            api_patch_ms=api_latency(delta, "PATCH", "status"),
            api_get_ms=api_latency(delta, "GET", ""),
            gets=len(gets),
            patches=len(patches),
            conflicts=sum(1 for r in patches if r.code == 422),
            received=sum(r.received for r in requests),
            sent=sum(r.sent for r in requests),
            watch_bytes=watch_bytes(delta),
            max_bytes=watch.max_bytes,
            stored_bytes=0,
            versions=watch.versions,
            written_bytes=watch.total_bytes,
            protocol=self.protocol,
            api_requests=api_counts(delta),
            etcd_requests=etcd_requests(delta),
            etcd_db_max=0,
            cpu_ms=sampler.history[-1][1],
            map_cpu_ms=sampler.window(start, end),
            done=done,
            notes=notes,
            phases={k: round(v - created_at, 3) for k, v in watch.phases.items()},
        )


# -- set-up -------------------------------------------------------------------------------


def empty_bucket(s3: Any, bucket: str) -> None:
    """Delete the bucket and everything in it (best effort)."""
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=bucket)
    except Exception as exc:  # leftovers go with the devcluster's state
        print(f"could not remove bucket {bucket}: {exc}", file=sys.stderr)


def make_input(s3: Any, bucket: str, tasks: int) -> None:
    """T KiB of 16-byte lines: with splitSize 1Ki, exactly T splits of 64 whole lines."""
    lines = tasks * 1024 // LINE_BYTES
    body = b"".join(b"line %010d\n" % i for i in range(lines))
    assert len(body) == tasks * 1024
    s3.put_object(Bucket=bucket, Key=f"input-{tasks}.txt", Body=body)


def ensure_crd(cluster: Devcluster) -> None:
    """Install the CRD if the cluster has none (an installed one is left as it is)."""
    have = cluster.kubectl("get", "crd", "mapreducejobs.kubemr.io", check=False)
    if have.returncode != 0:
        crd = REPO / "manifests" / "crd.yaml"
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/mapreducejobs.kubemr.io", "--timeout=60s"
        )


def other_operators(cluster: Devcluster) -> str:
    """A note if an operator Deployment also watches every namespace (it would act on our jobs)."""
    out = cluster.kubectl(
        "get",
        "deployments",
        "-A",
        "-l",
        "app.kubernetes.io/name=kubemr-operator",
        "-o",
        "jsonpath={.items[*].status.readyReplicas}",
        check=False,
    ).stdout.split()
    ready = sum(int(x) for x in out if x.isdigit())
    return f"{ready} operator pod(s) of a kubemr-operator Deployment also ran" if ready else ""


def start_operator(cluster: Devcluster, namespace: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
    env.update(
        KUBEMR_IMAGE="kubemr/shim:latest",
        PYTHONPATH=str(REPO),
        KUBECONFIG=cluster.env["KUBECONFIG"],
    )
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kubemr", "operator", "-n", namespace],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_namespace_ready(cluster: Devcluster, namespace: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sa = cluster.kubectl("-n", namespace, "get", "sa", "default", check=False)
        if sa.returncode == 0:
            return
        time.sleep(0.3)
    raise SystemExit(f"namespace {namespace} has no default ServiceAccount after 60s")


# -- report -------------------------------------------------------------------------------


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    if len(xs) < 2:
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def median_outcome(runs: list[Outcome]) -> dict[str, Any]:
    """Medians of a T's runs, as plain numbers for the table, JSON and plot."""

    def med(get: Callable[[Outcome], float]) -> float:
        return statistics.median(get(o) for o in runs)

    tasks = runs[0].tasks
    # --json files of earlier versions of this script hold the whole job's CPU time only
    whole = not any(o.map_cpu_ms for o in runs)
    cpu_keys = sorted({k for o in runs for k in (o.cpu_ms if whole else o.map_cpu_ms)})

    def per(o: Outcome) -> int:
        """Per-task figures count the tasks committed (all, unless a job was stopped)."""
        return max(o.done, 1)

    def cpu_per_task(key: str) -> float:
        return statistics.median(
            (o.cpu_ms if whole else o.map_cpu_ms).get(key, 0.0) / per(o) for o in runs
        )

    return {
        "tasks": tasks,
        "workers": runs[0].workers,
        "runs": len(runs),
        "complete": all(o.complete for o in runs),
        "done": med(lambda o: o.done),
        "measured_map_s": med(lambda o: o.map_s),
        "map_s": med(lambda o: o.projected_map_s),
        "tasks_per_s": med(lambda o: o.rate),
        "job_s": med(lambda o: o.job_s),
        "patch_ms": [med(lambda o: o.patch_ms[0]), med(lambda o: o.patch_ms[1])],
        "get_ms": [med(lambda o: o.get_ms[0]), med(lambda o: o.get_ms[1])],
        "api_patch_ms": [med(lambda o: o.api_patch_ms[0]), med(lambda o: o.api_patch_ms[1])],
        "api_get_ms": [med(lambda o: o.api_get_ms[0]), med(lambda o: o.api_get_ms[1])],
        "conflicts_per_task": med(lambda o: o.conflicts / per(o)),
        "gets_per_task": med(lambda o: o.gets / per(o)),
        "patches_per_task": med(lambda o: o.patches / per(o)),
        "kib_in_per_task": med(lambda o: o.received / per(o) / 1024),
        "kib_out_per_task": med(lambda o: o.sent / per(o) / 1024),
        "watch_kib_per_task": med(lambda o: o.watch_bytes / per(o) / 1024),
        "versions_per_task": med(lambda o: o.versions / per(o)),
        "written_kib_per_task": med(lambda o: o.written_bytes / per(o) / 1024),
        "coordination_cpu_s": med(
            lambda o: (
                sum((o.cpu_ms if whole else o.map_cpu_ms).get(k, 0.0) for k in COORDINATION) / 1000
            )
        ),
        "protocol": all(o.protocol for o in runs),
        "etcd_updates_per_task": med(lambda o: o.etcd_requests.get("update", 0) / per(o)),
        "etcd_db_max_mib": med(lambda o: o.etcd_db_max / 2**20),
        "max_kib": med(lambda o: o.max_bytes / 1024),
        "stored_kib": med(lambda o: o.stored_bytes / 1024),
        "cpu_ms_per_task": {k: cpu_per_task(k) for k in cpu_keys},  # in the map phase
        "cpu_of_whole_job": whole,
        "job_cpu_s": {
            k: statistics.median(o.cpu_ms.get(k, 0.0) / 1000 for o in runs)
            for k in sorted({k for o in runs for k in o.cpu_ms})
        },
        "api_requests": {
            k: statistics.median(o.api_requests.get(k, 0) for o in runs)
            for k in sorted({k for o in runs for k in o.api_requests})
        },
    }


WIDTHS = (9, 6, 7, 6, 6, 6)
#: The process groups whose CPU time is the cost of coordination (not of the data path).
COORDINATION = ("workers", "kube-apiserver", "etcd", "operator")


def print_tables(rows: list[dict[str, Any]], growth: float, measured_growth: float) -> None:
    def ms(v: float) -> str:
        return f"{v:.0f}" if v < 10_000 else f"{v / 1000:.0f}s"

    def pair(v: Sequence[float]) -> str:
        return f"{ms(v[0])}/{ms(v[1])}"

    head = (
        f"{'T':>6}{'map s':>9}{'tasks/s':>9}{'job s':>8}{'PATCH ms':>11}{'(api)':>11}"
        f"{'GET ms':>10}{'(api)':>10}{'conflicts':>11}{'max KiB':>9}{'stored':>8}"
    )
    print(
        "runs per T (the figures are medians): "
        + ", ".join(f"{r['tasks']}: {r['runs']}" for r in rows)
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        map_s = f"{r['map_s']:.1f}" if r["complete"] else f"~{r['map_s']:.0f}"
        job_s = f"{r['job_s']:.1f}" if r["complete"] else "-"
        print(
            f"{r['tasks']:>6}{map_s:>9}{r['tasks_per_s']:>9.1f}{job_s:>8}"
            f"{pair(r['patch_ms']):>11}{pair(r['api_patch_ms']):>11}{pair(r['get_ms']):>10}"
            f"{pair(r['api_get_ms']):>10}{r['conflicts_per_task']:>11.3f}"
            f"{r['max_kib']:>9.1f}{r['stored_kib']:>8.1f}"
        )
    print(f"\ngrowth exponent of map s in T (least-squares slope of log-log): {growth:.2f}")
    cpu_growth = slope(
        [(r["tasks"], r["coordination_cpu_s"]) for r in rows if r.get("coordination_cpu_s")]
    )
    print(
        "growth exponent of coordination CPU in T (workers, apiserver, etcd, operator in the "
        f"map phase): {cpu_growth:.2f}"
    )
    stopped = [r for r in rows if not r["complete"]]
    if stopped:
        so_far = ", ".join(
            f"T={r['tasks']}: {r['done']:.0f} tasks in {r['measured_map_s']:.0f}s" for r in stopped
        )
        print(
            "  (~: a job stopped before it ended; its map s is projected from its rate so far, "
            f"{so_far};\n  over the jobs that ended only: {measured_growth:.2f})"
        )
    print("PATCH/GET ms: p50/p99 as the workers saw them, (api) as the apiserver did.")
    whole = any(r.get("cpu_of_whole_job") for r in rows)
    cpu_label = "CPU ms*" if whole else "CPU ms:"
    groups = ["workers", "commands", "kube-apiserver", "etcd", "operator", "minio"]
    rest = ["kube-controller-manager", "nodeagent"]
    head2 = (
        f"\n{'T':>6}{'GET':>6}{'PATCH':>7}{'in KiB':>8}{'out KiB':>8}{'watch KiB':>10}"
        f"{'writes':>7}{'wr KiB':>7}{'txns':>6} | {cpu_label}{'workers':>8}{'cmds':>6}"
        f"{'apisrv':>7}{'etcd':>6}{'oper':>6}{'minio':>6}{'other':>6}"
    )
    print(head2)
    print("-" * len(head2))
    for r in rows:
        cpu = r["cpu_ms_per_task"]
        other = sum(cpu.get(k, 0.0) for k in rest)
        print(
            f"{r['tasks']:>6}{r['gets_per_task']:>6.2f}{r['patches_per_task']:>7.2f}"
            f"{r['kib_in_per_task']:>8.1f}{r['kib_out_per_task']:>8.2f}"
            f"{r['watch_kib_per_task']:>10.1f}{r['versions_per_task']:>7.3f}"
            f"{r.get('written_kib_per_task', 0.0):>7.2f}"
            f"{r['etcd_updates_per_task']:>6.2f} |       "
            + "".join(f"{cpu.get(k, 0.0):>{w}.1f}" for k, w in zip(groups, WIDTHS, strict=True))
            + f"{other:>6.1f}"
        )
    print(
        """
per map task committed: the workers' GETs and PATCHes, KiB they received and sent, KiB the
apiserver sent to MapReduceJob watchers, versions of the object written (writes) and their KiB
(wr KiB: what etcd stores, every write being the whole object), the apiserver's update
transactions on etcd for them (txns: a write that lost to another at etcd is retried inside the
apiserver); CPU ms of each process group during the map phase (cmds: the workers' sh/cat;
other: controller-manager and node agent)."""
    )
    if whole:
        print("CPU ms*: over the whole job (a --json file of an earlier version of this script).")


def plot(rows: list[dict[str, Any]], growth: float, path: str) -> None:
    """coordination time and object size against T, log-log."""
    import matplotlib  # type: ignore[import-not-found,unused-ignore]  # only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    ts = [r["tasks"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 4.2))
    left.loglog(ts, [r["map_s"] for r in rows], "o-", color="#c4694a", label="map phase")
    projected = [r for r in rows if not r["complete"]]
    if projected:
        left.loglog(
            [r["tasks"] for r in projected],
            [r["map_s"] for r in projected],
            "o",
            markerfacecolor="white",
            color="#c4694a",
            label="projected (job stopped)",
        )
    ended = [r for r in rows if r["complete"]]
    left.loglog(
        [r["tasks"] for r in ended], [r["job_s"] for r in ended], "s--", color="#4a7fc4",
        label="whole job",
    )  # fmt: skip
    t0, y0 = ts[0], rows[0]["map_s"]
    left.loglog(
        [t0, ts[-1]], [y0, y0 * ts[-1] / t0], ":", color="#777777", label="linear from T[0]"
    )
    left.set_xlabel("map tasks T")
    left.set_ylabel("seconds")
    left.set_title(f"coordination time (slope {growth:.2f})", fontsize=10)
    left.legend(fontsize=8)
    right.loglog(ts, [r["max_kib"] for r in rows], "o-", color="#2f5f9e", label="largest")
    right.axhline(1024, color="#c4694a", linestyle="--", label="1 MiB")
    right.set_xlabel("map tasks T")
    right.set_ylabel("KiB")
    right.set_title("MapReduceJob object size", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_series(series: dict[str, list[dict[str, Any]]], path: str) -> None:
    """Several benchmark runs (by label) on one log-log figure: map phase and object size."""
    import matplotlib  # type: ignore[import-not-found,unused-ignore]  # only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4))
    markers = "osd^v<>"
    for i, (label, rows) in enumerate(series.items()):
        ts = [r["tasks"] for r in rows]
        left.loglog(ts, [r["map_s"] for r in rows], markers[i % 7] + "-", label=label)
        right.loglog(ts, [r["max_kib"] for r in rows], markers[i % 7] + "-", label=label)
    left.set_xlabel("map tasks T")
    left.set_ylabel("map phase, seconds")
    left.set_title("time to coordinate T tasks", fontsize=10)
    left.legend(fontsize=7)
    right.axhline(1536, color="#c4694a", linestyle="--", linewidth=1, label="etcd's 1.5 MiB limit")
    right.axhline(64, color="#777777", linestyle=":", linewidth=1, label="the 64 KiB bound")
    right.set_xlabel("map tasks T")
    right.set_ylabel("KiB")
    right.set_title("largest version of the MapReduceJob", fontsize=10)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def read_series(spec: str) -> dict[str, list[dict[str, Any]]]:
    """`LABEL=FILE;LABEL=FILE`: the rows of --json files (or files holding only "rows")."""
    out: dict[str, list[dict[str, Any]]] = {}
    for item in spec.split(";"):
        label, _, path = item.rpartition("=")
        rows = json.loads(Path(path).read_text())["rows"]
        out[label or path] = sorted(rows, key=lambda r: r["tasks"])
    return out


def in_plot_venv(args: list[str]) -> None:
    """Run this script with `args` where matplotlib imports: here, or a venv of its own."""
    venv = CACHE / "plot-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"installing matplotlib into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "matplotlib"], check=True)
    subprocess.run([str(python), __file__, *args], check=True)


def draw(rows: list[dict[str, Any]], growth: float, path: str) -> None:
    """Plot here if matplotlib imports, else in a virtual environment of its own."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        data = json.dumps({"rows": rows, "growth": growth})
        in_plot_venv(["--plot-from", data, "--plot", path])
        return
    plot(rows, growth, path)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def report(
    outcomes: dict[int, list[Outcome]],
    notes: list[str],
    json_path: str | None,
    plot_path: str | None,
) -> int:
    """Print the tables of `outcomes`; write them as JSON and plot them if asked."""
    rows = [median_outcome(runs) for _, runs in sorted(outcomes.items())]
    rows = [r for r in rows if r["done"] > 0]
    if not rows:
        print("no map task was committed", file=sys.stderr)
        return 1
    growth = slope([(r["tasks"], r["map_s"]) for r in rows])
    measured = slope([(r["tasks"], r["map_s"]) for r in rows if r["complete"]])
    print_tables(rows, growth, measured)
    for note in notes:
        print(f"note: {note}")
    if json_path:
        every = {str(t): [asdict(o) for o in runs] for t, runs in outcomes.items()}
        data = {"rows": rows, "growth": growth, "runs": every, "notes": notes}
        data["growth_of_complete_jobs"] = measured
        Path(json_path).write_text(json.dumps(data, indent=1))
    if plot_path and len(rows) > 1:
        draw(rows, growth, plot_path)
        print(f"plot: {plot_path}")
    return 0


def reread(paths: str) -> tuple[dict[int, list[Outcome]], list[str]]:
    """The runs and notes of --json files (comma-separated), together."""
    outcomes: dict[int, list[Outcome]] = {}
    notes: list[str] = []
    for path in paths.split(","):
        data = json.loads(Path(path).read_text())
        for t, runs in data["runs"].items():
            outcomes.setdefault(int(t), []).extend(Outcome(**run) for run in runs)
        notes.extend(data.get("notes", []))
    return outcomes, notes


# -- the protocol-only worker ---------------------------------------------------------------


def worker_main() -> int:
    """A real worker (`kubemr.shim.worker.Worker`: decide, claim, renew, commit, the watch, the
    lease keeper, against the real apiserver) whose `TaskRunner` moves no data: planning
    plans KUBEMR_BENCH_TASKS map tasks, a map task does nothing (for KUBEMR_BENCH_PAUSE
    seconds; KUBEMR_BENCH_RAN records what ran: `kubemr.shim.tasks.NoData`), publishing
    places nothing.
    This is the interface where a worker hands a task to the data path, so what is measured
    is exactly what coordination costs a job, and nothing of what its commands cost."""
    import logging

    from kubemr.shim import config as shim_config
    from kubemr.shim.tasks import NoData
    from kubemr.shim.worker import Worker

    config = shim_config.from_env()
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s {config.worker_id} %(levelname)s %(message)s",
    )
    runner = NoData(
        int(os.environ["KUBEMR_BENCH_TASKS"]),
        os.environ.get("KUBEMR_BENCH_RAN"),
        float(os.environ.get("KUBEMR_BENCH_PAUSE") or 0),
    )
    worker = Worker(config, runner=runner)
    worker.handle_signals()
    try:
        code = worker.run()
    finally:
        worker.store.close()
    print(
        f"{config.worker_id}: {worker.tally.claims} claims, {worker.tally.tasks} tasks, "
        f"{worker.tally.takeovers} takeovers, {worker.writer.conflicts} lost races",
        flush=True,
    )
    return code


# -- main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[100, 1000, 10000],
        help="map task counts, comma-separated (default 100,1000,10000)",
    )
    parser.add_argument("--workers", type=int, default=8, help="worker pods (default 8)")
    parser.add_argument("--reps", type=int, default=1, help="jobs per task count (median)")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG: time and size against T")
    parser.add_argument("--json", metavar="FILE", help="write every run's figures as JSON")
    parser.add_argument(
        "--devcluster",
        type=Path,
        default=REPO,
        help="the checkout whose hack/devcluster to use (default: this one)",
    )
    parser.add_argument(
        "--etcd-limit-mib",
        type=int,
        default=1280,
        help="stop a job once etcd's database is this large (default 1280; etcd's quota is 2048)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="stop a job that has not ended after this many seconds and report its rate so far "
        "(default 3600)",
    )
    parser.add_argument(
        "--report",
        metavar="FILE",
        help="run nothing: print the tables (and --plot, --json) again from --json files "
        "(comma-separated: their runs together)",
    )
    parser.add_argument(
        "--protocol",
        action="store_true",
        help="protocol only: real worker processes on this machine against the real apiserver, "
        "with tasks that do nothing and no operator, pods or storage",
    )
    parser.add_argument(
        "--series",
        metavar="LABEL=FILE;...",
        help="run nothing: plot (--plot) the rows of several --json files, one line each",
    )
    parser.add_argument("--plot-from", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main()
    if args.plot_from:
        data = json.loads(args.plot_from)
        plot(data["rows"], data["growth"], args.plot)
        return 0
    if args.series:
        if not args.plot:
            parser.error("--series needs --plot FILE")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            in_plot_venv(["--series", args.series, "--plot", args.plot])
            return 0
        plot_series(read_series(args.series), args.plot)
        print(f"plot: {args.plot}")
        return 0
    if args.report:
        return report(*reread(args.report), args.json, args.plot)

    sys.path.insert(0, str(REPO))
    import boto3

    from kubemr.kube import Kube, KubeConfig

    cluster = Devcluster(args.devcluster.resolve())
    cluster.acquire()
    operator: subprocess.Popen[bytes] | None = None
    kube: Any = None
    s3: Any = None
    namespace = f"bench-coord-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="kubemr-bench-coord-"))
    try:
        kube = Kube(KubeConfig(kubeconfig=cluster.env["KUBECONFIG"]))
        ensure_crd(cluster)
        cluster.kubectl("create", "namespace", namespace)
        wait_namespace_ready(cluster, namespace)
        cluster.kubectl(
            "-n",
            namespace,
            "create",
            "secret",
            "generic",
            "aws",
            f"--from-literal=aws_access_key_id={cluster.env['AWS_ACCESS_KEY_ID']}",
            f"--from-literal=aws_secret_access_key={cluster.env['AWS_SECRET_ACCESS_KEY']}",
        )
        s3 = boto3.client(
            "s3",
            endpoint_url=cluster.env["AWS_ENDPOINT_URL"],
            aws_access_key_id=cluster.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=cluster.env["AWS_SECRET_ACCESS_KEY"],
            region_name=cluster.env.get("AWS_REGION", "us-east-1"),
        )
        bucket = namespace
        named = {name: pid for name in CONTROL_PLANE if (pid := cluster.pid(name)) is not None}
        if not args.protocol:
            s3.create_bucket(Bucket=bucket)
            for tasks in args.tasks:
                make_input(s3, bucket, tasks)
            operator = start_operator(cluster, namespace, work / "operator.log")
            named["operator"] = operator.pid
        bench = Bench(
            cluster,
            kube,
            namespace,
            bucket,
            args.workers,
            args.etcd_limit_mib << 20,
            named,
            protocol=args.protocol,
            work=work,
        )
        what = (
            f"protocol only: {args.workers} worker processes, no-op tasks"
            if args.protocol
            else f"map-only jobs of `cat >/dev/null` tasks, {args.workers} worker pods"
        )
        print(
            f"{what}, {args.reps} rep(s); namespace {namespace}; {os.cpu_count()} CPU(s); "
            f"load average {load()}",
            flush=True,
        )
        outcomes: dict[int, list[Outcome]] = {}
        notes: list[str] = []
        for rep in range(args.reps):
            for tasks in args.tasks:
                o = bench.run(tasks, rep, timeout=args.timeout)
                outcomes.setdefault(tasks, []).append(o)
                if o.stopped:
                    notes.append(f"T={tasks} rep {rep + 1}: {o.stopped}")
                notes.extend(f"T={tasks} rep {rep + 1}: {n}" for n in o.notes)
                print(
                    f"  T={tasks} rep {rep + 1}: {o.done} tasks in {o.map_s:.1f}s "
                    f"({o.rate:.1f} tasks/s), job {o.job_s:.1f}s, {o.conflicts} conflicts, "
                    f"max object {o.max_bytes / 1024:.1f} KiB"
                    + (f"; {o.stopped}" if o.stopped else ""),
                    flush=True,
                )
        if other := other_operators(cluster):
            notes.append(other)
        print(f"load average after: {load()}\n")
        return report(outcomes, notes, args.json, args.plot)
    finally:
        if operator is not None:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                operator.kill()
        if s3 is not None and not args.protocol:
            empty_bucket(s3, namespace)
        if kube is not None:
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
            kube.close()
        cluster.release()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    sys.exit(main())
