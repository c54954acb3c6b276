"""The shim's settings, read from the environment once, at the entrypoint.

A worker (a pod on a cluster, a child process of `kubemr run` here) is
configured only through its environment, so the same entrypoint runs in
both places. Nothing else in the shim reads the environment of its own
accord; the sidecar bridge reads only its own two settings
(KUBEMR_BRIDGE_GRACE, KUBEMR_BRIDGE_READY_TIMEOUT).
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubemr.errors import KubemrError

DEFAULT_LEASE_SECONDS = 30
DEFAULT_POLL_SECONDS = 1.0
#: An idle worker of a local run re-reads the job this often at most: a SQLite read costs
#: about a millisecond, and a worker that sleeps a whole second after the map phase ends
#: leaves a reduce task waiting that long (the apiserver default stays at one second).
LOCAL_POLL_SECONDS = 0.1
#: Each sort's buffer (its -S; KUBEMR_SORT_MEMORY). Small on purpose: GNU sort then sorts
#: runs that fit in the CPU's caches and merges them, which took 30% less CPU time on a
#: word count's map outputs than sorting each one whole in memory (docs/benchmarks.md).
DEFAULT_SORT_MEMORY = "16M"
#: The most tasks a worker claims at once on a cluster (see ShimConfig.batch).
CLUSTER_BATCH = 64
#: ... and on this machine, where a write of the job costs a millisecond.
LOCAL_BATCH = 8


class ConfigError(KubemrError):
    """The shim's environment is incomplete or malformed."""

    exit_code = 2


@dataclass(frozen=True)
class ShimConfig:
    """Everything a worker needs besides the job document."""

    store_url: str
    worker_id: str
    scratch: str
    workdir: str | None = None
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    poll_seconds: float = DEFAULT_POLL_SECONDS
    sort_memory: str = DEFAULT_SORT_MEMORY
    #: Threads of each `sort` (its --parallel; None: GNU sort's default, one per CPU). Local
    #: workers share the machine's CPUs, so each sort gets its share: threads of one sort
    #: competing with another worker's cost CPU time for nothing.
    sort_threads: int | None = None
    map_command: str | None = None
    combine_command: str | None = None
    reduce_command: str | None = None
    parent_pid: int | None = None
    #: An S3 endpoint that wins over spec.storage.endpoint: the CLI outside the cluster reaches
    #: S3 through $AWS_ENDPOINT_URL (a port-forward, say) where pods use the cluster's address.
    endpoint_override: str | None = None
    #: The environment user commands inherit (before KUBEMR_* task variables are added).
    base_env: Mapping[str, str] = field(default_factory=dict)
    #: Sidecar mode: the directory shared with the executor in the user's container, through
    #: which user commands run (None: they run here, with `sh -c`).
    executor: str | None = None
    #: Sidecar mode: how long to wait, once the job is over and the executor told to exit,
    #: for the pod to stop this container (a native sidecar that exited would be restarted).
    linger_seconds: float = 0.0
    #: The most map or reduce tasks one claim may take (state.batch_size). Every write of a
    #: MapReduceJob rewrites the whole object, so on a cluster claims are large; a local
    #: SQLite write is cheap, and there they are smaller.
    batch: int = 1
    #: How many workers share the job, when the spec's replicas does not say (a local run).
    workers: int | None = None

    @property
    def request_timeout(self) -> float:
        """The deadline of every request to the job store: a quarter of the lease, so that a
        hung request cannot outlast the renew deadline (two thirds of the lease)."""
        return max(1.0, self.lease_seconds / 4.0)


def _number(env: Mapping[str, str], name: str, default: float, low: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}.") from exc
    if value < low:
        raise ConfigError(f"{name} must be at least {low:g}, got {raw!r}.")
    return value


def from_env(env: Mapping[str, str] | None = None, *, for_worker: bool = True) -> ShimConfig:
    """Build the configuration from `env` (the process environment by default). With
    `for_worker` False, for the CLI's own use of a job's data (`kubemr replay`, `results`), which
    needs no job store of its own: `store_url` is then empty."""
    env = dict(os.environ if env is None else env)
    store = env.get("KUBEMR_STORE", "") if for_worker else ""
    if for_worker and not store:
        raise ConfigError(
            "KUBEMR_STORE is not set; the shim is started by `kubemr run` or by the operator, "
            "which point it at the job (sqlite:///path/job.db or kube://namespace/name)."
        )
    worker = env.get("KUBEMR_WORKER_ID") or (
        f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    )
    scratch = env.get("KUBEMR_SCRATCH") or os.path.join(tempfile.gettempdir(), f"kubemr-{worker}")
    parent = env.get("KUBEMR_PARENT_PID")
    passed = {k: v for k, v in env.items() if not k.startswith("KUBEMR_")}
    return ShimConfig(
        store_url=store,
        worker_id=worker,
        scratch=scratch,
        workdir=env.get("KUBEMR_WORKDIR") or None,
        lease_seconds=int(_number(env, "KUBEMR_LEASE_SECONDS", DEFAULT_LEASE_SECONDS, 2)),
        poll_seconds=_number(
            env,
            "KUBEMR_POLL_SECONDS",
            LOCAL_POLL_SECONDS if store.startswith("sqlite:") else DEFAULT_POLL_SECONDS,
            0.01,
        ),
        sort_memory=env.get("KUBEMR_SORT_MEMORY") or DEFAULT_SORT_MEMORY,
        sort_threads=_sort_threads(env, store),
        map_command=env.get("KUBEMR_MAP") or None,
        combine_command=env.get("KUBEMR_COMBINE") or None,
        reduce_command=env.get("KUBEMR_REDUCE") or None,
        parent_pid=int(parent) if parent and parent.isdigit() else None,
        base_env=passed,
        executor=env.get("KUBEMR_EXECUTOR") or None,
        linger_seconds=_number(env, "KUBEMR_LINGER_SECONDS", 0.0, 0.0),
        batch=int(
            _number(
                env,
                "KUBEMR_BATCH",
                LOCAL_BATCH if store.startswith("sqlite:") else CLUSTER_BATCH,
                1,
            )
        ),
        workers=int(_number(env, "KUBEMR_WORKERS", 0, 0)) or None,
    )


def _sort_threads(env: Mapping[str, str], store: str) -> int | None:
    """KUBEMR_SORT_THREADS; for local workers (a sqlite store, KUBEMR_WORKERS of them on this
    machine), the CPUs divided among them; else None."""
    if env.get("KUBEMR_SORT_THREADS"):
        return int(_number(env, "KUBEMR_SORT_THREADS", 1, 1))
    workers = int(_number(env, "KUBEMR_WORKERS", 0, 0))
    if not store.startswith("sqlite:") or not workers:
        return None
    return max(1, len(os.sched_getaffinity(0)) // workers)
