"""(MapReduceJob) -> the objects it owns. Pure: no API calls.

For each job the operator creates, all owned by the MapReduceJob (so
deleting it deletes them): a ConfigMap with the job's `files`; a
ServiceAccount, Role and RoleBinding that let the worker pods get, watch and
patch that one MapReduceJob and nothing else; and a batch/v1 Job running
`replicas` pods of `kubemr shim`. S3 credentials reach the pods only through
`secretKeyRef` to the Secret named in `spec.storage.secretName`; they are
never copied anywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubemr.kube import GROUP, KIND, VERSION
from kubemr.spec import FORBIDDEN_POD_FIELDS, SIDECAR, JobSpec

LABEL = "kubemr.io/job"
DEFAULT_SECRET = "aws"
WORKER_UID = 65532
SCRATCH = "/scratch"
FILES_DIR = "/etc/kubemr/files"
#: Sidecar mode: where the executor and its control FIFO live, in the scratch volume.
EXCHANGE = f"{SCRATCH}/.executor"
#: Sidecar mode: how long the shim waits to be stopped once it told the executor to exit.
LINGER_SECONDS = 60


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator brings: the default worker image and pod defaults."""

    image: str = "kubemr/shim:latest"
    image_pull_policy: str = "IfNotPresent"
    lease_seconds: int = 30
    #: The S3 endpoint worker pods use when a job names none (an in-cluster MinIO, say).
    s3_endpoint: str | None = None


def names(job_name: str) -> dict[str, str]:
    """Names of the owned objects (a MapReduceJob name is a DNS label of at most 63 characters)."""
    short = job_name[:52]
    return {
        "configmap": f"{short}-files",
        "serviceaccount": f"{short}-worker",
        "role": f"{short}-worker",
        "rolebinding": f"{short}-worker",
        "job": job_name,
    }


def owner_reference(mrj: Mapping[str, Any]) -> dict[str, Any]:
    meta = mrj["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(mrj: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": mrj["metadata"]["namespace"],
        "labels": {LABEL: mrj["metadata"]["name"], "app.kubernetes.io/managed-by": "kubemr"},
        "ownerReferences": [owner_reference(mrj)],
    }


