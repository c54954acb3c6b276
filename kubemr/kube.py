"""The one module that talks to kube-apiserver.

Everything kubemr does on a cluster goes through `Kube`: loading
configuration (in-cluster service account, or kubeconfig like kubectl),
reading and JSON-patching MapReduceJobs, creating the objects a job owns,
watching, Events and pod logs. Library errors are translated here, at the
boundary: a failed JSON-patch `test` (HTTP 422) is a `Conflict`, 404 is
`JobNotFound`/`NotFound`, 403 is `Forbidden` with what was refused, 5xx and
dropped connections are `TemporaryError`. Nothing else imports `kubernetes`.

With `KUBEMR_TRACE_FILE` set (a path, or `-` for stderr, which on a cluster
is the pod's log), every read and JSON patch of a MapReduceJob appends one
line to it (`RequestTrace`): what was done, when, how long it took as this
client saw it, the HTTP status (422: a lost race) and the bytes sent and
received. bench/coordination.py reads these lines from the worker pods'
logs; unset, nothing is written and nothing else changes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from kubemr.errors import (
    Conflict,
    JobNotFound,
    KubemrError,
    NotFound,
    Refused,
    TemporaryError,
)

GROUP = "kubemr.io"
VERSION = "v1alpha1"
PLURAL = "mapreducejobs"
KIND = "MapReduceJob"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
JSON_PATCH = "application/json-patch+json"
#: A repeat of an Event within this many seconds is counted on it (client-go: 6 minutes).
SERIES_SECONDS = 6 * 60.0
TRACE_ENV = "KUBEMR_TRACE_FILE"
#: Every trace line starts with this, so it can be picked out of a log it shares.
TRACE_PREFIX = "kubemr-trace "


class KubeError(KubemrError):
    """The Kubernetes API refused or failed a request."""


class Forbidden(KubeError):
    """RBAC refused the request."""


class AlreadyExists(KubeError):
    """An object by that name exists."""


class Invalid(KubeError):
    """The API server refused to create an object as invalid (422): retrying will not help."""


class TemporaryKubeError(KubeError, TemporaryError):
    """The API server is unreachable or overloaded; retry."""


class Gone(KubeError):
    """A watch's resourceVersion is too old (410): list again."""


class PatchRefused(KubeError, Refused):
    """The API server refused a patch for a reason no retry can cure: it breaks the
    schema, holds too many operations, or would make the object too large."""


#: The default deadline of every request, in seconds (a worker's is shorter: a third of
#: its lease at most, so that a hung request cannot outlive the lease it renews).
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class KubeConfig:
    """Where to find the cluster: kubeconfig file and context, or in-cluster."""

    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False


def in_cluster_namespace() -> str | None:
    try:
        with open(os.path.join(SA_DIR, "namespace"), encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def describe_patch(ops: Sequence[dict[str, Any]]) -> str:
    """What a patch of the job document does, in short: `claim=map:0-63`, `phase=Mapping`.

    A new claim gives its stage and tasks, a commit by a holder the task it commits up
    to (`commit=map:42`), a change of phase the phase; anything else is `-`.
    """
    parts: list[str] = []
    for op in ops:
        if op.get("op") not in ("add", "replace"):
            continue
        path = str(op.get("path", "")).split("/")
        value = op.get("value")
        if path == ["", "status", "phase"]:
            parts.append(f"phase={value}")
        elif len(path) == 5 and path[3] == "held" and isinstance(value, dict) and "a" in value:
            parts.append(f"claim={path[2]}:{value['a']}-{int(value['b']) - 1}")
        elif len(path) == 6 and path[3] == "held" and path[5] == "d":
            parts.append(f"commit={path[2]}:{value}")
    return ",".join(parts) or "-"


def _event(event: dict[str, Any], what: str) -> tuple[str, Any]:
    """(type, object) of one watch event; an ERROR event raises (Gone for 410)."""
    kind = str(event.get("type"))
    obj = event.get("object")
    if kind == "ERROR":
        code = obj.get("code") if isinstance(obj, dict) else None
        if code == 410:
            raise Gone(f"{what} expired (410 Gone)")
        raise TemporaryKubeError(f"{what} failed: {obj}")
    return kind, obj


def _lines(response: Any) -> Iterator[bytes]:
    """The lines of a streamed HTTP response (a watch sends one JSON event per line)."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from (line for line in lines if line.strip())
    if buffer.strip():
        yield buffer


class RequestTrace:
    """One line per request on a MapReduceJob, appended to a file: for measuring, not logging.

    A line is `kubemr-trace ` followed by a JSON object: `v` the verb (GET,
    PATCH, or WATCH for each event a watch received), `t` when the request
    started (epoch seconds), `ms` how long it took until its response was read,
    `code` the HTTP status (0: no answer), `out`/`in` the bytes of the request
    and response bodies, and for a patch `what` (`describe_patch`).
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> RequestTrace | None:
        """The trace `KUBEMR_TRACE_FILE` asks for, or None; `-` means stderr."""
        path = os.environ.get(TRACE_ENV)
        if not path:
            return None
        if path == "-":
            return cls(sys.stderr)
        try:
            return cls(open(path, "a", buffering=1, encoding="utf-8"))
        except OSError as exc:
            raise KubemrError(f"cannot open {TRACE_ENV}={path}: {exc.strerror or exc}.") from exc

    def record(
        self,
        verb: str,
        started: float,
        seconds: float,
        code: int,
        sent: int,
        received: int,
        what: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "v": verb,
            "t": round(started, 4),
            "ms": round(seconds * 1000, 3),
            "code": code,
            "out": sent,
            "in": received,
        }
        if what is not None:
            entry["what"] = what
        line = TRACE_PREFIX + json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError):  # a full disk or a closed stream: stop measuring
                pass


