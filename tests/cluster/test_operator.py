"""Kubernetes mode end to end on a real control plane (hack/devcluster).

`kubectl apply -k manifests/` installs the CRD, RBAC and the operator (a pod
of its Deployment, running the project image); MapReduceJobs created with
`kubectl create -f` run in worker pods against the devcluster's S3 server,
and their results must be byte-identical to `kubemr run` on the same inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from devcluster_support import Cluster, wait_until
from operator_support import (
    CORPUS,
    EXAMPLES,
    cluster_manifest,
    create,
    events,
    get,
    kubectl,
    local_results,
    s3_objects,
    wait_phase,
)

from kubemr import state

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("example", ["bash-wordcount", "python-wordcount"])
def test_example_completes_with_the_same_bytes_as_kubemr_run(
    cluster: Cluster, ns: str, s3: Any, corpus: str, tmp_path: Path, example: str
) -> None:
    path, output = cluster_manifest(cluster, example, corpus, tmp_path)
    name = create(cluster, ns, path)
    assert name.startswith("wordcount-") or name.startswith("pywordcount-")  # generateName
    doc = wait_phase(cluster, ns, name)
    assert doc["status"]["phase"] == "Succeeded", doc["status"].get("message")
    stored = s3_objects(s3, output)
    assert "_SUCCESS" in stored
    assert doc["status"]["results"] == [f"{output}part-r-00000", f"{output}part-r-00001"]
    expected = local_results(example, tmp_path)
    assert {k: v for k, v in stored.items() if k.startswith("part-")} == expected
    # `kubectl get mrj` columns and `kubectl describe` conditions and Events.
    table = kubectl(cluster, "-n", ns, "get", "mrj", name).stdout
    assert "Succeeded" in table and "6/6" in table and "2/2" in table

    def conditions() -> dict[str, str] | None:
        found = get(cluster, ns, name)["status"].get("conditions") or []
        kinds = {c["type"]: c["status"] for c in found}
        return kinds if "Complete" in kinds else None

    assert wait_until("the Complete condition", conditions, 30) == {
        "Deployed": "True",
        "Complete": "True",
    }
    wait_until(
        "Deployed and Completed events",
        lambda: {"Deployed", "Completed"} <= {e["reason"] for e in events(cluster, ns, name)},
        30,
    )
    # Intermediate data is removed after success.
    wait_until(
        "intermediate data to be removed",
        lambda: not [k for k in s3_objects(s3, output) if "/data/" in k],
        60,
    )


@pytest.mark.parametrize(
    "mode", [{}, {"mode": "sidecar", "image": "busybox"}], ids=["wrapper", "sidecar"]
)
def test_failing_map_command_fails_the_job_with_its_stderr(
    cluster: Cluster, ns: str, corpus: str, tmp_path: Path, mode: dict[str, str]
) -> None:
    """The same report whether the command ran in the shim's container or in busybox."""
    path, _ = cluster_manifest(
        cluster,
        "bash-wordcount",
        corpus,
        tmp_path,
        map="echo 'cannot parse record 17' >&2; exit 4",
        maxAttempts=2,
        **mode,
    )
    name = create(cluster, ns, path)
    doc = wait_phase(cluster, ns, name)
    status = doc["status"]
    assert status["phase"] == "Failed"
    assert "failed 2 of 2 attempts" in status["message"]
    assert "exited with code 4" in status["message"]
    assert "cannot parse record 17" in status["message"]
    assert status["failedTask"].startswith("map-")
    got = wait_until(
        "Failed and TaskFailed events",
        lambda: (
            (ev := events(cluster, ns, name))
            and {"Failed", "TaskFailed"} <= {e["reason"] for e in ev}
            and ev
        ),
        30,
    )
    assert any("cannot parse record 17" in e.get("message", "") for e in got)
    # Both failures of the task that failed the job are one Event counted twice (a series, as
    # client-go's recorder makes them), not two rows.
    task = status["failedTask"]

    def series() -> list[dict[str, Any]] | None:
        mine = [
            e
            for e in events(cluster, ns, name)
            if e["reason"] == "TaskFailed" and e.get("message", "").startswith(f"{task} failed:")
        ]
        counts = [e.get("count") or (e.get("series") or {}).get("count") for e in mine]
        return mine if counts == [2] else None

    wait_until(f"one TaskFailed event for {task}, counted twice", series, 30)
    # The CLI reports the same and exits 1.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubemr",
            "status",
            name,
            "-n",
            ns,
            "--kubeconfig",
            cluster.kubeconfig,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "cannot parse record 17" in proc.stdout


