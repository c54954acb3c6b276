"""Fixtures for process tests: real `kubemr` processes running real shell commands.

Each test gets its own KUBEMR_HOME, so runs never share state, and short
leases, so a killed worker's task is taken over in seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemr import state

REPO = Path(__file__).resolve().parents[2]


class Kubemr:
    """Runs the `kubemr` CLI as a user would, in a private KUBEMR_HOME."""

    def __init__(self, home: Path, tmp: Path) -> None:
        self.home = home
        self.tmp = tmp
        self.env = {
            "KUBEMR_HOME": str(home),
            "KUBEMR_LEASE_SECONDS": "2",
            "KUBEMR_POLL_SECONDS": "0.1",
            "PYTHONUNBUFFERED": "1",
        }

    def environ(self, extra: dict[str, str] | None) -> dict[str, str]:
        """The environment of a `kubemr` process: this process's (as fixtures left it), ours."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
        env.update(self.env)
        env.update(extra or {})
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "kubemr", *args]

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            env=self.environ(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp,
        )

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            env=self.environ(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.tmp,
        )

    def job(self, name: str = "job", **spec: Any) -> Path:
        """Write a manifest with `spec` (snake_case not translated: pass manifest field names)."""
        path = self.tmp / f"{name}.yaml"
        doc = {
            "apiVersion": "kubemr.io/v1alpha1",
            "kind": "MapReduceJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    def run_dir(self, name: str) -> Path:
        return self.home / "runs" / name


def read_doc(run_dir: Path) -> dict[str, Any]:
    """The job document of a local run, read straight from its SQLite file."""
    db = sqlite3.connect(run_dir / "job.db")
    try:
        row = db.execute("SELECT doc FROM job WHERE id = 1").fetchone()
    finally:
        db.close()
    doc: dict[str, Any] = json.loads(row[0])
    return doc


def tasks(doc: dict[str, Any], stage: str = "map") -> list[dict[str, Any]]:
    """Every task of a stage as {"s": "d" (committed), "r" (held by a worker) or "p"
    (waiting), "a": its latest attempt, "h": its holder, "f": its failures so far}."""
    st = state.stage_of(doc, stage)
    if st is None:
        return []
    committed = st.committed()
    out = []
    for i in range(st.n):
        holder = st.holder_of(i)
        kind = "d" if i in committed else ("r" if holder else "p")
        out.append({"s": kind, "a": st.attempt_of(i), "h": holder, "f": st.fails.get(i)})
    return out


def results(output: Path) -> bytes:
    """Every part file of an output directory, concatenated in name order."""
    assert (output / "_SUCCESS").exists(), f"no _SUCCESS in {output}"
    return b"".join(p.read_bytes() for p in sorted(output.glob("part-*")))


def worker_pids(holder_prefix: str = "", under: Path | None = None) -> dict[str, int]:
    """Live `kubemr shim` processes by worker id, found through /proc.

    With `under`, only workers whose job store lies below that directory (one
    test's own runs, whatever else runs on the machine).
    """
    out: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"shim" not in cmdline:
            continue
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        wid = env.get(b"KUBEMR_WORKER_ID", b"").decode()
        store = env.get(b"KUBEMR_STORE", b"").decode()
        if not wid or not wid.startswith(holder_prefix):
            continue
        if under is not None and str(under) not in store:
            continue
        out[wid] = int(entry)
    return out


def unique_seconds(base: int) -> str:
    """A `sleep` duration no other test uses, so pgrep finds only this test's command."""
    return f"{base}.{uuid.uuid4().int % 10**6:06d}"


@pytest.fixture
def kubemr(tmp_path: Path) -> Iterator[Kubemr]:
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    yield Kubemr(home, work)


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


Shell = Callable[..., subprocess.CompletedProcess[bytes]]


def sh(command: str, stdin: bytes = b"", cwd: Path | None = None) -> bytes:
    """Run a shell pipeline, as a user would type it; returns stdout."""
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(
        ["sh", "-c", command], input=stdin, capture_output=True, check=True, cwd=cwd, env=env
    ).stdout


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """The first true value of `predicate` (polled; a read of a file being written may fail
    meanwhile), or AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, KeyError, TypeError, ValueError, sqlite3.Error):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def running_task(run_dir: Path) -> tuple[int, dict[str, Any]] | None:
    """(index, entry) of a map task a worker holds, if any (`tasks`)."""
    if not (run_dir / "job.db").exists():
        return None
    doc = read_doc(run_dir)
    for i, entry in enumerate(tasks(doc)):
        if entry["s"] == "r":
            return i, entry
    return None


def run_as_pods(kubemr: Kubemr, doc: dict[str, Any], workers: int = 2) -> dict[str, Any]:
    """Run the job `doc` with `kubemr shim` processes sharing one job document and no local
    workdir, as worker pods run it; returns the document at the end. The SQLite document
    stands in for the MapReduceJob object."""
    from kubemr.store.sqlite import SqliteStore

    doc = {**doc, "metadata": {**doc.get("metadata", {}), "uid": str(uuid.uuid4())}}
    doc["status"] = {"phase": "Pending"}
    db = kubemr.tmp / f"job-{doc['metadata']['uid']}.db"
    SqliteStore.create(str(db), doc).close()
    procs = []
    for i in range(workers):
        env = kubemr.environ(
            {
                "KUBEMR_STORE": f"sqlite://{db}",
                "KUBEMR_WORKER_ID": f"pod-{i}",
                "KUBEMR_SCRATCH": str(kubemr.tmp / f"scratch-{db.stem}-{i}"),
            }
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "kubemr", "shim"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    logs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    final = SqliteStore(str(db)).get()
    assert final["status"]["phase"] == "Succeeded", logs
    return final