def _translate(exc: Exception, what: str) -> KubemrError:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        reason = _reason(exc)
        if status == 404:
            return NotFound(f"{what}: not found")
        if status == 403:
            return Forbidden(f"{what}: forbidden: {reason}")
        if status == 409:
            return AlreadyExists(f"{what}: {reason}")
        if status == 410:
            return Gone(f"{what}: {reason}")
        if status == 422 and _causes(exc):
            return PatchRefused(f"{what}: the object would be invalid: {reason}")
        if status == 422:
            # A failed `test` and a patch that does not apply get the same generic answer:
            # the caller tells them apart by checking its preconditions again.
            return Conflict(f"{what}: {reason}")
        if status == 413 or (status == 500 and "too large" in reason):
            return PatchRefused(f"{what}: the API server refused it as too large: {reason}")
        if status == 0 or status >= 500 or status == 429:
            return TemporaryKubeError(f"{what}: the API server answered {status}: {reason}")
        return KubeError(f"{what}: {reason}")
    return TemporaryKubeError(f"{what}: cannot reach the API server: {exc}")


def _causes(exc: Any) -> list[Any]:
    """The field errors of a 422 answer (schema violations); none for a failed `test`."""
    try:
        body = json.loads(exc.body)
        return list((body.get("details") or {}).get("causes") or [])
    except (TypeError, ValueError, AttributeError):
        return []


def _reason(exc: Any) -> str:
    try:
        body = json.loads(exc.body)
        return str(body.get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(exc, "reason", exc))


class EventSeries:
    """Which Events are repeats. As client-go's event recorder counts an Event like one it
    recorded in the last SERIES_SECONDS (same object, reason, note and type) on that one,
    this remembers the Events it recorded, for that long since each last happened."""

    def __init__(self, window: float = SERIES_SECONDS) -> None:
        self.window = window
        self._seen: dict[tuple[str, ...], tuple[str, int, float]] = {}

    def repeat(self, key: tuple[str, ...], now: float) -> tuple[str, int] | None:
        """(name, count with this one) of the Event that `key` repeats, or None: a new one."""
        self._seen = {k: v for k, v in self._seen.items() if now - v[2] <= self.window}
        seen = self._seen.get(key)
        if seen is None:
            return None
        name, count, _ = seen
        self._seen[key] = (name, count + 1, now)
        return name, count + 1

    def created(self, key: tuple[str, ...], name: str, now: float) -> None:
        self._seen[key] = (name, 1, now)

    def forget(self, key: tuple[str, ...]) -> None:
        self._seen.pop(key, None)