def desired_objects(
    mrj: Mapping[str, Any], spec: JobSpec, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Every object a MapReduceJob owns, in creation order (the Job last)."""
    n = names(mrj["metadata"]["name"])
    job_name = mrj["metadata"]["name"]
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(mrj, n["configmap"]),
        "data": dict(spec.files),
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(mrj, n["serviceaccount"]),
        "automountServiceAccountToken": True,
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(mrj, n["role"]),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": ["mapreducejobs"],
                "resourceNames": [job_name],
                "verbs": ["get", "watch"],
            },
            {
                "apiGroups": [GROUP],
                "resources": ["mapreducejobs/status"],
                "resourceNames": [job_name],
                "verbs": ["get", "patch"],
            },
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(mrj, n["rolebinding"]),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": n["role"]},
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": n["serviceaccount"],
                "namespace": mrj["metadata"]["namespace"],
            }
        ],
    }
    return [configmap, account, role, binding, batch_job(mrj, spec, settings)]


def worker_env(
    mrj: Mapping[str, Any], spec: JobSpec, settings: OperatorSettings
) -> list[dict[str, Any]]:
    meta = mrj["metadata"]
    secret = spec.storage.secret_name or DEFAULT_SECRET
    env: list[dict[str, Any]] = [
        {"name": "KUBEMR_STORE", "value": f"kube://{meta['namespace']}/{meta['name']}"},
        {"name": "KUBEMR_SCRATCH", "value": SCRATCH},
        # The root filesystem is read-only: temporary files go to the scratch volume.
        {"name": "TMPDIR", "value": SCRATCH},
        {"name": "KUBEMR_LEASE_SECONDS", "value": str(settings.lease_seconds)},
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "aws_access_key_id"}},
        },
        {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "aws_secret_access_key"}},
        },
    ]
    endpoint = spec.storage.endpoint or settings.s3_endpoint
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    if spec.storage.region:
        env.append({"name": "AWS_REGION", "value": spec.storage.region})
    return env


def _locked_down() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


def _pod_layout(
    mrj: Mapping[str, Any], spec: JobSpec, settings: OperatorSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(init containers, containers) of a worker pod.

    wrapper: one container, `kubemr shim` in spec.image (which has kubemr).
    sidecar: an init container copies the executor into the scratch volume; the shim runs as
    a native sidecar (an init container that keeps running) and hands each command to the
    executor, which runs in spec.image, the pod's one main container. The user's container
    gets neither the storage credentials nor the job's files: the shim moves all data."""
    mounts = [
        {"name": "scratch", "mountPath": SCRATCH},
        {"name": "files", "mountPath": FILES_DIR, "readOnly": True},
    ]
    env = worker_env(mrj, spec, settings)
    if spec.mode != SIDECAR:
        worker = {
            "name": "worker",
            "image": spec.image or settings.image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": ["kubemr", "shim"],
            "env": env,
            "securityContext": _locked_down(),
            "volumeMounts": mounts,
        }
        return [], [worker]
    install = {
        "name": "install-executor",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["kubemr", "shim", "--install-executor", EXCHANGE],
        "securityContext": _locked_down(),
        "volumeMounts": mounts[:1],
    }
    shim = {
        "name": "kubemr",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "command": ["kubemr", "shim"],
        "env": [
            *env,
            {"name": "KUBEMR_EXECUTOR", "value": EXCHANGE},
            {"name": "KUBEMR_LINGER_SECONDS", "value": str(LINGER_SECONDS)},
        ],
        "securityContext": _locked_down(),
        "volumeMounts": mounts,
    }
    worker = {
        "name": "worker",
        "image": spec.image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        # The image's ENTRYPOINT and CMD are not used: the executor runs the commands.
        "command": ["/bin/sh", f"{EXCHANGE}/executor.sh", EXCHANGE],
        "args": [],
        "env": [{"name": "TMPDIR", "value": SCRATCH}],
        "securityContext": _locked_down(),
        "volumeMounts": mounts[:1],
    }
    return [install, shim], [worker]


def batch_job(mrj: Mapping[str, Any], spec: JobSpec, settings: OperatorSettings) -> dict[str, Any]:
    """The batch/v1 Job: `replicas` pods of `kubemr shim`, locked down."""
    n = names(mrj["metadata"]["name"])
    init_containers, containers = _pod_layout(mrj, spec, settings)
    pod_spec: dict[str, Any] = {
        "serviceAccountName": n["serviceaccount"],
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "files", "configMap": {"name": n["configmap"], "defaultMode": 0o755}},
        ],
    }
    labels = {LABEL: mrj["metadata"]["name"], "app.kubernetes.io/managed-by": "kubemr"}
    template: dict[str, Any] = {"metadata": {"labels": labels}, "spec": pod_spec}
    if spec.template:
        template = merge_template(template, spec.template)
    if init_containers:
        template["spec"]["initContainers"] = init_containers
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(mrj, n["job"]),
        "spec": {
            "parallelism": spec.replicas,
            "backoffLimit": max(6, 3 * spec.replicas),
            "template": template,
        },
    }


#: Fields of the worker container a user's template may set.
CONTAINER_FIELDS = ("resources", "env", "envFrom", "volumeMounts", "imagePullPolicy", "workingDir")
#: Pod fields kubemr sets itself and a template may not change.
LOCKED_POD_FIELDS = (
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    "containers",
    "restartPolicy",
    "securityContext",
    *FORBIDDEN_POD_FIELDS,
)


def merge_template(ours: dict[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """Merge a user's PodTemplateSpec into ours: labels, annotations, pod fields, and the
    worker container's resources/env/mounts; identity, security and the command stay ours."""
    out = copy.deepcopy(ours)
    meta = theirs.get("metadata") or {}
    for key in ("labels", "annotations"):
        if isinstance(meta.get(key), Mapping):
            out["metadata"].setdefault(key, {})
            out["metadata"][key] = {**meta[key], **out["metadata"].get(key, {})}
    spec = theirs.get("spec") or {}
    pod = out["spec"]
    for key, value in spec.items():
        if key in LOCKED_POD_FIELDS or value is None:  # null means unset, as in kubectl apply
            continue
        if key == "volumes" and isinstance(value, list):
            pod["volumes"] = pod["volumes"] + copy.deepcopy(value)
        else:
            pod[key] = copy.deepcopy(value)
    containers = spec.get("containers")
    if isinstance(containers, list) and containers:
        theirs_c = next((c for c in containers if c.get("name") == "worker"), containers[0])
        mine = pod["containers"][0]
        for key in CONTAINER_FIELDS:
            if theirs_c.get(key) is None:
                continue
            if key in ("env", "envFrom", "volumeMounts"):
                mine[key] = list(mine.get(key, [])) + copy.deepcopy(list(theirs_c[key]))
            else:
                mine[key] = copy.deepcopy(theirs_c[key])
    return out
