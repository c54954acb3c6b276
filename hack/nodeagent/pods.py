"""One pod's life on the node: init containers, sidecars, containers, status, deletion.

A ``PodWorker`` thread owns one pod. It wakes when the pod object changes or
a process exits, advances the pod (start what should run, restart what the
restart policy says to restart), and reports the resulting status. Deletion
sends SIGTERM to each container's main process, waits out the grace period,
SIGKILLs what is left, reports the final status and removes the pod, as
kubelet does.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from .api import Api, ApiError, Obj
from .podspec import ConfigError, Getter, VolumeMaker, container_env, expand, make_getter
from .sandbox import ImageError, Images, Mount, Sandbox

log = logging.getLogger("nodeagent.pods")

BACKOFF_MAX = 20.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Node(Protocol):
    """What a pod worker needs from the agent that runs it."""

    api: Api
    images: Images
    bwrap: str
    node_name: str
    state_dir: Path
    base_env: dict[str, str]
    cpu: int
    memory: int

    def forget(self, uid: str) -> None: ...


@dataclass
class Run:
    """One container of the pod and what happened to it so far."""

    spec: Obj
    kind: str  # "init", "sidecar" or "main"
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = -1  # becomes 0 at the first start
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "PodInitializing"}})
    last_state: Obj = field(default_factory=dict)
    exit_code: int | None = None
    done: bool = False  # finished and will not run again
    not_before: float = 0.0
    image_id: str = ""

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self, pod_uid: str) -> Obj:
        running = self.proc is not None
        out: Obj = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": self.image_id,
            "ready": running if self.kind != "init" else (self.done and self.exit_code == 0),
            "restartCount": max(self.restarts, 0),
            "started": running,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.restarts >= 0:
            out["containerID"] = f"bwrap://{pod_uid[:8]}-{self.name}-{self.restarts}"
        return out


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def signal_container(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal a container: SIGTERM its main process, or SIGKILL everything.

    The process tree is bwrap (outside) -> bwrap (PID 1 inside) -> the
    command. SIGTERM goes to the command only, as a container runtime sends
    it to the container's entrypoint; SIGKILL goes to the whole process group
    and the namespace's PID 1, which takes every process in it down.
    """
    if sig == signal.SIGKILL:
        for pid in _children(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
    for init in _children(proc.pid):
        for pid in _children(init):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


class PodWorker:
    """Runs one pod, in a thread of its own, to completion or until it is deleted."""

    def __init__(self, node: Node, pod: Obj) -> None:
        meta = pod["metadata"]
        name = f"pod-{meta['namespace']}/{meta['name']}"
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self.node = node
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.pod = pod
        self.gone = False
        self.wake = threading.Event()
        self.dir = node.state_dir / "pods" / self.uid
        spec = pod["spec"]
        self.policy: str = spec.get("restartPolicy", "Always")
        self.inits = [
            Run(c, "sidecar" if c.get("restartPolicy") == "Always" else "init")
            for c in spec.get("initContainers") or []
        ]
        self.mains = [
            Run(c, "main", state={"waiting": {"reason": "ContainerCreating"}})
            for c in spec.get("containers") or []
        ]
        self.volumes: dict[str, Path] | None = None
        self.pending: tuple[str, str] | None = None  # (reason, message) while preparing
        self.initialized = False
        self.terminal = False
        self.phase = "Pending"
        self.start_time = now()
        self.reported: Obj | None = None
        self.frozen = False  # terminal before this agent saw it: keep its status
        self.get: Getter = make_getter(node.api.get)
        self.logs: Path = self.dir / "logs"
        self._adopt(pod)

    # ---- the agent's side -------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def update(self, pod: Obj) -> None:
        self.pod = pod
        self.wake.set()

    def vanish(self) -> None:
        self.gone = True
        self.wake.set()

    def runs(self) -> list[Run]:
        return [*self.inits, *self.mains]

    def log_file(self, container: str, previous: bool) -> Path | None:
        for r in self.runs():
            if r.name == container:
                n = r.restarts - 1 if previous else r.restarts
                if n < 0:
                    return None
                return self.logs / r.name / f"{n}.log"
        return None

    def is_running(self, container: str) -> bool:
        return any(r.name == container and r.proc is not None for r in self.runs())

    # ---- the loop ---------------------------------------------------------

    def _adopt(self, pod: Obj) -> None:
        """Take over a pod that already has a status (the agent restarted)."""
        status = pod.get("status") or {}
        phase = status.get("phase")
        if phase in ("Succeeded", "Failed"):
            self.terminal = True
            self.frozen = True
            self.phase = phase
            for r in self.runs():
                r.done = True
            return
        seen = [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]
        if any("running" in (s.get("state") or {}) for s in seen):
            # Our processes died with the previous agent; say so honestly.
            for r in self.runs():
                r.state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "NodeAgentRestarted",
                        "finishedAt": now(),
                    }
                }
                r.exit_code = 137
                r.restarts = 0
            if self.policy == "Never":
                self.terminal = True
                self.phase = "Failed"
                for r in self.runs():
                    r.done = True

    def run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("%s/%s: pod worker failed", self.namespace, self.pod_name)
            for r in self.runs():
                if r.proc is not None:
                    signal_container(r.proc, signal.SIGKILL)
        finally:
            self.node.forget(self.uid)

    def _loop(self) -> None:
        while True:
            self.wake.clear()
            pod = self.pod
            if self.gone:
                self._stop_containers(self.runs(), 2.0)
                self._cleanup()
                return
            if pod["metadata"].get("deletionTimestamp"):
                self._remove(pod)
                return
            delay = 5.0
            try:
                if not self.terminal:
                    delay = self._step(pod)
                self._report(pod)
            except ApiError as e:
                if e.status == 404:  # removed behind our back: stop what runs
                    self.gone = True
                    continue
                log.warning("%s/%s: %s (will retry)", self.namespace, self.pod_name, e)
                delay = 1.0
            except OSError as e:  # the apiserver is briefly unreachable
                log.warning("%s/%s: %s (will retry)", self.namespace, self.pod_name, e)
                delay = 1.0
            self.wake.wait(delay)

    def _step(self, pod: Obj) -> float:
        """Advance the pod; return how long to sleep at most."""
        t = time.monotonic()
        if self.volumes is None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                maker = VolumeMaker(pod, self.dir / "volumes", self.get, self._token)
                self.volumes = maker.make_all()
                self.pending = None
            except (ConfigError, ApiError) as e:
                self.pending = ("ContainerCreating", f"MountVolume failed: {e}")
                return 2.0
        for r in self.runs():
            if r.proc is not None and r.proc.poll() is not None:
                self._exited(r, r.proc.returncode)
        if not self.initialized:
            for r in self.inits:
                if r.kind == "sidecar":
                    if r.proc is None and t >= r.not_before:
                        self._start(pod, r)
                    continue
                if r.done:
                    if r.exit_code != 0:
                        self._finish(failed=True)
                        return 5.0
                    continue
                if r.proc is None and t >= r.not_before:
                    self._start(pod, r)
                return self._next_wake(t)
            self.initialized = True
            for r in self.mains:
                if "waiting" in r.state:
                    r.state = {"waiting": {"reason": "ContainerCreating"}}
        for r in self.inits:
            if r.kind == "sidecar" and r.proc is None and t >= r.not_before:
                self._start(pod, r)
        for r in self.mains:
            if not r.done and r.proc is None and t >= r.not_before:
                self._start(pod, r)
        if all(r.done for r in self.mains):
            self._finish(failed=any(r.exit_code != 0 for r in self.mains))
            return 5.0
        if any(r.proc is not None for r in self.mains):
            self.phase = "Running"
        return self._next_wake(t)

    def _next_wake(self, t: float) -> float:
        waits = [r.not_before - t for r in self.runs() if r.proc is None and not r.done]
        waits = [w for w in waits if w > 0]
        return min([5.0, *waits])

    def _token(self, pod: Obj, source: Obj) -> str:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        spec: Obj = {
            "expirationSeconds": source.get("expirationSeconds", 3607),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        answer = self.node.api.request(
            "POST",
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(answer["status"]["token"])

    def _start(self, pod: Obj, r: Run) -> None:
        spec = r.spec
        try:
            image = self.node.images.resolve(spec.get("image", ""))
        except ImageError as e:
            r.state = {"waiting": {"reason": "ErrImagePull", "message": str(e)}}
            r.not_before = time.monotonic() + 10
            return
        base = {
            "PATH": image.path,
            "HOSTNAME": self.pod_name,
            "HOME": "/root",
            **self.node.base_env,
        }
        try:
            env = container_env(pod, spec, base, self.get, self.node.cpu, self.node.memory)
        except (ConfigError, ApiError) as e:
            r.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            r.not_before = time.monotonic() + 2
            return
        command = [expand(a, env) for a in spec.get("command") or []]
        args = [expand(a, env) for a in spec.get("args") or []]
        argv = (command or list(image.entrypoint)) + args
        if not argv:
            r.state = {"waiting": {"reason": "CreateContainerError", "message": "no command"}}
            r.not_before = time.monotonic() + 10
            return
        box = Sandbox(image)
        assert self.volumes is not None
        try:
            for m in spec.get("volumeMounts") or []:
                source = self.volumes.get(m["name"])
                if source is None:
                    raise ConfigError(f"volumeMount {m['name']} names no volume")
                if m.get("subPath"):
                    source = source / expand(m["subPath"], env)
                    if not source.exists():
                        source.mkdir(parents=True)
                box.bind(Mount(str(source), m["mountPath"], bool(m.get("readOnly"))))
        except ConfigError as e:
            r.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            r.not_before = time.monotonic() + 10
            return
        r.restarts += 1
        if r.restarts > 0:
            r.last_state = r.state if "terminated" in r.state else r.last_state
        logfile = self.logs / r.name / f"{r.restarts}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        workdir = spec.get("workingDir") or "/"
        full = box.argv(self.node.bwrap, self.pod_name, workdir, argv)
        with logfile.open("wb") as out:
            r.proc = subprocess.Popen(
                full,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        r.image_id = f"devcluster://{image.rootfs}"
        r.state = {"running": {"startedAt": now()}}
        r.exit_code = None
        log.info(
            "%s/%s: container %s started (pid %d): %s",
            self.namespace,
            self.pod_name,
            r.name,
            r.proc.pid,
            " ".join(argv),
        )
        proc = r.proc
        threading.Thread(target=self._await, args=(proc,), daemon=True).start()

    def _await(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        self.wake.set()

    def _exited(self, r: Run, code: int, restart: bool = True) -> None:
        if code < 0:
            code = 128 - code
        started = (r.state.get("running") or {}).get("startedAt", now())
        reason = "Completed" if code == 0 else "Error"
        r.state = {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": started,
                "finishedAt": now(),
                "containerID": f"bwrap://{self.uid[:8]}-{r.name}-{r.restarts}",
            }
        }
        r.exit_code = code
        r.proc = None
        log.info(
            "%s/%s: container %s exited with code %d",
            self.namespace,
            self.pod_name,
            r.name,
            code,
        )
        if not restart:
            r.done = True
            return
        if r.kind == "sidecar":
            again = True
        elif r.kind == "init":
            again = code != 0 and self.policy != "Never"
        else:
            again = self.policy == "Always" or (self.policy == "OnFailure" and code != 0)
        if r.kind == "init" and code == 0:
            again = False
        if again:
            r.not_before = time.monotonic() + min(BACKOFF_MAX, 2.0 ** max(r.restarts, 0))
        else:
            r.done = True

    def _stop_containers(self, runs: list[Run], grace: float) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL."""
        live = [r for r in runs if r.proc is not None]
        for r in live:
            assert r.proc is not None
            log.info("%s/%s: stopping container %s", self.namespace, self.pod_name, r.name)
            signal_container(r.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for r in live:
            assert r.proc is not None
            try:
                r.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_container(r.proc, signal.SIGKILL)
                r.proc.wait()
            self._exited(r, r.proc.returncode, restart=False)

    def _finish(self, failed: bool) -> None:
        sidecars = [r for r in reversed(self.inits) if r.kind == "sidecar"]
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        self._stop_containers(sidecars, grace)
        for r in self.runs():
            r.done = True
        self.terminal = True
        self.phase = "Failed" if failed else "Succeeded"
        log.info("%s/%s: pod %s", self.namespace, self.pod_name, self.phase)

    def _remove(self, pod: Obj) -> None:
        meta = pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        if not self.terminal:
            t0 = time.monotonic()
            self._stop_containers([r for r in self.runs() if r.kind != "sidecar"], float(grace))
            rest = max(0.0, float(grace) - (time.monotonic() - t0))
            self._stop_containers([r for r in reversed(self.inits) if r.kind == "sidecar"], rest)
            ok = all(r.exit_code == 0 for r in self.mains) and self.policy != "Always"
            self.terminal = True
            self.phase = "Succeeded" if ok and self.initialized else "Failed"
            try:
                self._report(pod)
            except ApiError as e:
                if e.status != 404:
                    raise
        try:
            self.node.api.request(
                "DELETE",
                f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )
        except ApiError as e:
            if e.status not in (404, 409):
                raise
        log.info("%s/%s: pod deleted", self.namespace, self.pod_name)
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- status -----------------------------------------------------------

    def status(self, pod: Obj) -> Obj:
        mains_ready = not self.terminal and all(r.proc is not None for r in self.mains)
        sidecars_ready = all(r.proc is not None for r in self.inits if r.kind == "sidecar")
        ready = mains_ready and sidecars_ready and self.initialized
        if self.terminal:
            not_ready = "PodCompleted"
        elif not self.initialized:
            not_ready = "ContainersNotInitialized"
        else:
            not_ready = "ContainersNotReady"
        previous = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}

        def cond(kind: str, ok: bool, reason: str = "") -> Obj:
            value = "True" if ok else "False"
            old = previous.get(kind) or {}
            c: Obj = {
                "type": kind,
                "status": value,
                "lastTransitionTime": old.get("lastTransitionTime", now())
                if old.get("status") == value
                else now(),
            }
            if reason and not ok:
                c["reason"] = reason
            return c

        ours = {
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        }
        conditions = [
            cond("PodReadyToStartContainers", self.volumes is not None or self.terminal),
            cond("Initialized", self.initialized or not self.inits, "ContainersNotInitialized"),
            cond("Ready", ready, not_ready),
            cond("ContainersReady", ready, not_ready),
            cond("PodScheduled", True),
            *[c for k, c in previous.items() if k not in ours],
        ]
        status: Obj = {
            "phase": self.phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "containerStatuses": [r.status(self.uid) for r in self.mains],
        }
        if self.inits:
            status["initContainerStatuses"] = [r.status(self.uid) for r in self.inits]
        if self.pending is not None and not self.terminal:
            for s in status["containerStatuses"]:
                if "waiting" in s["state"]:
                    s["state"] = {
                        "waiting": {"reason": self.pending[0], "message": self.pending[1]}
                    }
        if self.phase == "Failed" and self.terminal:
            failed = [r for r in self.runs() if r.exit_code not in (0, None)]
            if failed:
                status["message"] = (
                    f"container {failed[0].name} exited with code {failed[0].exit_code}"
                )
        return status

    def _report(self, pod: Obj) -> None:
        if self.frozen:
            return
        status = self.status(pod)
        comparable = {k: v for k, v in status.items() if k != "conditions"}
        conds = [(c["type"], c["status"]) for c in status["conditions"]]
        key = {**comparable, "conds": conds}
        if key == self.reported:
            return
        self.node.api.merge_patch(
            f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status",
            {"status": status},
        )
        self.reported = key
