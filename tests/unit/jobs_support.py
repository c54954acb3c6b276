"""Helpers the unit tests share: MapReduceJob documents as the API server returns them, the
check that an error reads as one sentence, hypothesis strategies for arbitrary specs, and the
check that a worker pod stays locked down."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from kubemr.operator.desired import OperatorSettings
from kubemr.spec import API_VERSION, KIND, METADATA_FIELDS, SPEC_FIELDS, STORAGE_FIELDS


def assert_one_sentence(message: str) -> None:
    assert message.strip(), "empty error message"
    assert "\n" not in message, f"multi-line error message: {message!r}"
    assert "Traceback" not in message
    assert message.endswith((".", "?")) and not message.endswith(("?.", "..")), message
    assert len(message) < 1000, f"error message too long: {message[:200]!r}..."


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["64Mi", "1G", "s3://b/k", "http://x/", "/a/../b", "KUBEMR_X", "..", "\t"])
)
field_names = (
    st.sampled_from(SPEC_FIELDS)
    | st.sampled_from(STORAGE_FIELDS)
    | st.sampled_from(METADATA_FIELDS)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(field_names, children, max_size=5)
    ),
    max_leaves=10,
)
spec_bodies = st.builds(
    lambda base, more: {**more, **base},
    st.fixed_dictionaries(
        {}, optional={"inputs": st.lists(json_scalars, max_size=3), "map": json_scalars}
    ),
    st.dictionaries(st.sampled_from(SPEC_FIELDS), json_values, max_size=4),
)


ME = "operator-a"
NOW = 1_700_000_000.0
SETTINGS = OperatorSettings()


def mrj(spec: Any, status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    """A MapReduceJob as the API server returns it: metadata filled in, `spec` as given."""
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": "job-a",
            "namespace": "team",
            "uid": "0000-1111",
            "resourceVersion": "42",
            "creationTimestamp": "2024-01-01T00:00:00Z",
            **meta,
        },
        "spec": spec,
    }
    if status is not None:
        doc["status"] = status
    return doc


def good_spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"inputs": ["s3://in/data/"], "map": "cat", "output": "s3://out/r/"}
    spec.update(changes)
    return spec


def deploying(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["status"] = {"phase": "Deploying", "deployer": {"h": ME, "x": int(NOW) + 60}}
    return out


def check_locked_down(objects: list[dict[str, Any]]) -> None:
    """The worker Job keeps its identity, command and security settings, whatever was merged."""
    job = objects[-1]
    assert job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    for key in ("hostNetwork", "hostPID", "hostIPC", "ephemeralContainers"):
        assert key not in pod
    assert pod["serviceAccountName"] == "job-a-worker"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert all(isinstance(v, dict) and "hostPath" not in v for v in pod["volumes"])
    (container,) = pod["containers"]
    init = pod.get("initContainers", [])
    if init:  # sidecar mode: only kubemr's own init containers, and the executor
        assert [c["command"][:2] for c in init] == [["kubemr", "shim"]] * 2
        assert [c["image"] for c in init] == [SETTINGS.image] * 2
        assert container["command"][:2] == ["/bin/sh", "/scratch/.executor/executor.sh"]
    else:
        assert container["command"] == ["kubemr", "shim"]
    for one in [container, *init]:
        assert one["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        }
        for item in one.get("env", []):
            assert isinstance(item, dict)
            if item["name"].startswith("AWS_SECRET"):
                assert "value" not in item and "secretKeyRef" in item["valueFrom"]
