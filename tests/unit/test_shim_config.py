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
