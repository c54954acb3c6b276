"""What a container sees: its environment variables and its volumes' files.

Both read ConfigMaps, Secrets and the pod itself the way kubelet does, and
fail with ``ConfigError`` (kubelet's CreateContainerConfigError or a failed
mount) when a non-optional reference is missing, so the pod waits and retries
instead of starting with a wrong configuration.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .api import ApiError, Obj

Getter = Callable[[str, str, str], Obj | None]  # (kind, namespace, name) -> object


class ConfigError(Exception):
    """A reference in the pod spec cannot be satisfied (yet)."""


def make_getter(get: Callable[[str], Obj]) -> Getter:
    """A getter for configmaps and secrets that answers None for a 404."""

    def getter(kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    return getter


def _data(kind: str, obj: Obj) -> dict[str, bytes]:
    """The decoded key -> bytes of a ConfigMap or Secret."""
    out: dict[str, bytes] = {}
    if kind == "configmaps":
        for k, v in (obj.get("data") or {}).items():
            out[k] = str(v).encode()
        for k, v in (obj.get("binaryData") or {}).items():
            out[k] = base64.b64decode(v)
    else:
        for k, v in (obj.get("data") or {}).items():
            out[k] = base64.b64decode(v)
        for k, v in (obj.get("stringData") or {}).items():
            out[k] = str(v).encode()
    return out


_FIELD_RE = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Obj, path: str) -> str:
    """The value of a downward-API ``fieldRef.fieldPath``."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
        "status.hostIPs": status.get("hostIP", "127.0.0.1"),
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.podIPs": status.get("podIP", "127.0.0.1"),
    }
    if path in simple:
        return str(simple[path] or "")
    m = _FIELD_RE.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise ConfigError(f"unsupported fieldRef {path!r}")


