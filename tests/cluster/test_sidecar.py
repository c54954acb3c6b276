"""Sidecar mode on a real control plane: commands run in the devcluster's `busybox` image.

That image is a root filesystem holding only a static busybox (no Python,
no kubemr), so a job can only succeed there if the executor (POSIX sh) runs
the commands and the kubemr sidecar moves every byte. (A failing command in
sidecar mode is a case of test_operator's failing-command test.)
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from devcluster_support import Cluster, wait_until
from operator_support import (
    cluster_manifest,
    create,
    get,
    kubectl,
    local_results,
    s3_objects,
    wait_phase,
)

from kubemr import state

pytestmark = pytest.mark.cluster

SIDECAR = {"mode": "sidecar", "image": "busybox"}


def test_word_count_in_busybox_has_the_same_bytes_as_wrapper_mode(
    cluster: Cluster, ns: str, s3: Any, corpus: str, tmp_path: Path
) -> None:
    path, output = cluster_manifest(
        cluster, "bash-wordcount", corpus, tmp_path, replicas=2, **SIDECAR
    )
    name = create(cluster, ns, path)
    doc = wait_phase(cluster, ns, name, timeout=240)
    assert doc["status"]["phase"] == "Succeeded", doc["status"].get("message")
    stored = s3_objects(s3, output)
    assert "_SUCCESS" in stored
    parts = {k: v for k, v in stored.items() if k.startswith("part-")}
    assert parts == local_results("bash-wordcount", tmp_path)
    # Counters reported on the user's stderr (busybox awk) reach the job.
    assert doc["status"]["counters"]["wordcount"]["words"] > 0
    # Both containers ended, so the pods and the Job finished.

    def finished() -> bool:
        pods = kubectl(
            cluster,
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            f"kubemr.io/job={name}",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ).stdout.split()
        return bool(pods) and set(pods) == {"Succeeded"}

    wait_until("the worker pods to succeed", finished, 120)


def _processes_with(needle: bytes) -> list[int]:
    """Host pids whose environment holds `needle` (pods run in PID namespaces below ours)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_deleting_the_job_stops_every_process_of_its_pods(
    cluster: Cluster, ns: str, corpus: str, tmp_path: Path
) -> None:
    mark = f"MARK_{uuid.uuid4().hex}"
    path, _ = cluster_manifest(
        cluster,
        "bash-wordcount",
        corpus,
        tmp_path,
        map="sleep 600 & sleep 600; wait",
        replicas=2,
        env={mark: "1"},
        **SIDECAR,
    )
    name = create(cluster, ns, path)
    store = f"KUBEMR_STORE=kube://{ns}/{name}".encode()

    def commands_running() -> list[int] | None:
        doc = get(cluster, ns, name)
        st = state.current_stage(doc)
        running = list(st.running()) if st is not None and st.name == "map" else []
        pids = _processes_with(f"{mark}=1".encode())
        sleeps = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(b"sleep\x00600"):
                        sleeps.append(pid)
            except OSError:
                continue
        return sleeps if len(running) == 2 and len(sleeps) >= 4 else None

    wait_until("both pods' commands to run", commands_running, 180)
    assert _processes_with(store), "the sidecars' processes carry the job's store address"
    kubectl(cluster, "-n", ns, "delete", "mrj", name, "--wait=false")

    def all_gone() -> bool:
        return not _processes_with(f"{mark}=1".encode()) and not _processes_with(store)

    wait_until("every process of the job's pods to end", all_gone, 90)


def test_commands_may_come_from_the_environment_of_the_users_image(
    cluster: Cluster, ns: str, s3: Any, corpus: str, tmp_path: Path
) -> None:
    """No command in the spec: KUBEMR_MAP and KUBEMR_REDUCE are set in the user's container
    only (as an image's ENV would set them), where the sidecar cannot see them itself."""
    commands = [
        {"name": "KUBEMR_MAP", "value": "./map.sh"},
        {"name": "KUBEMR_REDUCE", "value": "./reduce.sh"},
    ]
    path, output = cluster_manifest(
        cluster,
        "bash-wordcount",
        corpus,
        tmp_path,
        map=None,
        combine=None,
        reduce=None,
        template={"spec": {"containers": [{"name": "worker", "env": commands}]}},
        **SIDECAR,
    )
    name = create(cluster, ns, path)
    doc = wait_phase(cluster, ns, name, timeout=240)
    assert doc["status"]["phase"] == "Succeeded", doc["status"].get("message")
    parts = {k: v for k, v in s3_objects(s3, output).items() if k.startswith("part-")}
    assert parts == local_results("bash-wordcount", tmp_path)