class Kube:
    """A connection to one cluster."""

    def __init__(self, config: KubeConfig | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        from kubernetes import client
        from kubernetes import config as kconfig
        from kubernetes.config.config_exception import ConfigException

        config = config or KubeConfig()
        #: The deadline of every request (connect and read), in seconds.
        self.timeout = timeout
        self.api_client: Any
        settings = client.Configuration()
        try:
            if config.in_cluster:
                kconfig.load_incluster_config(client_configuration=settings)
            else:
                kconfig.load_kube_config(
                    config_file=config.kubeconfig,
                    context=config.context,
                    client_configuration=settings,
                )
        except (ConfigException, OSError, TypeError) as exc:
            where = "the in-cluster service account" if config.in_cluster else "kubeconfig"
            raise KubeError(
                f"cannot load {where}: {exc}; set KUBECONFIG or pass --kubeconfig/--context."
            ) from exc
        # No retries inside the client: a request ends at its deadline, and what to do next
        # (read again, back off, give up) is kubemr's to decide.
        settings.retries = False
        self.api_client = client.ApiClient(settings)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.rbac = client.RbacAuthorizationV1Api(self.api_client)
        self.events = client.EventsV1Api(self.api_client)
        self.coordination = client.CoordinationV1Api(self.api_client)
        self.default_namespace = self._default_namespace(config)
        self.trace = RequestTrace.from_env()
        self.series = EventSeries()

    @staticmethod
    def _default_namespace(config: KubeConfig) -> str:
        if config.in_cluster:
            return in_cluster_namespace() or "default"
        from kubernetes import config as kconfig

        try:
            _, active = kconfig.list_kube_config_contexts(config_file=config.kubeconfig)
            if config.context:
                contexts, _ = kconfig.list_kube_config_contexts(config_file=config.kubeconfig)
                active = next((c for c in contexts if c["name"] == config.context), active)
            return str(active.get("context", {}).get("namespace") or "default")
        except Exception:  # any kubeconfig oddity: the API calls will say what is wrong
            return "default"

    # ---- MapReduceJobs ----------------------------------------------------

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        started, t0 = time.time(), time.perf_counter()
        code = received = 0
        try:
            # The raw response, parsed here: the same object, and its size for the trace.
            response = self.custom.get_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
            data = bytes(response.data)
            code, received = int(response.status), len(data)
            obj: dict[str, Any] = json.loads(data)
            return obj
        except Exception as exc:
            code = int(getattr(exc, "status", 0) or 0)
            received = len(getattr(exc, "body", None) or b"")
            err = _translate(exc, f"MapReduceJob {namespace}/{name}")
            if isinstance(err, NotFound):
                raise JobNotFound(
                    f"there is no MapReduceJob {name} in namespace {namespace}."
                ) from exc
            raise err from exc
        finally:
            if self.trace is not None:
                self.trace.record("GET", started, time.perf_counter() - t0, code, 0, received)

    def list_jobs(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        """Every MapReduceJob (in `namespace`, or all), and the list's resourceVersion."""
        try:
            if namespace:
                out = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, _request_timeout=self.timeout
                )
            else:
                out = self.custom.list_cluster_custom_object(
                    GROUP, VERSION, PLURAL, _request_timeout=self.timeout
                )
        except Exception as exc:
            raise _translate(exc, "listing MapReduceJobs") from exc
        return list(out.get("items", [])), str(out["metadata"].get("resourceVersion", ""))

    def watch_jobs(
        self, namespace: str | None, resource_version: str, timeout: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) from a watch; raises Gone when the version is too old."""
        fn: Any = self.custom.list_cluster_custom_object
        args: tuple[str, ...] = (GROUP, VERSION, PLURAL)
        if namespace:
            fn, args = (
                self.custom.list_namespaced_custom_object,
                (GROUP, VERSION, namespace, PLURAL),
            )
        yield from self._stream(fn, args, "MapReduceJobs", resource_version, timeout)

    def _stream(
        self,
        fn: Any,
        args: tuple[Any, ...],
        what: str,
        resource_version: str,
        timeout: int,
        **query: Any,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object as a dict) of a watch through the client's list function
        `fn(*args)` from `resource_version` on, for at most `timeout` seconds; raises Gone
        when the version is too old."""
        from kubernetes import watch

        w = watch.Watch()
        try:
            stream = w.stream(
                fn,
                *args,
                resource_version=resource_version,
                timeout_seconds=timeout,
                allow_watch_bookmarks=True,
                # The server ends the watch after `timeout`; the client gives it a little longer.
                _request_timeout=(self.timeout, timeout + self.timeout),
                **query,
            )
            for event in stream:
                raw = event.get("raw_object")  # the object as the server sent it, not a model
                if raw is not None and event.get("type") != "ERROR":
                    event = {"type": event.get("type"), "object": raw}
                yield _event(event, f"the watch of {what}")
        except KubemrError:
            raise
        except Exception as exc:
            raise _translate(exc, f"watching {what}") from exc
        finally:
            w.stop()

    def watch_job(
        self, namespace: str, name: str, resource_version: str, timeout: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) for one MapReduceJob from `resource_version` on, for at most
        `timeout` seconds; raises Gone when the version is too old. A watch of one object by
        its name is what the worker Role allows (`resourceNames` with a field selector)."""
        try:
            response = self.custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                watch=True,
                _preload_content=False,
                _request_timeout=(self.timeout, timeout + self.timeout),
            )
        except Exception as exc:
            raise _translate(exc, f"watching MapReduceJob {namespace}/{name}") from exc
        code = int(response.status)
        try:
            for line in _lines(response):
                kind, obj = _event(json.loads(line), f"the watch of {namespace}/{name}")
                if self.trace is not None and kind != "BOOKMARK":
                    self.trace.record("WATCH", time.time(), 0.0, code, 0, len(line) + 1)
                yield kind, obj
        except KubemrError:
            raise
        except Exception as exc:
            raise _translate(exc, f"watching MapReduceJob {namespace}/{name}") from exc
        finally:
            response.release_conn()

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            obj: dict[str, Any] = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body, _request_timeout=self.timeout
            )
            return obj
        except Exception as exc:
            raise _translate(exc, "creating the MapReduceJob") from exc

    def patch_job_status(
        self, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Apply a JSON patch to the status subresource, atomically; 422 means a failed test."""
        started, t0 = time.time(), time.perf_counter()
        code = received = 0
        try:
            response = self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                ops,
                _content_type=JSON_PATCH,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
            data = bytes(response.data)
            code, received = int(response.status), len(data)
            obj: dict[str, Any] = json.loads(data)
            return obj
        except Exception as exc:
            code = int(getattr(exc, "status", 0) or 0)
            received = len(getattr(exc, "body", None) or b"")
            err = _translate(exc, f"patching MapReduceJob {namespace}/{name}")
            if isinstance(err, NotFound):
                raise JobNotFound(f"the MapReduceJob {namespace}/{name} is gone.") from exc
            raise err from exc
        finally:
            if self.trace is not None:
                sent = len(json.dumps(ops))  # as the client sends it
                self.trace.record(
                    "PATCH",
                    started,
                    time.perf_counter() - t0,
                    code,
                    sent,
                    received,
                    describe_patch(ops),
                )

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                propagation_policy="Background",
                _request_timeout=self.timeout,
            )
        except Exception as exc:
            err = _translate(exc, f"deleting MapReduceJob {namespace}/{name}")
            if not isinstance(err, NotFound):
                raise err from exc

    # ---- owned objects ----------------------------------------------------

    def create(self, obj: dict[str, Any]) -> None:
        """Create a ConfigMap, ServiceAccount, Role, RoleBinding or Job; AlreadyExists if so."""
        kind = obj["kind"]
        ns = obj["metadata"]["namespace"]
        calls = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
            "Job": self.batch.create_namespaced_job,
        }
        try:
            calls[kind](ns, obj, _request_timeout=self.timeout)
        except Exception as exc:
            err = _translate(exc, f"creating {kind} {ns}/{obj['metadata']['name']}")
            if isinstance(err, Conflict):  # 422 on a create: the object is invalid, not a race
                raise Invalid(str(err).rstrip(".") + ".") from exc
            raise err from exc

    def get_batch_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read_or_none(
            self.batch.read_namespaced_job, namespace, name, f"reading Job {namespace}/{name}"
        )

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The coordination.k8s.io Lease `name`, or None if there is none."""
        return self._read_or_none(
            self.coordination.read_namespaced_lease,
            namespace,
            name,
            f"reading Lease {namespace}/{name}",
        )

    def _read_or_none(
        self, read: Any, namespace: str, name: str, what: str
    ) -> dict[str, Any] | None:
        """`read(name, namespace)` as a dict, or None if there is no such object."""
        try:
            found = read(name, namespace, _request_timeout=self.timeout)
        except Exception as exc:
            err = _translate(exc, what)
            if isinstance(err, NotFound):
                return None
            raise err from exc
        out: dict[str, Any] = self.api_client.sanitize_for_serialization(found)
        return out

    def write_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the Lease (no resourceVersion in `body`) or replace it (the version read):
        Conflict if another wrote it first, as optimistic concurrency wants."""
        name = body["metadata"]["name"]
        try:
            if body["metadata"].get("resourceVersion"):
                lease = self.coordination.replace_namespaced_lease(
                    name, namespace, body, _request_timeout=self.timeout
                )
            else:
                lease = self.coordination.create_namespaced_lease(
                    namespace, body, _request_timeout=self.timeout
                )
        except Exception as exc:
            err = _translate(exc, f"writing Lease {namespace}/{name}")
            if isinstance(err, AlreadyExists):  # 409: created or updated by another first
                raise Conflict(str(err)) from exc
            raise err from exc
        out: dict[str, Any] = self.api_client.sanitize_for_serialization(lease)
        return out

    def delete_batch_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background", _request_timeout=self.timeout
            )
        except Exception as exc:
            err = _translate(exc, f"deleting Job {namespace}/{name}")
            if not isinstance(err, NotFound):
                raise err from exc

    def _owned_api(self, kind: str, namespace: str | None) -> tuple[Any, tuple[Any, ...]]:
        """The list function (and its leading arguments) for batch Jobs or Pods."""
        if kind == "jobs":
            if namespace:
                return self.batch.list_namespaced_job, (namespace,)
            return self.batch.list_job_for_all_namespaces, ()
        if namespace:
            return self.core.list_namespaced_pod, (namespace,)
        return self.core.list_pod_for_all_namespaces, ()

    def list_owned(
        self, kind: str, namespace: str | None, selector: str
    ) -> tuple[list[dict[str, Any]], str]:
        """The batch Jobs or Pods (`kind`: "jobs" or "pods") matching `selector`, in
        `namespace` or all, and the list's resourceVersion (to watch from)."""
        fn, args = self._owned_api(kind, namespace)
        try:
            out = fn(*args, label_selector=selector, _request_timeout=self.timeout)
        except Exception as exc:
            raise _translate(exc, f"listing {kind}") from exc
        raw: dict[str, Any] = self.api_client.sanitize_for_serialization(out)
        return list(raw.get("items") or []), str(raw["metadata"].get("resourceVersion", ""))

    def watch_owned(
        self, kind: str, namespace: str | None, selector: str, resource_version: str, timeout: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object as a dict) of the batch Jobs or Pods matching `selector` from
        `resource_version` on; raises Gone when the version is too old."""
        fn, args = self._owned_api(kind, namespace)
        yield from self._stream(fn, args, kind, resource_version, timeout, label_selector=selector)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        try:
            pods = self.core.list_namespaced_pod(
                namespace, label_selector=selector, _request_timeout=self.timeout
            )
        except Exception as exc:
            raise _translate(exc, f"listing pods in {namespace}") from exc
        out: list[dict[str, Any]] = self.api_client.sanitize_for_serialization(pods).get(
            "items", []
        )
        return out

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        try:
            # The raw response: some client releases mangle the decoded log text.
            response = self.core.read_namespaced_pod_log(
                pod,
                namespace,
                container=container,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
            return bytes(response.data).decode("utf-8", "replace")
        except Exception as exc:
            raise _translate(exc, f"reading the log of pod {namespace}/{pod}") from exc

    def event(
        self,
        obj: dict[str, Any],
        reason: str,
        note: str,
        warning: bool = False,
        reporter: str = "kubemr-operator",
    ) -> None:
        """Record an Event about a MapReduceJob (best effort: never worth failing for). A
        repeat of one recorded in the last few minutes is counted on it (`series`), as
        client-go's recorder does, instead of adding an Event."""
        meta = obj["metadata"]
        namespace = meta["namespace"]
        kind = "Warning" if warning else "Normal"
        note = note[:1000]
        key = (namespace, str(meta.get("uid") or meta["name"]), reason, note, kind)
        now = dt.datetime.now(dt.UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        repeat = self.series.repeat(key, time.monotonic())
        try:
            if repeat is not None:
                name, count = repeat
                series = {"count": count, "lastObservedTime": stamp}
                try:
                    self.events.patch_namespaced_event(
                        name,
                        namespace,
                        [{"op": "add", "path": "/series", "value": series}],
                        _content_type=JSON_PATCH,
                        _request_timeout=self.timeout,
                    )
                    return
                except Exception:  # gone (expired, deleted): record it anew
                    self.series.forget(key)
            event_name = f"{meta['name']}.{uuid.uuid4().hex[:16]}"
            body: dict[str, Any] = {
                "apiVersion": "events.k8s.io/v1",
                "kind": "Event",
                "metadata": {
                    "name": event_name,
                    "namespace": namespace,
                },
                "eventTime": stamp,
                "reportingController": f"{GROUP}/{reporter}",
                "reportingInstance": os.environ.get("HOSTNAME", reporter),
                "action": reason,
                "reason": reason,
                "note": note,
                "type": kind,
                "regarding": {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "name": meta["name"],
                    "namespace": namespace,
                    "uid": meta.get("uid"),
                },
            }
            self.events.create_namespaced_event(namespace, body, _request_timeout=self.timeout)
            self.series.created(key, event_name, time.monotonic())
        except Exception:  # events are best effort
            pass

    def close(self) -> None:
        self.api_client.close()