def test_killing_a_worker_pod_and_the_operator_changes_nothing(
    cluster: Cluster, ns: str, s3: Any, corpus: str, tmp_path: Path
) -> None:
    path, output = cluster_manifest(
        cluster, "bash-wordcount", corpus, tmp_path, map="sleep 2; ./map.sh", replicas=2
    )
    name = create(cluster, ns, path)

    def running_pod() -> str | None:
        doc = get(cluster, ns, name)
        st = state.current_stage(doc)
        if st is None or st.name != "map" or not any(True for _ in st.running()):
            return None
        pods = kubectl(
            cluster,
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            f"kubemr.io/job={name}",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ).stdout.split()
        return pods[0] if pods else None

    pod = wait_until("a worker pod running a map task", running_pod, 120)
    kubectl(cluster, "-n", ns, "delete", "pod", pod, "--grace-period=0", "--force")
    operator = kubectl(
        cluster,
        "-n",
        "kubemr-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=kubemr-operator",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ).stdout
    kubectl(cluster, "-n", "kubemr-system", "delete", "pod", operator, "--wait=false")
    doc = wait_phase(cluster, ns, name, timeout=240)
    assert doc["status"]["phase"] == "Succeeded", doc["status"].get("message")
    stored = s3_objects(s3, output)
    assert {k: v for k, v in stored.items() if k.startswith("part-")} == local_results(
        "bash-wordcount", tmp_path
    )


