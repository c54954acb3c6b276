"""Fixtures for tests against a real control plane started by ``hack/devcluster``.

The cluster comes up once per test session, or an already running one is
reused; every test gets a namespace of its own that is deleted afterwards.
Outside CI a machine without Go or bubblewrap skips these tests with one
line saying how to enable them; in CI (``CI=true``) that is a failure, never
a skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from devcluster_support import Cluster, in_ci, read_env, wait_until
from kubernetes import config
from operator_support import CORPUS, LEASE_SECONDS, kubectl

ROOT = Path(__file__).resolve().parents[2]
DEVCLUSTER = ROOT / "hack" / "devcluster"
ENV_FILE = ROOT / ".devcluster" / "env"


def _acquire() -> dict[str, str]:
    """Make sure a cluster runs and count this session as one of its users."""
    running = subprocess.run([str(DEVCLUSTER), "status"], capture_output=True).returncode == 0
    if not running:
        check = subprocess.run([str(DEVCLUSTER), "check"], capture_output=True, text=True)
        if check.returncode != 0:
            reason = f"cluster tests need hack/devcluster: {check.stdout.strip()}"
            if in_ci():
                pytest.fail(f"{reason} (CI must run them, not skip them)")
            pytest.skip(reason)
    up = subprocess.run(
        [str(DEVCLUSTER), "acquire", str(os.getpid())],
        capture_output=True,
        text=True,
        timeout=45 * 60,
    )
    if up.returncode != 0:
        pytest.fail(f"hack/devcluster up failed:\n{up.stderr[-4000:]}")
    return read_env(ENV_FILE)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The running devcluster (started for this session if none runs).

    A cluster this or another test session started is stopped when its last
    session ends; one started by hand with ``hack/devcluster up`` stays up.
    """
    env = _acquire()
    api = config.new_client_from_config(config_file=env["KUBECONFIG"])
    try:
        yield Cluster(env=env, api=api)
    finally:
        api.close()
        subprocess.run(
            [str(DEVCLUSTER), "release", str(os.getpid())], capture_output=True, check=False
        )


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


# Shared by the operator tests (kubemr installed, S3 and a corpus in it, a namespace with the
# S3 Secret) and the store tests (the CRD alone).

CRD = ROOT / "manifests" / "crd.yaml"


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    wait_until(
        "the MapReduceJob CRD to be established",
        lambda: (
            "True"
            in cluster.kubectl(
                "get",
                "crd",
                "mapreducejobs.kubemr.io",
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Established')].status}",
            ).stdout
        ),
        60,
    )


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Iterator[None]:
    """kubemr installed with `kubectl apply -k manifests/` (through operator-overlay/, which
    keeps its metrics and probes on 127.0.0.1), its operator pod running."""
    out = kubectl(
        cluster,
        "apply",
        "--server-side",
        "-k",
        str(ROOT / "tests" / "cluster" / "operator-overlay"),
    )
    assert "customresourcedefinition.apiextensions.k8s.io/mapreducejobs.kubemr.io" in out.stdout
    # Short leases, so a killed worker's task is taken over in seconds.
    kubectl(
        cluster,
        "-n",
        "kubemr-system",
        "set",
        "env",
        "deployment/kubemr-operator",
        f"KUBEMR_WORKER_LEASE_SECONDS={LEASE_SECONDS}",
        f"KUBEMR_S3_ENDPOINT={cluster.env['AWS_ENDPOINT_URL']}",
    )
    kubectl(
        cluster,
        "-n",
        "kubemr-system",
        "rollout",
        "status",
        "deployment/kubemr-operator",
        "--timeout=120s",
    )
    yield


@pytest.fixture(scope="module")
def s3(cluster: Cluster) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=cluster.env["AWS_ENDPOINT_URL"],
        aws_access_key_id=cluster.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=cluster.env["AWS_SECRET_ACCESS_KEY"],
        region_name=cluster.env.get("AWS_REGION", "us-east-1"),
    )


@pytest.fixture(scope="module")
def corpus(s3: Any) -> str:
    """The bash example's corpus in the devcluster's S3: s3://bucket/corpus/."""
    bucket = f"kubemr-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for path in CORPUS:
        s3.put_object(Bucket=bucket, Key=f"corpus/{path.name}", Body=path.read_bytes())
    return bucket


@pytest.fixture
def ns(cluster: Cluster, namespace: str, installed: None) -> str:
    """A namespace with the `aws` Secret for the devcluster's S3."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "aws", "namespace": namespace},
        "stringData": {
            "aws_access_key_id": cluster.env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": cluster.env["AWS_SECRET_ACCESS_KEY"],
        },
    }
    cluster.core.create_namespaced_secret(namespace, secret)
    return namespace


@pytest.fixture
def quiet_cluster_operator(cluster: Cluster) -> Any:
    """The installed operator (if another test module installed it) scaled to 0 and its pods
    gone, so that the test's own operator (or none) alone acts on its jobs; scaled back
    afterwards."""
    there = kubectl(
        cluster, "-n", "kubemr-system", "get", "deployment", "kubemr-operator", check=False
    )
    if there.returncode == 0:
        kubectl(
            cluster, "-n", "kubemr-system", "scale", "deployment/kubemr-operator", "--replicas=0"
        )
        wait_until(
            "the installed operator's pods to be gone",
            lambda: (
                not cluster.core.list_namespaced_pod(
                    "kubemr-system", label_selector="app.kubernetes.io/name=kubemr-operator"
                ).items
            ),
            90,
        )
    yield
    if there.returncode == 0:
        kubectl(
            cluster, "-n", "kubemr-system", "scale", "deployment/kubemr-operator", "--replicas=1"
        )
