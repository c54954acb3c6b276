"""The shim's configuration from its environment: defaults that depend on where it runs."""

from __future__ import annotations

from kubemr.shim.config import DEFAULT_POLL_SECONDS, LOCAL_POLL_SECONDS, from_env


def test_idle_workers_of_a_local_run_poll_often() -> None:
    local = from_env({"KUBEMR_STORE": "sqlite:///tmp/run/job.db"})
    assert local.poll_seconds == LOCAL_POLL_SECONDS <= 0.1
    cluster = from_env({"KUBEMR_STORE": "kube://default/wc"})
    assert cluster.poll_seconds == DEFAULT_POLL_SECONDS
    chosen = from_env({"KUBEMR_STORE": "sqlite:///x", "KUBEMR_POLL_SECONDS": "0.5"})
    assert chosen.poll_seconds == 0.5


def test_local_workers_share_the_cpus_among_their_sorts() -> None:
    import os

    cpus = len(os.sched_getaffinity(0))
    local = {"KUBEMR_STORE": "sqlite:///tmp/run/job.db"}
    assert from_env({**local, "KUBEMR_WORKERS": "1"}).sort_threads == cpus
    assert from_env({**local, "KUBEMR_WORKERS": str(cpus)}).sort_threads == 1
    assert from_env({**local, "KUBEMR_WORKERS": str(4 * cpus)}).sort_threads == 1
    assert from_env(local).sort_threads is None  # not knowing how many share them
    pod = {"KUBEMR_STORE": "kube://default/wc", "KUBEMR_WORKERS": "2"}
    assert from_env(pod).sort_threads is None  # a pod's CPUs are its own
    assert from_env({**pod, "KUBEMR_SORT_THREADS": "3"}).sort_threads == 3


def test_each_sort_runs_with_the_threads_the_config_gives_it() -> None:
    from kubemr.shim.attempt import sort_argv
    from kubemr.shim.job import Job

    doc = {"metadata": {"name": "wc"}, "spec": {"inputs": ["opaque:x"], "map": "cat"}}
    shared = from_env({"KUBEMR_STORE": "sqlite:///x", "KUBEMR_SORT_THREADS": "3"})
    assert "--parallel=3" in sort_argv(Job.from_doc(doc, shared))
    own = from_env({"KUBEMR_STORE": "kube://default/wc"})
    assert not [a for a in sort_argv(Job.from_doc(doc, own)) if a.startswith("--parallel")]
