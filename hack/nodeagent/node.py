"""The agent: one Node object, a trivial scheduler, and a pod worker per bound pod.

Scheduling is binding every pending pod that asks for the default scheduler
to this node (there is only one). The Node is kept fresh with a Lease in
``kube-node-lease`` and periodic status updates, so the node lifecycle
controller never marks it unreachable while the agent runs.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .api import Api, ApiError, Obj
from .pods import PodWorker, now
from .sandbox import Images

log = logging.getLogger("nodeagent")

KUBELET_VERSION = "v1.34.4"


@dataclass(frozen=True)
class Config:
    """Everything the agent is told on its command line."""

    server: str
    ca: str
    cert: str
    key: str
    serving_cert: str
    serving_key: str
    node_name: str
    state_dir: Path
    kubelet_port: int
    busybox_rootfs: Path
    project_root: Path
    bwrap: str


def _memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 4 << 30


def forever(what: str, body: Callable[[], None], pause: float = 1.0) -> None:
    """Run ``body`` again and again, logging (not dying of) its errors."""
    while True:
        try:
            body()
        except Exception as e:
            log.warning("%s: %s", what, e)
            time.sleep(pause)


class Agent:
    """The node: registration, heartbeats, binding, and the pod workers."""

    def __init__(self, cfg: Config, api: Api, images: Images) -> None:
        self.cfg = cfg
        self.api = api
        self.images = images
        self.bwrap = cfg.bwrap
        self.node_name = cfg.node_name
        self.state_dir = cfg.state_dir
        host, _, port = cfg.server.removeprefix("https://").partition(":")
        self.base_env = {
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
            f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
            f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
            f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
            f"KUBERNETES_PORT_{port}_TCP_PORT": port,
        }
        self.cpu = os.cpu_count() or 1
        self.memory = _memory_bytes()
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()

    # ---- node ------------------------------------------------------------

    def node_status(self) -> Obj:
        t = now()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        resources = {
            "cpu": str(self.cpu),
            "memory": f"{self.memory // 1024}Ki",
            "pods": "110",
            "ephemeral-storage": "100Gi",
        }
        uname = platform.uname()
        return {
            "conditions": [
                {
                    "type": kind,
                    "status": value,
                    "reason": reason,
                    "message": "devcluster node agent",
                    "lastHeartbeatTime": t,
                    "lastTransitionTime": self.started,
                }
                for kind, value, reason in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            "capacity": resources,
            "allocatable": resources,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.cfg.kubelet_port}},
            "nodeInfo": {
                "machineID": self.machine_id,
                "systemUUID": self.machine_id,
                "bootID": self.machine_id,
                "kernelVersion": uname.release,
                "osImage": "devcluster (bubblewrap)",
                "containerRuntimeVersion": "bwrap://0",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64" if uname.machine == "x86_64" else uname.machine,
            },
        }

    def register(self) -> None:
        self.started = now()
        self.machine_id = uuid.uuid5(uuid.NAMESPACE_DNS, self.node_name).hex
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "devcluster",
                },
            },
        }
        try:
            self.api.request("POST", "/api/v1/nodes", body)
        except ApiError as e:
            if e.status != 409:
                raise
        self.api.merge_patch(
            f"/api/v1/nodes/{self.node_name}/status", {"status": self.node_status()}
        )
        log.info("registered node %s", self.node_name)

    def heartbeat(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        last_status = 0.0
        while True:
            renew = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            spec = {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": 40,
                "renewTime": renew,
            }
            try:
                self.api.merge_patch(path, {"spec": spec})
            except ApiError as e:
                if e.status != 404:
                    raise
                self.api.request(
                    "POST",
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": self.node_name},
                        "spec": spec,
                    },
                )
            if time.monotonic() - last_status > 30:
                self.api.merge_patch(
                    f"/api/v1/nodes/{self.node_name}/status", {"status": self.node_status()}
                )
                last_status = time.monotonic()
            time.sleep(10)

    # ---- scheduling ------------------------------------------------------

    def bind(self, pod: Obj) -> None:
        meta = pod["metadata"]
        spec = pod["spec"]
        if spec.get("nodeName") or meta.get("deletionTimestamp"):
            return
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
            return
        try:
            self.api.request(
                "POST",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
                {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": meta["name"], "uid": meta["uid"]},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
                },
            )
        except ApiError as e:
            if e.status in (404, 409):
                return
            raise

    def schedule(self) -> None:
        query = {"fieldSelector": "spec.nodeName="}
        listing = self.api.get("/api/v1/pods", query)
        for pod in listing["items"]:
            self.bind(pod)
        rv = listing["metadata"]["resourceVersion"]
        while True:
            for event in self.api.watch(
                "/api/v1/pods", {**query, "resourceVersion": rv, "timeoutSeconds": "240"}
            ):
                if event["type"] == "ERROR":
                    return  # relist
                obj = event["object"]
                rv = obj["metadata"].get("resourceVersion", rv)
                if event["type"] in ("ADDED", "MODIFIED"):
                    self.bind(obj)

    # ---- pods ------------------------------------------------------------

    def forget(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)

    def find(self, namespace: str, name: str) -> PodWorker | None:
        with self.lock:
            for w in self.workers.values():
                if w.namespace == namespace and w.pod_name == name:
                    return w
        return None

    def dispatch(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is None:
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.start()
                return
        worker.update(pod)

    def sync(self) -> None:
        query = {"fieldSelector": f"spec.nodeName={self.node_name}"}
        listing = self.api.get("/api/v1/pods", query)
        seen = set()
        for pod in listing["items"]:
            seen.add(pod["metadata"]["uid"])
            self.dispatch(pod)
        with self.lock:
            stale = [w for uid, w in self.workers.items() if uid not in seen]
        for w in stale:
            w.vanish()
        pods_dir = self.state_dir / "pods"
        if pods_dir.is_dir():
            for d in pods_dir.iterdir():
                with self.lock:
                    known = d.name in self.workers
                if not known and d.name not in seen:
                    shutil.rmtree(d, ignore_errors=True)
        rv = listing["metadata"]["resourceVersion"]
        deadline = time.monotonic() + 600  # relist now and then, as kubelet does
        while time.monotonic() < deadline:
            for event in self.api.watch(
                "/api/v1/pods", {**query, "resourceVersion": rv, "timeoutSeconds": "240"}
            ):
                kind = event["type"]
                if kind == "ERROR":
                    return
                obj = event["object"]
                rv = obj["metadata"].get("resourceVersion", rv)
                if kind in ("ADDED", "MODIFIED"):
                    self.dispatch(obj)
                elif kind == "DELETED":
                    with self.lock:
                        worker = self.workers.get(obj["metadata"]["uid"])
                    if worker is not None:
                        worker.update(obj)
                        worker.vanish()

    def run(self) -> None:
        forever("register", self._register_once, pause=2)

    def _register_once(self) -> None:
        self.register()
        threading.Thread(target=forever, args=("heartbeat", self.heartbeat), daemon=True).start()
        threading.Thread(target=forever, args=("scheduler", self.schedule), daemon=True).start()
        forever("pods", self.sync)
