"""The development cluster is a real one: API, controllers, pods, RBAC and S3.

Each test states one thing kubemr relies on and proves it against the real
kube-apiserver, kube-controller-manager, MinIO and the node agent that
``hack/devcluster up`` starts.
"""

from __future__ import annotations

import base64
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from devcluster_support import Cluster, wait_until
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.cluster

SHIM_IMAGE = "kubemr-shim:dev"  # any kubemr* image: the host's root with the project's venv


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": containers, **spec},
    }


def sh(name: str, script: str, image: str = "busybox", **more: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "command": ["sh", "-c", script], **more}


def test_readyz(cluster: Cluster) -> None:
    out = cluster.kubectl("get", "--raw", "/readyz")
    assert out.stdout.strip() == "ok"


def crd(group: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def test_crd_accepted_and_malformed_refused(cluster: Cluster) -> None:
    group = f"t{uuid.uuid4().hex[:6]}.devcluster.test"
    good = {
        "type": "object",
        "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}},
    }
    cluster.extensions.create_custom_resource_definition(crd(group, good))
    try:

        def established() -> bool:
            obj = cluster.extensions.read_custom_resource_definition(f"widgets.{group}")
            conds = obj.status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        wait_until("the CRD to be established", established, 30)
    finally:
        cluster.extensions.delete_custom_resource_definition(f"widgets.{group}")

    bad_group = f"t{uuid.uuid4().hex[:6]}.devcluster.test"
    bad = {"type": "object", "properties": {"spec": {"type": "strng"}}}
    with pytest.raises(ApiException) as refused:
        cluster.extensions.create_custom_resource_definition(crd(bad_group, bad))
    assert refused.value.status == 422
    assert "strng" in refused.value.body


def test_job_with_three_pods_completes(cluster: Cluster, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "hello"},
        "spec": {
            "completions": 3,
            "parallelism": 3,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [sh("hello", "echo $HOSTNAME; exit 0")],
                }
            },
        },
    }
    cluster.batch.create_namespaced_job(namespace, job)

    def complete() -> bool:
        conds = cluster.batch.read_namespaced_job("hello", namespace).status.conditions or []
        return any(c.type == "Complete" and c.status == "True" for c in conds)

    wait_until("the job to complete", complete, 90)
    pods = cluster.core.list_namespaced_pod(namespace, label_selector="job-name=hello").items
    assert len(pods) == 3
    for p in pods:
        assert p.status.phase == "Succeeded"
        out = cluster.kubectl("logs", "-n", namespace, p.metadata.name)
        assert out.stdout.strip() == p.metadata.name


def test_failing_container_reports_exit_code(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_pod(namespace, pod("fail", [sh("main", "echo bye; exit 3")]))
    p = cluster.wait_pod_phase(namespace, "fail", ("Failed", "Succeeded"))
    assert p.status.phase == "Failed"
    terminated = p.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3
    assert terminated.reason == "Error"


def test_on_failure_restarts_until_success(cluster: Cluster, namespace: str) -> None:
    script = "n=$(cat /d/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /d/n; [ $n -ge 2 ]"
    spec = pod(
        "retry",
        [sh("main", script, volumeMounts=[{"name": "d", "mountPath": "/d"}])],
        restartPolicy="OnFailure",
        volumes=[{"name": "d", "emptyDir": {}}],
    )
    cluster.core.create_namespaced_pod(namespace, spec)
    p = cluster.wait_pod_phase(namespace, "retry", ("Succeeded", "Failed"))
    assert p.status.phase == "Succeeded"
    status = p.status.container_statuses[0]
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 1


def test_deleting_job_in_background_deletes_pods(cluster: Cluster, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "sleeper"},
        "spec": {
            "parallelism": 2,
            "completions": 2,
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [sh("main", "sleep 3600")]}
            },
        },
    }
    cluster.batch.create_namespaced_job(namespace, job)

    def running() -> list[Any] | None:
        pods = cluster.core.list_namespaced_pod(namespace, label_selector="job-name=sleeper").items
        ok = len(pods) == 2 and all(p.status.phase == "Running" for p in pods)
        return pods if ok else None

    wait_until("two running pods", running, 60)
    cluster.batch.delete_namespaced_job(
        "sleeper", namespace, propagation_policy="Background", grace_period_seconds=0
    )

    def gone() -> bool:
        pods = cluster.core.list_namespaced_pod(namespace, label_selector="job-name=sleeper")
        return not list(pods.items)

    wait_until("the job's pods to be deleted", gone, 60)