def test_worker_identity_reaches_only_its_own_job(
    cluster: Cluster, ns: str, corpus: str, tmp_path: Path
) -> None:
    path_a, _ = cluster_manifest(cluster, "bash-wordcount", corpus, tmp_path)
    path_b, _ = cluster_manifest(cluster, "bash-wordcount", corpus, tmp_path)
    a = create(cluster, ns, path_a)
    b = create(cluster, ns, path_b)
    wait_until(
        "job A's worker ServiceAccount",
        lambda: kubectl(cluster, "-n", ns, "get", "sa", f"{a}-worker", check=False).returncode == 0,
        60,
    )
    token = kubectl(cluster, "-n", ns, "create", "token", f"{a}-worker").stdout.strip()

    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    worker_config = tmp_path / "worker-kubeconfig"
    worker_config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": admin["clusters"],
                "users": [{"name": "worker", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "worker",
                        "context": {"cluster": admin["clusters"][0]["name"], "user": "worker"},
                    }
                ],
                "current-context": "worker",
            }
        )
    )

    def as_worker(*args: str) -> subprocess.CompletedProcess[str]:
        """kubectl as job A's worker pods are: its ServiceAccount token, no admin certificate."""
        return subprocess.run(
            [
                cluster.env["DEVCLUSTER_KUBECTL"],
                "--kubeconfig",
                str(worker_config),
                "-n",
                ns,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    patch = '[{"op":"add","path":"/status/x","value":1}]'
    assert as_worker("get", "mrj", a).returncode == 0
    denied = as_worker("patch", "mrj", b, "--subresource=status", "--type=json", "-p", patch)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    assert "forbidden" in as_worker("get", "mrj", b).stderr.lower()
    assert "forbidden" in as_worker("get", "mrj").stderr.lower()  # no listing
    assert "forbidden" in as_worker("get", "secrets").stderr.lower()
    assert (
        "forbidden"
        in as_worker(
            "patch", "mrj", a, "--type=merge", "-p", '{"spec":{"map":"evil"}}'
        ).stderr.lower()
    )
    for name in (a, b):
        wait_phase(cluster, ns, name)


def test_deleting_a_job_deletes_everything_it_owns(
    cluster: Cluster, ns: str, corpus: str, tmp_path: Path
) -> None:
    path, _ = cluster_manifest(cluster, "bash-wordcount", corpus, tmp_path, map="sleep 30; cat")
    name = create(cluster, ns, path)
    kinds = "job,pod,configmap,serviceaccount,role,rolebinding"

    def owned() -> list[str]:
        out = kubectl(
            cluster, "-n", ns, "get", kinds, "-l", f"kubemr.io/job={name}", "-o", "name"
        ).stdout.split()
        return out

    wait_until("the worker pods", lambda: any(o.startswith("pod/") for o in owned()), 120)
    assert {o.split("/")[0] for o in owned()} >= {
        "job.batch",
        "pod",
        "configmap",
        "serviceaccount",
        "role.rbac.authorization.k8s.io",
        "rolebinding.rbac.authorization.k8s.io",
    }
    kubectl(cluster, "-n", ns, "delete", "mrj", name, "--wait=false")
    wait_until("every owned object to be deleted", lambda: not owned(), 120)


def test_invalid_manifests_are_refused_or_fail_naming_the_field(
    cluster: Cluster, ns: str, corpus: str, tmp_path: Path
) -> None:
    refused, _ = cluster_manifest(cluster, "bash-wordcount", corpus, tmp_path, partitions=0)
    out = kubectl(cluster, "-n", ns, "create", "-f", str(refused), check=False)
    assert out.returncode != 0 and "spec.partitions" in out.stderr
    codec, _ = cluster_manifest(
        cluster, "bash-wordcount", corpus, tmp_path, outputCompression="lz4"
    )
    out = kubectl(cluster, "-n", ns, "create", "-f", str(codec), check=False)
    assert out.returncode != 0 and "spec.outputCompression" in out.stderr
    fields, _ = cluster_manifest(cluster, "bash-wordcount", corpus, tmp_path, partitionFields=2)
    out = kubectl(cluster, "-n", ns, "create", "-f", str(fields), check=False)
    assert out.returncode != 0 and "spec.partitionFields must be at most" in out.stderr
    typo, _ = cluster_manifest(cluster, "bash-wordcount", corpus, tmp_path, reducer="cat")
    out = kubectl(cluster, "-n", ns, "create", "-f", str(typo), check=False)
    assert out.returncode != 0 and 'unknown field "spec.reducer"' in out.stderr
    local, _ = cluster_manifest(cluster, "bash-wordcount", corpus, tmp_path, output="/tmp/out/")
    name = create(cluster, ns, local)
    doc = wait_phase(cluster, ns, name, timeout=60)
    assert doc["status"]["phase"] == "Failed"
    assert "spec.output" in doc["status"]["message"]
    wait_until(
        "a Failed event", lambda: "Failed" in {e["reason"] for e in events(cluster, ns, name)}, 30
    )


def test_two_operators_deploy_each_job_once(
    cluster: Cluster, ns: str, corpus: str, tmp_path: Path
) -> None:
    kubectl(cluster, "-n", "kubemr-system", "scale", "deployment/kubemr-operator", "--replicas=2")
    try:
        wait_until(
            "two operator pods",
            lambda: (
                kubectl(
                    cluster,
                    "-n",
                    "kubemr-system",
                    "get",
                    "deployment",
                    "kubemr-operator",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                ).stdout
                == "2"
            ),
            120,
        )
        names = []
        for _ in range(3):
            path, _ = cluster_manifest(cluster, "bash-wordcount", corpus, tmp_path)
            names.append(create(cluster, ns, path))
        for name in names:
            assert wait_phase(cluster, ns, name)["status"]["phase"] == "Succeeded"
            deployed = [e for e in events(cluster, ns, name) if e["reason"] == "Deployed"]
            assert sum(int(e.get("count") or 1) for e in deployed) == 1, deployed
        logs = kubectl(
            cluster,
            "-n",
            "kubemr-system",
            "logs",
            "-l",
            "app.kubernetes.io/name=kubemr-operator",
            "--tail=-1",
        ).stdout
        lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        for name in names:
            created = [
                x
                for x in lines
                if (x.get("namespace"), x.get("name")) == (ns, name)
                and x["msg"].startswith("created Job ")
            ]
            assert len(created) == 1, created
        # Two replicas, one leader: the other waited for the Lease.
        assert sum(x["msg"].startswith("waiting to become the leader") for x in lines) >= 1
    finally:
        kubectl(
            cluster, "-n", "kubemr-system", "scale", "deployment/kubemr-operator", "--replicas=1"
        )
        time.sleep(1)


def test_submit_wait_and_results_from_the_cli(
    cluster: Cluster, ns: str, corpus: str, tmp_path: Path
) -> None:
    """With gzip-compressed results (spec.outputCompression), which `results --cat` prints
    decompressed."""
    path, _ = cluster_manifest(
        cluster, "bash-wordcount", corpus, tmp_path, outputCompression="gzip"
    )
    env = {**os.environ, **{k: cluster.env[k] for k in cluster.env if k.startswith("AWS_")}}
    env["KUBECONFIG"] = cluster.kubeconfig
    base = [sys.executable, "-m", "kubemr"]
    proc = subprocess.run(
        [*base, "submit", str(path), "-n", ns, "--wait", "--timeout", "180"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    name = proc.stdout.split()[0].split("/", 1)[1]
    urls = subprocess.run(
        [*base, "results", name, "-n", ns], capture_output=True, text=True, env=env, timeout=60
    ).stdout.split()
    assert [u.rsplit("/", 1)[1] for u in urls] == ["part-r-00000.gz", "part-r-00001.gz"]
    cat = subprocess.run(
        [*base, "results", name, "-n", ns, "--cat"], capture_output=True, env=env, timeout=60
    )
    expected = local_results("bash-wordcount", tmp_path)
    assert cat.stdout == expected["part-r-00000"] + expected["part-r-00001"]
    logs = subprocess.run(
        [*base, "logs", name, "-n", ns, "--task", "map-0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert logs.returncode == 0
    replay = subprocess.run(
        [*base, "replay", name, "-n", ns, "--task", "map-0"],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert replay.returncode == 0 and replay.stdout.count(b"\t1\n") > 100


def test_line_per_task_inputs_on_the_cluster(
    cluster: Cluster, ns: str, s3: Any, corpus: str, tmp_path: Path
) -> None:
    """spec.linesPerMap on the cluster: the plan, made by a worker pod reading the inputs
    from S3, has one map task per N lines, and the word count is the same as without it."""
    path, output = cluster_manifest(
        cluster, "bash-wordcount", corpus, tmp_path, linesPerMap=400, splitSize=None
    )
    name = create(cluster, ns, path)
    doc = wait_phase(cluster, ns, name)
    assert doc["status"]["phase"] == "Succeeded", doc["status"].get("message")
    inputs = s3_objects(s3, f"s3://{corpus}/corpus/")
    lines = [d.count(b"\n") + (not d.endswith(b"\n")) for d in inputs.values() if d]
    tasks = sum(-(-n // 400) for n in lines)
    assert state.counts(doc, "map") == (tasks, tasks) and tasks > len(inputs)
    stored = s3_objects(s3, output)
    expected = local_results("bash-wordcount", tmp_path)
    assert {k: v for k, v in stored.items() if k.startswith("part-")} == expected


def test_the_local_manifest_runs_unchanged_with_submit_upload(
    cluster: Cluster, ns: str, s3: Any, corpus: str, tmp_path: Path
) -> None:
    """`kubemr submit --upload` copies local inputs to S3 (warning that the job names no
    endpoint); the operator supplies the endpoint."""
    env = {**os.environ, **{k: cluster.env[k] for k in cluster.env if k.startswith("AWS_")}}
    env["KUBECONFIG"] = cluster.kubeconfig
    output = f"s3://{corpus}/upload-{uuid.uuid4().hex[:6]}/"
    job = EXAMPLES / "bash-wordcount" / "job.yaml"
    plain = subprocess.run(
        [sys.executable, "-m", "kubemr", "submit", str(job), "-n", ns, "-o", output],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert plain.returncode == 2 and "--upload" in plain.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubemr",
            "submit",
            str(job),
            "-n",
            ns,
            "-o",
            output,
            "--upload",
            "--wait",
            "--timeout",
            "180",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    # The upload went through AWS_ENDPOINT_URL and the job names none: submit says so (here
    # the operator's KUBEMR_S3_ENDPOINT points its pods at the same server).
    assert "names no spec.storage.endpoint" in proc.stderr, proc.stderr
    stored = s3_objects(s3, output)
    assert {k for k in stored if k.startswith("_inputs/0/")} == {
        f"_inputs/0/{p.name}" for p in CORPUS
    } | {"_inputs/0/_README"}
    parts = {k: v for k, v in stored.items() if k.startswith("part-")}
    assert parts == local_results("bash-wordcount", tmp_path)


def test_pods_that_cannot_start_fail_the_job_with_the_reason(
    cluster: Cluster, ns: str, corpus: str, tmp_path: Path
) -> None:
    """A missing Secret keeps every worker pod from starting: the job says so and stops."""
    path, _ = cluster_manifest(
        cluster,
        "bash-wordcount",
        corpus,
        tmp_path,
        storage={"endpoint": cluster.env["AWS_ENDPOINT_URL"], "secretName": "no-such-secret"},
    )
    name = create(cluster, ns, path)
    doc = wait_phase(cluster, ns, name, timeout=120)
    assert doc["status"]["phase"] == "Failed"
    assert "cannot start: CreateContainerConfigError" in doc["status"]["message"]
    assert "no-such-secret" in doc["status"]["message"]
    wait_until(
        "the worker Job to be deleted",
        lambda: kubectl(cluster, "-n", ns, "get", "job", name, check=False).returncode != 0,
        60,
    )


def test_finished_jobs_are_deleted_after_their_ttl(
    cluster: Cluster, ns: str, corpus: str, tmp_path: Path
) -> None:
    path, _ = cluster_manifest(
        cluster, "bash-wordcount", corpus, tmp_path, ttlSecondsAfterFinished=2
    )
    name = create(cluster, ns, path)
    assert wait_phase(cluster, ns, name)["status"]["phase"] == "Succeeded"
    wait_until(
        "the MapReduceJob to be deleted after its TTL",
        lambda: kubectl(cluster, "-n", ns, "get", "mrj", name, check=False).returncode != 0,
        90,
    )


@pytest.mark.parametrize(
    "mode", [{}, {"mode": "sidecar", "image": "busybox"}], ids=["wrapper", "sidecar"]
)
def test_an_archive_uploaded_by_submit_is_unpacked_for_the_commands(
    cluster: Cluster, ns: str, s3: Any, corpus: str, tmp_path: Path, mode: dict[str, str]
) -> None:
    """spec.archives with a local path: `kubemr submit --upload` copies it to S3, each worker
    pod unpacks it once, and the commands (in sidecar mode, in the user's busybox container)
    read it through the link in their directory."""
    import io
    import tarfile

    with tarfile.open(tmp_path / "model.tgz", "w:gz") as t:
        data = b"weights 42\n"
        info = tarfile.TarInfo("w.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    output = f"s3://{corpus}/archive-{uuid.uuid4().hex[:6]}/"
    manifest = {
        "apiVersion": "kubemr.io/v1alpha1",
        "kind": "MapReduceJob",
        "metadata": {"generateName": "archive-"},
        "spec": {
            "inputs": ["opaque:a", "opaque:b"],
            "map": "cat model/w.txt",
            "archives": ["model.tgz"],
            "output": output,
            "storage": {"endpoint": cluster.env["AWS_ENDPOINT_URL"]},
            **mode,
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    env = {**os.environ, **{k: cluster.env[k] for k in cluster.env if k.startswith("AWS_")}}
    env["KUBECONFIG"] = cluster.kubeconfig
    argv = [sys.executable, "-m", "kubemr", "submit", str(path), "-n", ns, "--upload"]
    proc = subprocess.run(
        [*argv, "--wait", "--timeout", "180", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    stored = s3_objects(s3, output)
    assert "_archives/0/model.tgz" in stored
    assert [v for k, v in sorted(stored.items()) if k.startswith("part-")] == [b"weights 42\n"] * 2


def test_secondary_sort_key_comparator_and_compressed_results_on_the_cluster(
    cluster: Cluster, ns: str, s3: Any, corpus: str, tmp_path: Path
) -> None:
    """partitionFields, keyComparator and outputCompression in one job, in sidecar mode in
    the busybox image: the same bytes as `kubemr run` of the same spec here."""
    rows = b"".join(f"{i % 13}.{(i * 7) % 31}.{i % 5}\n".encode() for i in range(3000))
    s3.put_object(Bucket=corpus, Key="keys/rows.txt", Body=rows)
    spec = {
        "map": "cat",
        "reduce": "cat",
        "separator": ".",
        "keyFields": 3,
        "partitionFields": 1,
        "keyComparator": "-k1,1n -k2,2nr",
        "outputCompression": "zstd",
        "partitions": 3,
    }
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.txt").write_bytes(rows)
    here = tmp_path / "local.yaml"
    here.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubemr.io/v1alpha1",
                "kind": "MapReduceJob",
                "metadata": {"name": "keys"},
                "spec": {**spec, "inputs": ["in/"], "output": "out/"},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
    env["KUBEMR_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "kubemr", "run", str(here), "-q"],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    expected = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*")}
    assert sorted(expected) == [f"part-r-0000{p}.zst" for p in range(3)]
    output = f"s3://{corpus}/keys-{uuid.uuid4().hex[:6]}/"
    path = tmp_path / "cluster.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubemr.io/v1alpha1",
                "kind": "MapReduceJob",
                "metadata": {"generateName": "keys-"},
                "spec": {
                    **spec,
                    "inputs": [f"s3://{corpus}/keys/"],
                    "output": output,
                    "storage": {"endpoint": cluster.env["AWS_ENDPOINT_URL"]},
                    "mode": "sidecar",
                    "image": "busybox",
                },
            }
        )
    )
    name = create(cluster, ns, path)
    doc = wait_phase(cluster, ns, name)
    assert doc["status"]["phase"] == "Succeeded", doc["status"].get("message")
    stored = s3_objects(s3, output)
    assert {k: v for k, v in stored.items() if k.startswith("part-")} == expected
