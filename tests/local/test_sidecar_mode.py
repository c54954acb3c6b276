"""`spec.mode: sidecar` run by `kubemr run`: every user command goes through the executor.

Locally each worker gets an executor process of its own, as each pod does on
a cluster, so the whole sidecar data path (bridge, FIFOs, executor, signals)
runs here with real processes; tests/cluster/test_sidecar.py runs it in pods.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml
from conftest import REPO, Kubemr, read_doc, results, unique_seconds

WORDCOUNT = REPO / "examples" / "bash-wordcount"


def sidecar_copy(kubemr: Kubemr, source: Path, **changes: object) -> Path:
    doc = yaml.safe_load(source.read_text())
    doc["spec"].update(mode="sidecar", **changes)
    doc["spec"]["inputs"] = [str(WORDCOUNT / i) for i in doc["spec"]["inputs"]]
    path = kubemr.tmp / "sidecar.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_word_count_in_sidecar_mode_has_the_same_bytes_as_wrapper_mode(kubemr: Kubemr) -> None:
    wrapper = kubemr("run", str(WORDCOUNT / "job.yaml"), "-w", "2", "-q")
    sidecar = kubemr("run", str(sidecar_copy(kubemr, WORDCOUNT / "job.yaml")), "-w", "2", "-q")
    assert wrapper.returncode == 0 and sidecar.returncode == 0, wrapper.stderr + sidecar.stderr
    a, b = Path(wrapper.stdout.strip()), Path(sidecar.stdout.strip())
    assert results(a) == results(b)
    assert "words=" in sidecar.stderr  # reporter counters cross the bridge too


def test_commands_run_under_the_executor(kubemr: Kubemr) -> None:
    """The command's parent is the executor's runner, not the worker: nothing ran `sh -c` here."""
    (kubemr.tmp / "in.txt").write_text("x\n")
    job = kubemr.job(
        "whoruns",
        inputs=["./in.txt"],
        map="printf 'k\\t%s\\n' \"$(tr '\\0' ' ' < /proc/$PPID/cmdline)\"",
        mode="sidecar",
        env={"GREETING": 'it\'s "quoted"\nover two lines'},
        reduce='cat; printf "%s\\n" "$GREETING" | head -n1; echo "$KUBEMR_TASK"',
    )
    proc = kubemr("run", str(job), "-o", str(kubemr.tmp / "out"))
    assert proc.returncode == 0, proc.stderr
    lines = results(kubemr.tmp / "out").decode().splitlines()
    assert "executor.sh" in lines[0] and "-m kubemr shim" not in lines[0]
    assert lines[1:] == ['it\'s "quoted"', "reduce-0"]


def test_a_failing_command_is_reported_as_in_wrapper_mode(kubemr: Kubemr) -> None:
    (kubemr.tmp / "in.txt").write_text("x\n")
    job = kubemr.job(
        "boom",
        inputs=["./in.txt"],
        map="echo 'something broke: disk on fire' >&2; exit 3",
        maxAttempts=2,
        mode="sidecar",
    )
    proc = kubemr("run", str(job))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "map-0 failed 2 of 2 attempts" in proc.stderr
    assert "exited with code 3" in proc.stderr
    assert "disk on fire" in proc.stderr


def _running(pattern: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return out.stdout.split()


def test_a_hung_command_is_killed_at_its_timeout_with_its_children(kubemr: Kubemr) -> None:
    (kubemr.tmp / "in.txt").write_text("x\n")
    seconds = unique_seconds(900)
    job = kubemr.job(
        "hung",
        inputs=["./in.txt"],
        map=f"sleep {seconds} & sleep {seconds}",
        taskTimeoutSeconds=2,
        maxAttempts=1,
        mode="sidecar",
    )
    started = time.monotonic()
    proc = kubemr("run", str(job))
    assert proc.returncode == 1
    assert "timed out after 2s" in proc.stderr
    assert time.monotonic() - started < 30
    assert read_doc(kubemr.run_dir("hung"))["status"]["phase"] == "Failed"
    deadline = time.monotonic() + 5
    while _running(f"sleep {seconds}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(f"sleep {seconds}")
    # The executors ended with their workers.
    assert not _running(str(kubemr.run_dir("hung")))


def test_a_command_killed_by_a_signal_and_an_exit_254_read_as_in_wrapper_mode(
    kubemr: Kubemr,
) -> None:
    """The executor's shell reports a command killed by signal N as 128+N; the bridge ends
    itself by that signal, so the message (and the SIGPIPE rule of pipelines) is the one of
    wrapper mode. A command's own `[kubemr] ...` line with exit 254 is not taken for the
    bridge's."""

    def message(mode: str, command: str) -> str:
        job = kubemr.job(
            f"sig-{mode}", inputs=["opaque:x"], map=command, maxAttempts=1, mode=mode,
            output=str(kubemr.tmp / f"out-{mode}-{time.monotonic_ns()}"),
        )  # fmt: skip
        done = kubemr(
            "run", str(job), "-q", "--run-dir", str(kubemr.tmp / f"r{time.monotonic_ns()}")
        )
        assert done.returncode == 1, done.stderr
        return done.stderr.split("the map command ", 1)[1].split(";")[0].split("\n")[0]

    for command, says in [
        ("kill -9 $$", "was killed by signal 9"),
        ("echo before >&2; kill -TERM $$", "was killed by signal 15"),
        ("exit 141", "was killed by signal 13"),
        ('echo "[kubemr] fake" >&2; exit 254', "exited with code 254"),
    ]:
        got = message("sidecar", command)
        assert got.startswith(says), (command, got)
        if command != "exit 141":  # `sh -c 'exit 141'` is an exit code; the executor's is not
            assert got == message("wrapper", command), command