def test_pod_deletion_sends_sigterm_then_removes_pod(cluster: Cluster, namespace: str) -> None:
    with tempfile.TemporaryDirectory() as out:
        script = "trap 'echo TERM > /out/signal; exit 0' TERM; echo up > /out/ready; " + (
            "while true; do sleep 0.1; done"
        )
        spec = pod(
            "graceful",
            [sh("main", script, volumeMounts=[{"name": "out", "mountPath": "/out"}])],
            terminationGracePeriodSeconds=20,
            volumes=[{"name": "out", "hostPath": {"path": out}}],
        )
        cluster.core.create_namespaced_pod(namespace, spec)
        wait_until("the container to start", lambda: Path(out, "ready").exists(), 60)
        t0 = time.monotonic()
        cluster.core.delete_namespaced_pod("graceful", namespace)

        def deleted() -> bool:
            try:
                cluster.pod(namespace, "graceful")
            except ApiException as e:
                return bool(e.status == 404)
            return False

        wait_until("the pod to be deleted", deleted, 30)
        assert Path(out, "signal").read_text().strip() == "TERM"
        assert time.monotonic() - t0 < 15, "a container that exits on SIGTERM ends the wait"


def test_deployment_pod_runs(cluster: Cluster, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [sh("main", "echo serving; exec sleep 3600")]},
            },
        },
    }
    cluster.apps.create_namespaced_deployment(namespace, deployment)

    def available() -> bool:
        status = cluster.apps.read_namespaced_deployment("web", namespace).status
        return (status.available_replicas or 0) == 1

    wait_until("the deployment to be available", available, 90)
    pods = cluster.core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert [p.status.phase for p in pods] == ["Running"]
    assert cluster.logs(namespace, pods[0].metadata.name).strip() == "serving"


IN_CLUSTER = """
import json, os
from kubernetes import client, config
config.load_incluster_config()
who = client.AuthenticationV1Api().create_self_subject_review(
    {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
try:
    client.CoreV1Api().list_namespaced_pod(ns)
    listing = 200
except client.ApiException as e:
    listing = e.status
print(json.dumps({"user": who.status.user_info.username, "list": listing}))
"""


def test_in_cluster_token_is_accepted_and_rbac_enforced(cluster: Cluster, namespace: str) -> None:
    for sa in ("nobody", "reader"):
        cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
    cluster.rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
    )
    cluster.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    for sa in ("nobody", "reader"):
        main = {"name": "main", "image": SHIM_IMAGE, "command": ["python3", "-c", IN_CLUSTER]}
        cluster.core.create_namespaced_pod(namespace, pod(sa, [main], serviceAccountName=sa))
    results = {}
    for sa in ("nobody", "reader"):
        p = cluster.wait_pod_phase(namespace, sa, ("Succeeded", "Failed"))
        log = cluster.logs(namespace, sa)
        assert p.status.phase == "Succeeded", log
        results[sa] = json.loads(log.strip().splitlines()[-1])
    assert results["nobody"] == {"user": f"system:serviceaccount:{namespace}:nobody", "list": 403}
    assert results["reader"] == {"user": f"system:serviceaccount:{namespace}:reader", "list": 200}


def test_busybox_has_no_python(cluster: Cluster, namespace: str) -> None:
    script = "for p in python3 python; do command -v $p && exit 1; done; ls /usr/bin | wc -l"
    cluster.core.create_namespaced_pod(namespace, pod("bb", [sh("main", script)]))
    p = cluster.wait_pod_phase(namespace, "bb", ("Succeeded", "Failed"))
    assert p.status.phase == "Succeeded", cluster.logs(namespace, "bb")
    shim = {"name": "main", "image": SHIM_IMAGE, "command": ["sh", "-c", "command -v python3"]}
    cluster.core.create_namespaced_pod(namespace, pod("shim", [shim]))
    p = cluster.wait_pod_phase(namespace, "shim", ("Succeeded", "Failed"))
    assert p.status.phase == "Succeeded", "the project image does have python3"


def test_containers_share_empty_dir_and_sidecar_stops(cluster: Cluster, namespace: str) -> None:
    mount = [{"name": "shared", "mountPath": "/shared"}]
    sidecar = sh("sidecar", "while true; do sleep 1; done", restartPolicy="Always")
    spec = pod(
        "pair",
        [
            sh("writer", "echo hello from $HOSTNAME > /shared/msg", volumeMounts=mount),
            sh(
                "reader",
                "until [ -f /shared/msg ]; do sleep 0.1; done; cat /shared/msg",
                volumeMounts=mount,
            ),
        ],
        initContainers=[sh("init", "echo init > /shared/init", volumeMounts=mount), sidecar],
        volumes=[{"name": "shared", "emptyDir": {}}],
    )
    cluster.core.create_namespaced_pod(namespace, spec)
    p = cluster.wait_pod_phase(namespace, "pair", ("Succeeded", "Failed"))
    assert p.status.phase == "Succeeded"
    assert cluster.logs(namespace, "pair", "reader").strip() == "hello from pair"
    init, side = p.status.init_container_statuses
    assert init.state.terminated.exit_code == 0
    assert side.state.terminated is not None, "the sidecar is stopped when the pod completes"


