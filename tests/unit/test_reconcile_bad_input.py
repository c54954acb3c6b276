"""Hostile MapReduceJobs through the operator's decisions: a Failed status, never an exception.

The operator judges every job the API server accepted (the CRD schema lets
`template` through unchecked, and a cluster without the CRD's CEL rules lets
more through). Whatever a job holds, `reconcile` must answer with a patch
that fails it, one sentence in `status.message` and a Failed Event, or with
objects that keep the worker pods locked down; and the controller must
survive a job the API server then refuses to run.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobs_support import (
    ME,
    NOW,
    SETTINGS,
    assert_one_sentence,
    check_locked_down,
    deploying,
    good_spec,
    json_scalars,
    json_values,
    mrj,
    spec_bodies,
)

from kubemr.errors import Conflict
from kubemr.kube import Invalid
from kubemr.operator.controller import Controller, ControllerConfig
from kubemr.operator.reconcile import Observed, Plan, reconcile
from kubemr.spec import MAX_FILES_BYTES


def failed_message(plan: Plan) -> str:
    """The message of a plan that fails a new job, checked for its shape."""
    assert not plan.create
    (patch,) = plan.patches
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "42"}
    status = patch[1]["value"]
    assert status["phase"] == "Failed"
    assert [c["type"] for c in status["conditions"]] == ["Failed"]
    assert plan.events == [("Failed", status["message"], True)]
    assert_one_sentence(status["message"])
    return str(status["message"])


def decide_twice(doc: dict[str, Any]) -> None:
    """A new job either fails with a sentence, or is taken and then deployed locked down."""
    plan = reconcile(doc, Observed(), SETTINGS, ME, NOW)
    if plan.patches and plan.patches[0][1]["value"].get("phase") == "Failed":
        failed_message(plan)
        return
    assert plan.patches[0][1]["value"]["phase"] == "Deploying"
    plan = reconcile(deploying(doc), Observed(), SETTINGS, ME, NOW)
    check_locked_down(plan.create)


# Generated hostile jobs

pod_keys = st.sampled_from(
    [
        "containers",
        "volumes",
        "tolerations",
        "nodeSelector",
        "hostPID",
        "hostNetwork",
        "initContainers",
        "securityContext",
        "serviceAccountName",
        "restartPolicy",
    ]
)
container_keys = st.sampled_from(
    ["name", "env", "envFrom", "volumeMounts", "resources", "securityContext", "command"]
)
containers = st.lists(
    st.dictionaries(container_keys, json_values, max_size=3) | json_scalars, max_size=2
)
volumes = st.lists(
    st.dictionaries(st.sampled_from(["name", "emptyDir", "hostPath"]), json_values, max_size=2)
    | json_scalars,
    max_size=2,
)
pod_specs = st.dictionaries(
    pod_keys, st.one_of(json_values, containers, volumes), max_size=3
) | st.fixed_dictionaries({}, optional={"containers": containers, "volumes": volumes})
templates = st.fixed_dictionaries(
    {},
    optional={
        "metadata": json_values
        | st.dictionaries(st.sampled_from(["labels", "annotations"]), json_values, max_size=2),
        "spec": pod_specs | json_values,
        "kind": json_scalars,
    },
)
good_base = st.fixed_dictionaries(
    {
        "inputs": st.just(["s3://in/data/"]),
        "map": st.just("cat"),
        "output": st.just("s3://out/r/"),
    }
)
hostile_base = st.fixed_dictionaries(
    {
        "inputs": st.lists(json_scalars, max_size=2),
        "map": json_scalars,
        "output": st.sampled_from(["/tmp/out", "s3://out/../x/", "gs://b/o/", "file:///o/"])
        | json_scalars,
    }
)
cluster_specs = st.builds(
    lambda base, template, extra: {**extra, **base, **({"template": template} if template else {})},
    good_base | hostile_base,
    st.none() | templates,
    st.just({}) | spec_bodies,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(cluster_specs, json_values))
def test_any_spec_fails_with_a_sentence_or_deploys_locked_down(spec: Any) -> None:
    decide_twice(mrj(spec))


# Named hostile jobs


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"files": {"../evil.sh": "x"}}, "spec.files key"),
        ({"files": {"a/b": "x"}}, "spec.files key"),
        ({"files": {"big": "x" * (MAX_FILES_BYTES + 1)}}, "spec.files holds"),
        ({"output": "s3://out/../../etc/"}, "spec.output"),
        ({"output": "file:///tmp/out/"}, "spec.output"),
        ({"output": "gs://bucket/out/"}, "spec.output"),
        ({"inputs": ["ftp://host/x"]}, "spec.inputs[0]"),
        ({"inputs": ["file:///etc/passwd"]}, "spec.inputs[0]"),
        ({"inputs": ["/etc/passwd"]}, "spec.inputs[0]"),
        ({"inputs": "s3://in/data/"}, "spec.inputs"),
        ({"replicas": 10**30}, "spec.replicas"),
        ({"partitions": -1, "reduce": "cat"}, "spec.partitions"),
        ({"taskTimeoutSeconds": "forever"}, "spec.taskTimeoutSeconds"),
        ({"splitSize": "9999999999Ti"}, "spec.splitSize"),
        ({"map": None, "inputs": None}, "spec.inputs"),
        ({"template": {"spec": {"hostPID": True}}}, "spec.template.spec.hostPID"),
        ({"template": {"spec": {"hostNetwork": True}}}, "spec.template.spec.hostNetwork"),
        (
            {"template": {"spec": {"initContainers": [{"name": "x", "image": "busybox"}]}}},
            "initContainers",
        ),
        (
            {"template": {"spec": {"volumes": [{"name": "r", "hostPath": {"path": "/"}}]}}},
            "hostPath",
        ),
        ({"template": {"spec": {"volumes": "x"}}}, "spec.template.spec.volumes"),
        ({"template": {"spec": [1]}}, "spec.template.spec"),
        ({"template": {"metadata": [1]}}, "spec.template.metadata"),
        ({"template": {"metadata": {"labels": {"a": 1}}}}, "spec.template.metadata.labels"),
        ({"template": {"spec": {"containers": [1]}}}, "spec.template.spec.containers"),
        (
            {"template": {"spec": {"containers": [{"env": "AWS_SECRET_ACCESS_KEY=x"}]}}},
            "spec.template.spec.containers[0].env",
        ),
        ({"template": {"kind": "Pod"}}, "spec.template.kind"),
    ],
)
def test_hostile_job_fails_naming_the_field(changes: dict[str, Any], needle: str) -> None:
    message = failed_message(reconcile(mrj(good_spec(**changes)), Observed(), SETTINGS, ME, NOW))
    assert needle in message


@pytest.mark.parametrize("item", ["data/in.txt", "customers-shard-17", "./in/", "~/in"])
def test_a_path_or_bare_string_input_fails_naming_the_opaque_rule(item: str) -> None:
    changes = {"inputs": ["s3://in/data/", item]}
    message = failed_message(reconcile(mrj(good_spec(**changes)), Observed(), SETTINGS, ME, NOW))
    assert f"spec.inputs[1] is a local path ({item})" in message
    assert f"opaque:{item}" in message


def test_an_opaque_input_deploys() -> None:
    doc = deploying(mrj(good_spec(inputs=["opaque:shard 7"])))
    plan = reconcile(doc, Observed(), SETTINGS, ME, NOW)
    assert plan.create and not any(warning for _, _, warning in plan.events)


@pytest.mark.parametrize("name", ["Job_A", "-a", "a" * 64, "a.b", "ü"])
def test_a_name_that_is_not_a_dns_label_fails(name: str) -> None:
    message = failed_message(reconcile(mrj(good_spec(), name=name), Observed(), SETTINGS, ME, NOW))
    assert "metadata.name" in message


def test_a_template_cannot_unlock_the_worker_pod() -> None:
    template = {
        "metadata": {"labels": {"team": "x"}},
        "spec": {
            "securityContext": {"runAsUser": 0},
            "serviceAccountName": "admin",
            "serviceAccount": "admin",
            "automountServiceAccountToken": True,
            "containers": [
                {
                    "name": "worker",
                    "command": ["sh"],
                    "securityContext": {"privileged": True},
                    "resources": {"limits": {"memory": "1Gi"}},
                }
            ],
            "nodeSelector": {"pool": "batch"},
        },
    }
    doc = deploying(mrj(good_spec(template=template)))
    plan = reconcile(doc, Observed(), SETTINGS, ME, NOW)
    check_locked_down(plan.create)
    pod = plan.create[-1]["spec"]["template"]["spec"]
    assert "serviceAccount" not in pod and "automountServiceAccountToken" not in pod
    assert pod["nodeSelector"] == {"pool": "batch"}
    assert pod["containers"][0]["resources"] == {"limits": {"memory": "1Gi"}}


# The controller, against a fake of kubemr's own Kube interface


class RefusingKube:
    """Refuses to create the worker Job as invalid, the way the API server answers 422."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.created: list[str] = []
        self.patches: list[list[dict[str, Any]]] = []
        self.events: list[tuple[str, str]] = []

    def get_batch_job(self, namespace: str, name: str) -> None:
        return None

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return []

    def create(self, obj: dict[str, Any]) -> None:
        if obj["kind"] == "Job":
            raise Invalid(
                'creating Job team/job-a: Job.batch "job-a" is invalid: '
                "spec.template.spec.volumes[3].name: Required value."
            )
        self.created.append(obj["kind"])

    def patch_job_status(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        first = ops[0]
        if first["path"] == "/status/phase" and first["value"] != self.doc["status"]["phase"]:
            raise Conflict("test failed")
        self.patches.append(ops)

    def event(self, obj: dict[str, Any], reason: str, note: str, warning: bool = False) -> None:
        self.events.append((reason, note))

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        return self.doc


def test_an_object_the_api_server_refuses_fails_the_job() -> None:
    doc = deploying(mrj(good_spec(template={"spec": {"volumes": [{"emptyDir": {}}]}})))
    kube = RefusingKube(doc)
    controller = Controller(kube, ControllerConfig(identity=ME))  # type: ignore[arg-type]
    controller.reconcile(doc)
    assert kube.created == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding"]
    (patch,) = kube.patches
    assert {"op": "replace", "path": "/status/phase", "value": "Failed"} in patch
    message = next(op["value"] for op in patch if op["path"] == "/status/message")
    assert "refused" in message and "volumes[3].name: Required value" in message
    assert kube.events == [("Failed", message)]


def test_an_unexpected_error_in_one_job_does_not_stop_the_operator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job whose status no decider can read is logged with its traceback and skipped; the
    next job is still handled."""
    kube = RefusingKube(mrj(good_spec()))
    controller = Controller(kube, ControllerConfig(identity=ME))  # type: ignore[arg-type]
    broken = mrj(good_spec(), status={"phase": "Mapping", "map": "not a list of tasks"})
    broken["status"]["conditions"] = "not a list"
    with caplog.at_level(logging.WARNING, logger="kubemr.operator"):
        controller.reconcile(broken)  # logs, does not raise
    (record,) = [r for r in caplog.records if getattr(r, "job_name", None) == "job-a"]
    assert (
        "reconciling failed" in record.getMessage() and record.__dict__["job_namespace"] == "team"
    )
    assert record.levelno >= logging.WARNING
    assert not kube.patches and not kube.created
    controller.reconcile(deploying(mrj(good_spec())))
    assert kube.created  # the operator went on with the next job
