"""Helpers the cluster tests share: kubectl, the example jobs as cluster manifests, waiting
for a phase, reading results from S3 and the same job's results from `kubemr run`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml
from devcluster_support import Cluster, wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CORPUS = sorted(p for p in (EXAMPLES / "bash-wordcount" / "corpus").glob("*.txt"))
LEASE_SECONDS = "5"


def kubectl(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(*args, check=check)


def cluster_manifest(
    cluster: Cluster, example: str, bucket: str, tmp: Path, **changes: Any
) -> tuple[Path, str]:
    """An example's job.yaml with its inputs and output in S3 (and any spec changes; a change
    to None removes the field)."""
    doc = yaml.safe_load((EXAMPLES / example / "job.yaml").read_text())
    output = f"s3://{bucket}/out-{uuid.uuid4().hex[:8]}/"
    doc["spec"].update(
        inputs=[f"s3://{bucket}/corpus/"],
        output=output,
        storage={"endpoint": cluster.env["AWS_ENDPOINT_URL"]},
    )
    doc["spec"].update(changes)
    doc["spec"] = {k: v for k, v in doc["spec"].items() if v is not None}
    path = tmp / f"{example}-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, output


def create(cluster: Cluster, ns: str, path: Path) -> str:
    out = kubectl(cluster, "-n", ns, "create", "-f", str(path), "-o", "name")
    return out.stdout.strip().split("/", 1)[1]


def get(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    out = kubectl(cluster, "-n", ns, "get", "mrj", name, "-o", "json")
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def wait_phase(cluster: Cluster, ns: str, name: str, timeout: float = 180) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        doc = get(cluster, ns, name)
        return doc if doc.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    return wait_until(f"{name} to finish", done, timeout)


def s3_objects(s3: Any, url: str) -> dict[str, bytes]:
    """Every object under an s3:// prefix (one deleted while we list it is left out)."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            try:
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            except s3.exceptions.NoSuchKey:
                continue
            out[obj["Key"][len(prefix) :]] = body
    return out


def local_results(example: str, tmp: Path) -> dict[str, bytes]:
    """The same example run here with `kubemr run`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
    env["KUBEMR_HOME"] = str(tmp / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "kubemr", "run", str(EXAMPLES / example / "job.yaml"), "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip())
    return {p.name: p.read_bytes() for p in out.glob("part-*")}


def events(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    out = kubectl(
        cluster,
        "-n",
        ns,
        "get",
        "events",
        "-o",
        "json",
        "--field-selector",
        f"involvedObject.name={name}",
    )
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else None


class OperatorProcess:
    """`kubemr operator` run as a process here against the devcluster (watching `namespace`,
    metrics and probes on ports of the kernel's choosing, JSON logs), its log lines collected
    as they come."""

    def __init__(self, cluster: Cluster, namespace: str, *extra: str) -> None:
        self.lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubemr",
                "operator",
                "-n",
                namespace,
                "--kubeconfig",
                cluster.kubeconfig,
                *extra,
                "--metrics-bind-address",
                "127.0.0.1:0",
                "--health-probe-bind-address",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(json.loads(line))  # every line is one JSON object

    def said(self, text: str) -> bool:
        return any(text in x["msg"] for x in list(self.lines))

    def about(self, name: str) -> list[dict[str, Any]]:
        """The log lines about the job `name`."""
        return [x for x in list(self.lines) if x.get("name") == name]

    def served(self, paths: str) -> str | None:
        """The address it said it serves `paths` ("/metrics", "/healthz /readyz") on."""
        found = [x["msg"] for x in list(self.lines) if x["msg"].startswith(f"serving {paths} on ")]
        return found[0].rsplit(" ", 1)[1] if found else None

    def ready(self) -> bool:
        probes = self.served("/healthz /readyz")
        return probes is not None and fetch(f"http://{probes}/readyz")[0] == 200

    def leader_metric(self) -> float | None:
        at = self.served("/metrics")
        return metric(fetch(f"http://{at}/metrics")[1], "kubemr_operator_leader") if at else None


def failing_job(kube: Any, namespace: str, prefix: str) -> str:
    """Create a MapReduceJob an operator fails at once (it names no output); its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.create_job(
        namespace,
        {
            "apiVersion": "kubemr.io/v1alpha1",
            "kind": "MapReduceJob",
            "metadata": {"name": name},
            "spec": {"inputs": ["opaque:x"], "map": "cat"},  # no output: it fails
        },
    )
    return name