def test_env_volumes_and_working_dir(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cfg"}, "data": {"color": "blue", "size": "7"}}
    )
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "sec"}, "stringData": {"token": "s3cr3t"}}
    )
    script = (
        'echo "$COLOR $TOKEN $CFG_size $POD_NS $GREETING $(pwd)"; '
        "cat /etc/cfg/color /etc/sec/token; echo; "
        "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace"
    )
    container = sh(
        "main",
        script,
        workingDir="/work/here",
        env=[
            {"name": "NAME", "value": "world"},
            {"name": "GREETING", "value": "hello-$(NAME)"},
            {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        envFrom=[{"prefix": "CFG_", "configMapRef": {"name": "cfg"}}],
        volumeMounts=[
            {"name": "cfg", "mountPath": "/etc/cfg"},
            {"name": "sec", "mountPath": "/etc/sec", "readOnly": True},
        ],
    )
    spec = pod(
        "env",
        [container],
        volumes=[
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "sec"}},
        ],
    )
    cluster.core.create_namespaced_pod(namespace, spec)
    p = cluster.wait_pod_phase(namespace, "env", ("Succeeded", "Failed"))
    log = cluster.logs(namespace, "env")
    assert p.status.phase == "Succeeded", log
    assert log.splitlines() == [
        f"blue s3cr3t 7 {namespace} hello-world /work/here",
        "blues3cr3t",
        namespace,
    ]


@pytest.fixture
def bucket(cluster: Cluster) -> Iterator[str]:
    name = f"devcluster-{uuid.uuid4().hex[:8]}"
    s3 = s3_client(cluster)
    s3.create_bucket(Bucket=name)
    yield name
    for obj in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


def s3_client(cluster: Cluster) -> Any:
    env = cluster.env
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )


S3_IN_POD = """
import boto3, os, sys
s3 = boto3.client("s3")
bucket = os.environ["BUCKET"]
body = s3.get_object(Bucket=bucket, Key="from-host.txt")["Body"].read()
s3.put_object(Bucket=bucket, Key="from-pod.txt", Body=body.upper())
print("copied", len(body))
"""


def test_s3_from_host_and_pod(cluster: Cluster, namespace: str, bucket: str) -> None:
    s3 = s3_client(cluster)
    s3.put_object(Bucket=bucket, Key="from-host.txt", Body=b"hello s3\n")
    assert s3.get_object(Bucket=bucket, Key="from-host.txt")["Body"].read() == b"hello s3\n"

    # the pod gets its credentials the kubemr way: from the Secret `aws`
    cluster.core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "aws"},
            "stringData": {
                "aws_access_key_id": cluster.env["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": cluster.env["AWS_SECRET_ACCESS_KEY"],
            },
        },
    )

    def secret(key: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": "aws", "key": key}}

    env = [
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": secret("aws_access_key_id")},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": secret("aws_secret_access_key")},
        {"name": "AWS_ENDPOINT_URL", "value": cluster.env["AWS_ENDPOINT_URL"]},
        {"name": "AWS_REGION", "value": cluster.env["AWS_REGION"]},
        {"name": "BUCKET", "value": bucket},
    ]
    main = {
        "name": "main",
        "image": SHIM_IMAGE,
        "command": ["python3", "-c", S3_IN_POD],
        "env": env,
    }
    cluster.core.create_namespaced_pod(namespace, pod("s3", [main]))
    p = cluster.wait_pod_phase(namespace, "s3", ("Succeeded", "Failed"))
    assert p.status.phase == "Succeeded", cluster.logs(namespace, "s3")
    assert s3.get_object(Bucket=bucket, Key="from-pod.txt")["Body"].read() == b"HELLO S3\n"


def test_default_namespace_has_aws_secret(cluster: Cluster) -> None:
    data = cluster.core.read_namespaced_secret("aws", "default").data
    decoded = {k: base64.b64decode(v).decode() for k, v in data.items()}
    assert decoded == {
        "aws_access_key_id": cluster.env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": cluster.env["AWS_SECRET_ACCESS_KEY"],
    }
