"""The CLI's cluster side: submit a MapReduceJob, wait for it, find one by name.

`kubemr submit` checks a manifest the way the operator will (one sentence
and exit code 2 for what is wrong, before anything reaches the cluster),
creates it, and with `--wait` shows progress until it ends. `status`,
`results`, `logs` and `replay` accept a local run name or a MapReduceJob
name; `locate` decides which (a local run by that name wins unless
`--namespace`/`--context` point at a cluster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from kubemr import reporter, state
from kubemr.errors import JobNotFound, RunError
from kubemr.kube import Kube, KubeConfig, KubeError
from kubemr.manifest import cluster_spec, read_manifest, resolve_archive, resolve_input
from kubemr.progress import Progress
from kubemr.runs import find_run, read_doc
from kubemr.spec import JobSpec, parse_manifest
from kubemr.storage import join, storage_for
from kubemr.storage.base import Storage, StorageConfig
from kubemr.storage.local import file_path


@dataclass
class Located:
    """A job found by name: its document, and where it lives."""

    doc: dict[str, Any]
    run_dir: str | None = None
    kube: Kube | None = None
    namespace: str | None = None


def kube_from(args: argparse.Namespace) -> Kube:
    return Kube(
        KubeConfig(
            kubeconfig=getattr(args, "kubeconfig", None), context=getattr(args, "context", None)
        )
    )


def wants_cluster(args: argparse.Namespace) -> bool:
    return bool(
        getattr(args, "namespace", None)
        or getattr(args, "context", None)
        or getattr(args, "kubeconfig", None)
    )


def locate(args: argparse.Namespace) -> Located:
    """A local run named `args.run`, else the MapReduceJob of that name on the cluster."""
    local_error: RunError | None = None
    if not wants_cluster(args):
        try:
            run_dir = find_run(args.run)
        except RunError as exc:
            local_error = exc
        else:
            return Located(read_doc(run_dir), run_dir=run_dir)
    try:
        kube = kube_from(args)
    except KubeError as exc:
        if local_error is None:
            raise
        raise RunError(f"{str(local_error).rstrip('.')}; no cluster either: {exc}") from exc
    namespace = args.namespace or kube.default_namespace
    try:
        return Located(kube.get_job(namespace, args.run), kube=kube, namespace=namespace)
    except JobNotFound as exc:
        if local_error is None:
            raise
        raise RunError(
            f"no local run and no MapReduceJob named {args.run!r} (namespace {namespace})."
        ) from exc


def cmd_submit(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.file)
    if args.output:
        manifest.setdefault("spec", {})["output"] = args.output
    spec = parse_manifest(manifest)
    if args.upload and spec.output and spec.output.startswith("s3://"):
        config = StorageConfig(spec.storage.endpoint, spec.storage.region)
        base = os.path.dirname(os.path.abspath(args.file))
        manifest["spec"]["inputs"] = upload_local_inputs(spec.inputs, base, spec.output, config)
        if spec.archives:
            manifest["spec"]["archives"] = upload_local_archives(
                spec.archives, base, spec.output, config
            )
        warning = endpoint_warning(spec, storage_for(spec.output, config))
        if warning:
            print(f"kubemr: warning: {warning}", file=sys.stderr)
    cluster_spec(manifest)
    kube = kube_from(args)
    namespace = (
        args.namespace
        or (manifest.get("metadata") or {}).get("namespace")
        or (kube.default_namespace)
    )
    manifest.setdefault("metadata", {})["namespace"] = namespace
    created = kube.create_job(namespace, manifest)
    name = created["metadata"]["name"]
    print(f"mapreducejob.kubemr.io/{name} created")
    if not args.wait:
        return 0
    return wait(kube, namespace, name, quiet=args.quiet, timeout=args.timeout)


def endpoint_warning(spec: JobSpec, uploader: Storage) -> str | None:
    """What to tell a user whose inputs went through an S3 endpoint the job's pods will not
    be told of (a MinIO named by $AWS_ENDPOINT_URL here, and no spec.storage.endpoint)."""
    from kubemr.storage.s3 import S3Storage, is_aws  # boto3 only when there is S3 to talk to

    if spec.storage.endpoint or not isinstance(uploader, S3Storage):
        return None
    used = uploader.endpoint_url
    if is_aws(used):
        return None
    return (
        f"the inputs went to {used} (from AWS_ENDPOINT_URL), but the job names no "
        "spec.storage.endpoint: its pods use the operator's KUBEMR_S3_ENDPOINT, or AWS S3 if "
        "it has none; set spec.storage.endpoint to the address pods reach that server at."
    )


def upload_local_inputs(
    inputs: tuple[str, ...], base: str, output: str, config: StorageConfig | None = None
) -> list[str]:
    """Copy inputs that are local paths to `<output>/_inputs/N/`; return the new input list."""
    out: list[str] = []
    for i, item in enumerate(inputs):
        url = resolve_input(item, base)
        if not url.startswith("file://"):
            out.append(item)
            continue
        local = storage_for(url)
        objects = local.list(url)
        target = join(output, "_inputs", str(i)) + "/"
        remote = storage_for(target, config)
        size = sum(o.size for o in objects)
        print(
            f"uploading {item}: {len(objects)} file(s), {size} bytes, to {target}", file=sys.stderr
        )
        single = len(objects) == 1 and objects[0].url == url
        for obj in objects:
            rel = os.path.basename(obj.url) if single else obj.url[len(url.rstrip("/")) + 1 :]
            path = local.local_path(obj.url)
            assert path is not None
            _upload(remote, path, join(target, rel))
        out.append(join(target, os.path.basename(url)) if single else target)
    return out


def upload_local_archives(
    archives: tuple[tuple[str, str], ...], base: str, output: str, config: StorageConfig
) -> list[str]:
    """Copy archives that are local paths to `<output>/_archives/N/`; the new archive list."""
    out: list[str] = []
    for i, (where, name) in enumerate(archives):
        url = resolve_archive(where, base)
        if url.startswith("file://"):
            path = file_path(url)
            url = join(output, "_archives", str(i), os.path.basename(path))
            print(f"uploading {where} to {url}", file=sys.stderr)
            _upload(storage_for(url, config), path, url)
        out.append(f"{url}#{name}")
    return out


def _upload(remote: Any, path: str, url: str) -> None:
    """Upload a local file without consuming it."""
    with tempfile.NamedTemporaryFile(delete=False) as tmp, open(path, "rb") as src:
        shutil.copyfileobj(src, tmp, 1024 * 1024)
    try:
        remote.put_file(tmp.name, url)
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)


def wait(kube: Kube, namespace: str, name: str, quiet: bool = False, timeout: float = 0) -> int:
    """Show progress until the job ends; 0 if it succeeded, 1 if it failed."""
    progress = None if quiet else Progress()
    deadline = time.monotonic() + timeout if timeout else None
    succeeded_at: float | None = None
    try:
        while True:
            doc = kube.get_job(namespace, name)
            if progress is not None:
                progress.update(doc)
            if state.phase_of(doc) in state.TERMINAL:
                # A worker writes _SUCCESS just after the commit: wait for it, a while.
                succeeded_at = succeeded_at or time.monotonic()
                if not state.needs_success_marker(doc) or time.monotonic() - succeeded_at > 60:
                    break
            if deadline is not None and time.monotonic() > deadline:
                raise RunError(f"{name} did not finish within {timeout:g}s; it is still running.")
            time.sleep(1.0)
    finally:
        if progress is not None:
            progress.finish()
    status = state.status_of(doc)
    if state.phase_of(doc) == state.SUCCEEDED:
        print(
            f"{name} succeeded: {state.result_count(doc)} result file(s) in "
            f"{doc['spec'].get('output')}",
            file=sys.stderr,
        )
        for line in reporter.format_counters(status.get("counters") or {}):
            print(line, file=sys.stderr)
        print(doc["spec"].get("output"))
        return 0
    print(f"kubemr: error: {name} failed: {status.get('message')}", file=sys.stderr)
    return 1


def pod_logs(located: Located, name: str) -> str:
    """The logs of every worker pod of a cluster job."""
    from kubemr.operator.desired import LABEL

    assert located.kube is not None and located.namespace is not None
    out = []
    for pod in located.kube.list_pods(located.namespace, f"{LABEL}={name}"):
        pod_name = pod["metadata"]["name"]
        out.append(f"==> pod/{pod_name} <==\n{located.kube.pod_log(located.namespace, pod_name)}")
    return "\n".join(out)
