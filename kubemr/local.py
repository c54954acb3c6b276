"""Run a whole job on this machine: `kubemr run job.yaml`.

The local mode is just another place to run, not a fork of the logic: it
puts the job document in SQLite (`<run dir>/job.db`) and starts N processes
of the same entrypoint pods run (`kubemr shim`), configured only through
their environment. Like a Job controller, it restarts a worker that dies,
and it shows progress until the job ends. Intermediate data stays on the
local disk (`<run dir>/work/`); results go to `spec.output`, `--output`, or
`<run dir>/output/`.

Everything a user can get wrong (the manifest, a missing input, an output
that already holds results) is checked before anything starts.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubemr import output as output_checks
from kubemr import state
from kubemr.errors import InputError, KubemrError, RunError, SpecError, TemporaryError
from kubemr.manifest import read_manifest, resolve_archive, resolve_input
from kubemr.plan import list_inputs
from kubemr.progress import Progress
from kubemr.shim import exchange
from kubemr.shim.process import kill_registered
from kubemr.spec import SIDECAR, JobSpec, parse_manifest
from kubemr.storage import storage_for, to_url
from kubemr.storage.base import StorageConfig
from kubemr.store.sqlite import SqliteStore

WORKER_GRACE_SECONDS = 30.0
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Prepared:
    """A manifest made ready to run here: paths resolved, defaults chosen."""

    manifest: dict[str, Any]
    spec: JobSpec
    name: str


def prepare(path: str, output: str | None, env: Mapping[str, str]) -> Prepared:
    """Parse and validate a manifest for a local run; resolve paths against its directory."""
    raw = read_manifest(path)
    spec = parse_manifest(raw)
    base = os.path.dirname(os.path.abspath(path))
    if not spec.map and not env.get("KUBEMR_MAP"):
        raise SpecError(
            f"{path}: spec.map is missing (and KUBEMR_MAP is not set); give a map command."
        )
    manifest = dict(raw)
    new_spec = dict(raw["spec"])
    new_spec["inputs"] = [resolve_input(i, base) for i in spec.inputs]
    if spec.archives:
        new_spec["archives"] = [f"{resolve_archive(w, base)}#{n}" for w, n in spec.archives]
    if output is not None:
        new_spec["output"] = to_url(output, os.getcwd())
    elif spec.output is not None:
        new_spec["output"] = to_url(spec.output, base)
    manifest["spec"] = new_spec
    meta = dict(raw.get("metadata") or {})
    name = meta.get("name") or f"{meta.get('generateName') or 'job-'}{_suffix()}"
    manifest["metadata"] = {k: v for k, v in meta.items() if k != "generateName"} | {"name": name}
    return Prepared(manifest, parse_manifest(manifest), str(name))


def run_spec(prep: Prepared, run_dir: str) -> dict[str, Any]:
    """The spec a run of `prep` in `run_dir` keeps (its output defaulted as `create` does)."""
    spec = dict(prep.manifest["spec"])
    spec.setdefault("output", to_url(os.path.join(run_dir, "output"), run_dir))
    return spec


def spec_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The fields in which two specs differ, as `spec.map`, `spec.files.map.sh`."""
    out: list[str] = []
    for key in sorted(set(stored) | set(new)):
        a, b = stored.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(f"spec.{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        else:
            out.append(f"spec.{key}")
    return out


def _suffix() -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(secrets.choice(alphabet) for _ in range(5))


def check_inputs(spec: JobSpec) -> int:
    """List every input now, so a missing or unreachable one stops the run before it starts."""
    config = StorageConfig(spec.storage.endpoint, spec.storage.region)
    try:
        found = list_inputs(spec.inputs, lambda url: storage_for(url, config).list(url))
    except TemporaryError as exc:  # a worker would retry; before the start, the user decides
        raise InputError(f"{str(exc).rstrip('.')}; check that it is up, then run again.") from exc
    return len(found)


def check_output(output: str, spec: JobSpec) -> None:
    """Refuse an output that cannot take this job's results (see `kubemr.output`)."""
    config = StorageConfig(spec.storage.endpoint, spec.storage.region)
    output_checks.check_output(
        output, spec.inputs, lambda url: storage_for(url, config), "give another --output"
    )


class LocalRun:
    """One run directory: its store, its worker processes, its progress."""

    def __init__(self, run_dir: str, workers: int, quiet: bool = False) -> None:
        self.run_dir = run_dir
        self.workers = workers
        self.quiet = quiet
        self.store = SqliteStore(os.path.join(run_dir, "job.db"))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.holders: dict[int, str] = {}
        self.generation = uuid.uuid4().hex[:6]
        self.spawned = 0
        self.interrupted = False
        self.signal = int(signal.SIGINT)  # what interrupted the run, if anything
        spec = self.store.get().get("spec") or {}
        self.sidecar = spec.get("mode") == SIDECAR
        self.executors: dict[int, subprocess.Popen[bytes]] = {}

    @staticmethod
    def create(prep: Prepared, run_dir: str) -> None:
        """Write the run directory and the job document (phase Pending)."""
        os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
        doc = dict(prep.manifest)
        meta = dict(doc["metadata"])
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["creationTimestamp"] = state.iso(time.time())
        doc["metadata"] = meta
        spec = dict(doc["spec"])
        spec.setdefault("output", to_url(os.path.join(run_dir, "output"), run_dir))
        doc["spec"] = spec
        doc["status"] = {"phase": "Pending"}
        # Build the database aside and rename it into place, so job.db is whole or absent.
        path = os.path.join(run_dir, "job.db")
        partial = path + ".new"
        for leftover in (partial, partial + "-wal", partial + "-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        store = SqliteStore.create(partial, doc)
        store.checkpoint()
        store.close()
        os.replace(partial, path)

    def _registry(self, slot: int) -> str:
        """Where worker `slot` records its commands' process groups (see `Attempt.registry`)."""
        return os.path.join(self.run_dir, "scratch", f"w{slot}", "pgids")

    def _holder(self, slot: int) -> str:
        holder = f"w{slot}-{self.generation}-{self.spawned}"
        self.holders[slot] = holder
        return holder

    def _spawn(self, slot: int) -> None:
        self.spawned += 1
        env = dict(os.environ)
        env.update(
            {
                "KUBEMR_STORE": "sqlite://" + os.path.join(self.run_dir, "job.db"),
                "KUBEMR_WORKER_ID": self._holder(slot),
                "KUBEMR_WORKERS": str(self.workers),
                "KUBEMR_SCRATCH": os.path.join(self.run_dir, "scratch", f"w{slot}"),
                "KUBEMR_WORKDIR": to_url(os.path.join(self.run_dir, "work"), self.run_dir) + "/",
                "KUBEMR_PARENT_PID": str(os.getpid()),
            }
        )
        log_path = os.path.join(self.run_dir, "logs", f"worker-{slot}.log")
        try:
            if self.sidecar:
                env["KUBEMR_EXECUTOR"] = self._executor(slot, log_path)
            with open(log_path, "ab") as log:
                self.procs[slot] = subprocess.Popen(
                    [sys.executable, "-m", "kubemr", "shim"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            raise RunError(
                f"cannot start worker process {slot}: {exc.filename or log_path}: "
                f"{exc.strerror or exc}."
            ) from exc

    def _executor(self, slot: int, log_path: str) -> str:
        """Sidecar mode, as in a pod: worker `slot` hands its commands to an executor of its
        own, started here (again, if it ended) with this environment."""
        directory = os.path.join(self.run_dir, "scratch", f"w{slot}", "executor")
        running = self.executors.get(slot)
        if running is not None and running.poll() is None:
            return directory
        exchange.install(directory)
        with open(log_path, "ab") as log:
            self.executors[slot] = subprocess.Popen(
                ["sh", os.path.join(directory, "executor.sh"), directory],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return directory

    def _settings(self, doc: Mapping[str, Any]) -> state.Settings:
        spec = parse_manifest(dict(doc))
        return state.Settings("runner", time.time(), 0, spec.max_attempts)

    def reclaim(self) -> None:
        """On resume: hand back the tasks held by workers of an earlier `kubemr run` (they
        are gone: this run owns the run directory), without counting a failure."""
        doc = self.store.get()
        st = state.current_stage(doc)
        for holder, _ in list(st.running()) if st is not None else []:
            self._hand_back(holder, charge=False)

    def _hand_back(self, holder: str, charge: bool) -> None:
        """Hand back what worker `holder`, whose process has exited, still held, at once
        rather than after its lease; `charge` counts it as a failed attempt of its tasks."""
        for _ in range(10):
            doc = self.store.get()
            patch = state.reclaim(doc, holder, self._settings(doc), charge)
            if patch is None:
                return
            try:
                self.store.patch(patch)
                return
            except KubemrError:
                continue

    def run(self) -> dict[str, Any]:
        """Start the workers and wait until the job ends; returns the final document."""
        self.reclaim()
        previous = {
            signum: signal.signal(signum, self._interrupt)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        progress = Progress() if not self.quiet else None
        restarts_left = 3 * self.workers
        ended_at: float | None = None
        try:
            for slot in range(self.workers):
                self._spawn(slot)
            while True:
                doc = self.store.get()
                if progress is not None:
                    progress.update(doc)
                if state.phase_of(doc) in state.TERMINAL:
                    # A worker writes _SUCCESS just after the commit: wait for it, a while.
                    ended_at = ended_at or time.monotonic()
                    waited = time.monotonic() - ended_at
                    if not state.needs_success_marker(doc) or waited > WORKER_GRACE_SECONDS:
                        break
                if self.interrupted:
                    raise KeyboardInterrupt
                for slot, proc in list(self.procs.items()):
                    code = proc.poll()
                    if code is None or state.phase_of(doc) in state.TERMINAL:
                        continue
                    # A worker that died (kill -9, out of memory) leaves its commands running
                    # in process groups of their own; they would run on, unseen, until done.
                    kill_registered(self._registry(slot))
                    # Its tasks go back at once; one that exited 0 (stopped by a signal from
                    # outside) handed them back itself, and the job still has work.
                    self._hand_back(self.holders[slot], charge=code != 0)
                    if code == 2 or restarts_left <= 0:
                        self._fail(
                            f"worker processes keep failing (last exit code {code}); see "
                            f"{os.path.join(self.run_dir, 'logs')}"
                        )
                        break
                    restarts_left -= 1
                    self._spawn(slot)
                time.sleep(POLL_SECONDS)
        finally:
            if progress is not None:
                progress.finish()
            self._stop_workers(WORKER_GRACE_SECONDS if not self.interrupted else 10.0)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.store.get()

    def _interrupt(self, signum: int, frame: object) -> None:
        self.interrupted = True
        self.signal = signum

    def _fail(self, message: str) -> None:
        doc = self.store.get()
        phase = state.phase_of(doc)
        if phase in state.TERMINAL or phase is None:
            return
        try:
            self.store.patch(state.fail_job(doc, None, message, time.time()))
        except KubemrError:
            pass

    def _stop_workers(self, grace: float) -> None:
        """Workers exit by themselves once the job ends; stop any that linger."""
        deadline = time.monotonic() + (grace if not self.interrupted else 0)
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs.values()):
            time.sleep(0.05)
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            alive = [p for p in self.procs.values() if p.poll() is None]
            if not alive:
                break
            for p in alive:
                try:
                    os.killpg(p.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            end = time.monotonic() + wait
            while time.monotonic() < end and any(p.poll() is None for p in alive):
                time.sleep(0.05)
        for slot in self.procs:
            kill_registered(self._registry(slot))
        for executor in self.executors.values():
            # Each worker told its executor to exit; one whose worker was killed is stopped here.
            try:
                executor.wait(timeout=5.0 if executor.poll() is None else 0)
            except subprocess.TimeoutExpired:
                os.killpg(executor.pid, signal.SIGTERM)
                executor.wait()
