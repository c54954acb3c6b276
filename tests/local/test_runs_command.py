"""`kubemr runs` and `kubemr delete` through the real CLI: what is kept, and removing it.

Runs that succeeded, failed, were interrupted and are running side by side: the list shows
each one's phase (a stopped run says so), and delete removes finished runs and their
run-directory output, keeps an output elsewhere, and refuses a run a process is running.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from conftest import Kubemr


def start(kubemr: Kubemr, job: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        kubemr.argv("run", str(job), "-q", *args),
        env=kubemr.environ(None),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def listed(kubemr: Kubemr) -> dict[str, str]:
    proc = kubemr("runs")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "AGE", "SIZE"]
    start, end = lines[0].index("PHASE"), lines[0].index("AGE")
    return {line.split()[0]: line[start:end].strip() for line in lines[1:]}


def test_runs_lists_and_delete_removes_what_runs_keep(kubemr: Kubemr) -> None:
    (kubemr.tmp / "in.txt").write_text("a\nb\n")
    ok = kubemr.job("ok", inputs=["./in.txt"], map="cat", reduce="cat")
    assert kubemr("run", str(ok), "-q").returncode == 0
    elsewhere = kubemr.tmp / "elsewhere"
    bad = kubemr.job("bad", inputs=["./in.txt"], map="exit 4", maxAttempts=1)
    assert kubemr("run", str(bad), "-q", "-o", str(elsewhere)).returncode == 1
    gate = kubemr.tmp / "gate"
    slow = f"while [ ! -e {gate} ]; do sleep 0.05; done; cat"
    stopped = kubemr.job("stopped", inputs=["./in.txt"], map=slow)
    interrupted = start(kubemr, stopped)
    wait_for("the run to start its map", lambda: listed(kubemr).get("stopped") == "Mapping")
    interrupted.send_signal(signal.SIGINT)
    assert interrupted.wait(60) == 130, interrupted.stderr
    live = kubemr.job("live", inputs=["./in.txt"], map=slow)
    running = start(kubemr, live)
    try:
        wait_for("the live run to map", lambda: listed(kubemr).get("live") == "Mapping")
        assert listed(kubemr) == {
            "ok": "Succeeded",
            "bad": "Failed",
            "stopped": "Mapping, stopped",
            "live": "Mapping",
        }
        refused = kubemr("delete", "live")
        assert refused.returncode == 1
        assert f"live is running (process {running.pid})" in refused.stderr, refused.stderr
        gone = kubemr("delete", "ok", "--finished")  # named and finished: deleted once
        assert gone.returncode == 0, gone.stderr
        assert gone.stdout.count("deleted ok (") == 1, gone.stdout
        assert (
            "deleted bad (" in gone.stdout
            and f"its output stays in file://{elsewhere}" in gone.stdout
        )
        assert set(listed(kubemr)) == {"stopped", "live"}
        assert not kubemr.run_dir("ok").exists() and not kubemr.run_dir("bad").exists()
    finally:
        gate.touch()
        assert running.wait(60) == 0, running.stderr
    assert kubemr("delete", "stopped", "live").returncode == 0
    assert kubemr("runs").stderr.startswith("no local runs in ")
    usage = kubemr("delete")
    assert usage.returncode == 2 and "--finished" in usage.stderr
