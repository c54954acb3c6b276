"""The worker pod of each mode, as the operator's pure `desired_objects` builds it."""

from __future__ import annotations

from typing import Any

import pytest
from jobs_support import SETTINGS, check_locked_down, good_spec, mrj

from kubemr.errors import SpecError
from kubemr.operator.desired import EXCHANGE, desired_objects
from kubemr.spec import parse_spec


def pod_of(**spec: Any) -> dict[str, Any]:
    doc = mrj(good_spec(**spec))
    objects = desired_objects(doc, parse_spec(doc["spec"]), SETTINGS)
    check_locked_down(objects)
    pod: dict[str, Any] = objects[-1]["spec"]["template"]["spec"]
    return pod


def env_names(container: dict[str, Any]) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


def test_wrapper_mode_runs_the_shim_in_the_job_image() -> None:
    pod = pod_of(image="example/tools:1")
    assert "initContainers" not in pod
    (worker,) = pod["containers"]
    assert worker["image"] == "example/tools:1"
    assert worker["command"] == ["kubemr", "shim"]
    assert "AWS_SECRET_ACCESS_KEY" in env_names(worker)


def test_sidecar_mode_runs_the_executor_in_the_job_image_and_the_shim_beside_it() -> None:
    pod = pod_of(image="busybox", mode="sidecar")
    install, shim = pod["initContainers"]
    (worker,) = pod["containers"]
    # The user's image runs only the executor, from the shared volume, whatever its ENTRYPOINT.
    assert worker["image"] == "busybox"
    assert worker["command"] == ["/bin/sh", f"{EXCHANGE}/executor.sh", EXCHANGE]
    assert worker["args"] == []
    assert [m["name"] for m in worker["volumeMounts"]] == ["scratch"]
    # It gets neither the storage credentials nor the job document's address.
    assert not [n for n in env_names(worker) if n.startswith(("AWS_", "KUBEMR_"))]
    # The executor is copied in first; the shim is a native sidecar (restartPolicy Always).
    assert install["command"] == ["kubemr", "shim", "--install-executor", EXCHANGE]
    assert install["image"] == shim["image"] == SETTINGS.image
    assert shim.get("restartPolicy") == "Always" and "restartPolicy" not in install
    assert {"KUBEMR_EXECUTOR", "KUBEMR_STORE", "AWS_SECRET_ACCESS_KEY"} <= set(env_names(shim))
    assert EXCHANGE.startswith(shim["volumeMounts"][0]["mountPath"] + "/")
    assert pod["restartPolicy"] == "Never"


def test_a_template_sets_the_resources_of_the_users_container_in_sidecar_mode() -> None:
    template = {"spec": {"containers": [{"name": "worker", "resources": {"limits": {"cpu": "2"}}}]}}
    pod = pod_of(image="busybox", mode="sidecar", template=template)
    assert pod["containers"][0]["resources"] == {"limits": {"cpu": "2"}}
    assert pod["containers"][0]["command"][0] == "/bin/sh"


@pytest.mark.parametrize("mode", ["Sidecar", "emissary", 3])
def test_an_unknown_mode_is_refused_naming_both(mode: Any) -> None:
    with pytest.raises(SpecError, match=r"spec\.mode") as info:
        parse_spec(good_spec(mode=mode))
    if isinstance(mode, str):
        assert "'wrapper'" in str(info.value) and "'sidecar'" in str(info.value)
