"""The devcluster as tests see it: its environment, API clients and polling.

Kept apart from conftest.py so test modules can import the types they use.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client

T = TypeVar("T")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def read_env(path: Path) -> dict[str, str]:
    """The ``export NAME=value`` lines of ``.devcluster/env``."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^export ([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll ``check`` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)


@dataclass
class Cluster:
    """A running devcluster: its environment and API clients."""

    env: dict[str, str]
    api: Any  # kubernetes.client.ApiClient

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.env["DEVCLUSTER_KUBECTL"], "--kubeconfig", self.kubeconfig, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api)

    @property
    def batch(self) -> Any:
        return client.BatchV1Api(self.api)

    @property
    def apps(self) -> Any:
        return client.AppsV1Api(self.api)

    @property
    def rbac(self) -> Any:
        return client.RbacAuthorizationV1Api(self.api)

    @property
    def extensions(self) -> Any:
        return client.ApiextensionsV1Api(self.api)

    def pod(self, namespace: str, name: str) -> Any:
        return self.core.read_namespaced_pod(name, namespace)

    def wait_pod_phase(
        self, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 60.0
    ) -> Any:
        """The pod once its phase is one of ``phases``."""

        def check() -> Any:
            pod = self.pod(namespace, name)
            return pod if pod.status.phase in phases else None

        return wait_until(f"pod {namespace}/{name} to be {'/'.join(phases)}", check, timeout)

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """A container's log, as text.

        Read raw: the client's own decoding turns JSON-looking lines into Python
        reprs, and kubernetes 36 returns the repr of bytes (client issue #2596).
        """
        kwargs = {"container": container} if container else {}
        resp = self.core.read_namespaced_pod_log(name, namespace, _preload_content=False, **kwargs)
        return bytes(resp.data).decode()