_SUFFIX = {
    "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def quantity(q: str) -> float:
    """A resource quantity ("500m", "1Gi") as a number."""
    m = re.match(r"^([0-9.]+)([a-zA-Z]*)$", str(q))
    if not m:
        raise ConfigError(f"bad quantity {q!r}")
    return float(m.group(1)) * _SUFFIX.get(m.group(2), 1.0)


def resource_value(container: Obj, ref: Obj, node_cpu: int, node_memory: int) -> str:
    """The value of a ``resourceFieldRef`` (limits default to the node's size)."""
    kind, _, name = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    given = (resources.get(kind) or {}).get(name)
    if given is None and kind == "requests":
        given = (resources.get("limits") or {}).get(name)
    value = quantity(given) if given is not None else None
    if value is None:
        value = float(node_cpu if name == "cpu" else node_memory) if kind == "limits" else 0.0
    divisor = quantity(ref.get("divisor", "1") or "1")
    return str(math.ceil(value / divisor))


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names only, ``$$`` escapes."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i):
            end = text.find(")", i + 2)
            name = text[i + 2 : end] if end >= 0 else ""
            if end >= 0 and name in env:
                out.append(env[name])
            else:
                out.append(text[i : end + 1] if end >= 0 else text[i:])
                if end < 0:
                    break
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def container_env(
    pod: Obj,
    container: Obj,
    base: Mapping[str, str],
    get: Getter,
    node_cpu: int,
    node_memory: int,
) -> dict[str, str]:
    """The environment of one container: base, then envFrom, then env, in order."""
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for key, kind in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
            ref = source.get(key)
            if ref is None:
                continue
            obj = get(kind, ns, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind[:-1]} "{ref["name"]}" not found')
            for k, v in _data(kind, obj).items():
                env[prefix + k] = v.decode(errors="replace")
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[name] = resource_value(container, source["resourceFieldRef"], node_cpu, node_memory)
        else:
            key, kind = (
                ("configMapKeyRef", "configmaps")
                if "configMapKeyRef" in source
                else ("secretKeyRef", "secrets")
            )
            ref = source.get(key)
            if ref is None:
                raise ConfigError(f"unsupported valueFrom for {name}")
            obj = get(kind, ns, ref["name"])
            data = _data(kind, obj) if obj is not None else None
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                what = f'key "{ref["key"]}" in {kind[:-1]} "{ref["name"]}"'
                raise ConfigError(f"couldn't find {what} for env {name}")
            env[name] = data[ref["key"]].decode(errors="replace")
    return env


def _write(path: Path, content: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.chmod(path, mode)


def _project_keys(
    dest: Path, data: dict[str, bytes], items: list[Obj] | None, mode: int, what: str
) -> None:
    if not items:
        for k, v in data.items():
            _write(dest / k, v, mode)
        return
    for item in items:
        if item["key"] not in data:
            raise ConfigError(f'key "{item["key"]}" not found in {what}')
        _write(dest / item["path"], data[item["key"]], item.get("mode", mode))


class VolumeMaker:
    """Creates the host directory for each of a pod's volumes."""

    def __init__(
        self,
        pod: Obj,
        root: Path,
        get: Getter,
        request_token: Callable[[Obj, Obj], str],
    ) -> None:
        self.pod = pod
        self.root = root
        self.get = get
        self.request_token = request_token
        self.ns = pod["metadata"]["namespace"]

    def make_all(self) -> dict[str, Path]:
        """All volumes, as name -> host path; raises ConfigError to retry later."""
        out: dict[str, Path] = {}
        for volume in self.pod["spec"].get("volumes") or []:
            out[volume["name"]] = self.make(volume)
        return out

    def _keyed(self, kind: str, source: Obj, dest: Path, mode: int) -> None:
        name = source.get("name") or source.get("secretName", "")
        obj = self.get(kind, self.ns, name)
        what = f'{kind[:-1]} "{name}"'
        if obj is None:
            if source.get("optional"):
                return
            raise ConfigError(f"{what} not found")
        _project_keys(dest, _data(kind, obj), source.get("items"), mode, what)

    def make(self, volume: Obj) -> Path:
        name = str(volume["name"])
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") in ("DirectoryOrCreate",):
                path.mkdir(parents=True, exist_ok=True)
            return path
        dest = self.root / name
        if "emptyDir" in volume:
            dest.mkdir(parents=True, exist_ok=True)
            dest.chmod(0o777)
            return dest
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if "configMap" in volume:
            src = volume["configMap"]
            self._keyed("configmaps", src, tmp, src.get("defaultMode", 0o644))
        elif "secret" in volume:
            src = volume["secret"]
            self._keyed("secrets", src, tmp, src.get("defaultMode", 0o644))
        elif "downwardAPI" in volume:
            src = volume["downwardAPI"]
            self._downward(src.get("items") or [], tmp, src.get("defaultMode", 0o644))
        elif "projected" in volume:
            src = volume["projected"]
            mode = src.get("defaultMode", 0o644)
            for part in src.get("sources") or []:
                if "serviceAccountToken" in part:
                    tok = part["serviceAccountToken"]
                    token = self.request_token(self.pod, tok)
                    _write(tmp / tok["path"], token.encode(), mode)
                elif "configMap" in part:
                    self._keyed("configmaps", part["configMap"], tmp, mode)
                elif "secret" in part:
                    self._keyed("secrets", part["secret"], tmp, mode)
                elif "downwardAPI" in part:
                    self._downward(part["downwardAPI"].get("items") or [], tmp, mode)
                else:
                    raise ConfigError(f"unsupported projected source in volume {name}")
        else:
            kinds = sorted(set(volume) - {"name"})
            raise ConfigError(
                f"volume {name}: type {', '.join(kinds)} is not supported by the devcluster node"
            )
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        return dest

    def _downward(self, items: list[Obj], dest: Path, mode: int) -> None:
        for item in items:
            if "fieldRef" in item:
                value = field_value(self.pod, item["fieldRef"]["fieldPath"])
            else:
                raise ConfigError("only fieldRef is supported in downwardAPI volumes")
            _write(dest / item["path"], value.encode(), item.get("mode", mode))
