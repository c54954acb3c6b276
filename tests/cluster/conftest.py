"""Fixtures for tests against a real control plane started by ``hack/devcluster``.

The cluster comes up once per test session (or an already running one is
reused, and then left running); every test gets a namespace of its own that
is deleted afterwards. Outside CI a machine without Go or bubblewrap skips
these tests with one line saying how to enable them; in CI (``CI=true``)
that is a failure, never a skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from devcluster_support import Cluster, in_ci, missing_prerequisite, read_env, wait_until
from kubernetes import config  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
DEVCLUSTER = ROOT / "hack" / "devcluster"
ENV_FILE = ROOT / ".devcluster" / "env"


def _start() -> tuple[bool, dict[str, str]]:
    """Make sure a cluster runs; return (started here, its env)."""
    status = subprocess.run([str(DEVCLUSTER), "status"], capture_output=True, text=True)
    if status.returncode == 0 and ENV_FILE.exists():
        return False, read_env(ENV_FILE)
    reason = missing_prerequisite()
    if reason is not None:
        if in_ci():
            pytest.fail(f"{reason} (CI must run the cluster tests)")
        pytest.skip(reason)
    up = subprocess.run([str(DEVCLUSTER), "up"], capture_output=True, text=True, timeout=45 * 60)
    if up.returncode != 0:
        pytest.fail(f"hack/devcluster up failed:\n{up.stderr[-4000:]}")
    return True, read_env(ENV_FILE)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    started, env = _start()
    api = config.new_client_from_config(config_file=env["KUBECONFIG"])
    try:
        yield Cluster(env=env, api=api)
    finally:
        api.close()
        if started and not os.environ.get("KUBEMR_DEVCLUSTER_KEEP"):
            subprocess.run([str(DEVCLUSTER), "down"], capture_output=True, check=False)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace, ready for pods (its default ServiceAccount exists)."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40]
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    cluster.core.create_namespace({"metadata": {"name": name}})

    def ready() -> bool:
        names = {
            sa.metadata.name for sa in cluster.core.list_namespaced_service_account(name).items
        }
        maps = {cm.metadata.name for cm in cluster.core.list_namespaced_config_map(name).items}
        return "default" in names and "kube-root-ca.crt" in maps

    wait_until(f"namespace {name} to be ready", ready, 60)
    try:
        yield name
    finally:
        cluster.core.delete_namespace(name)
