"""Forked children standing in for subprocess.Popen (kubemr.shim.forked), as sidecar mode
starts its bridges: real fork(), real pipes and signals."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kubemr.shim.forked import Forked
from kubemr.shim.process import Proc, StderrLog, Watch, wait_all


def test_exit_status_stdin_stdout_and_stderr_are_the_childs() -> None:
    def upper() -> None:
        data = b"".join(iter(lambda: os.read(0, 65536), b""))
        os.write(1, data.upper())
        os.write(2, b"done\n")
        os._exit(3)

    child = Forked(upper, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(b"abc")
    child.stdin.close()
    assert child.stdout.read() == b"ABC"
    assert child.stderr.read() == b"done\n"
    assert child.wait() == 3 and child.poll() == 3 and child.returncode == 3


def test_the_child_holds_no_other_descriptor_of_the_parent() -> None:
    """A pipe end the parent holds (another command's) is closed in the child, so a reader
    of that pipe sees its end when the parent closes it, not when the child exits."""
    r, w = os.pipe()
    child = Forked(lambda: time.sleep(5), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        os.close(w)
        ready, _, _ = select.select([r], [], [], 2)
        assert ready and os.read(r, 1) == b""  # EOF at once: the child has no copy of w
    finally:
        os.close(r)
        os.killpg(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL


def test_the_child_leads_a_process_group_of_its_own_and_runs_in_cwd(tmp_path: Path) -> None:
    def report() -> None:
        os.write(1, f"{os.getpgid(0)} {os.getpid()} {os.getcwd()}".encode())
        os._exit(0)

    child = Forked(report, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=str(tmp_path))
    assert child.stdout is not None
    group, pid, cwd = child.stdout.read().decode().split(" ", 2)
    assert child.wait() == 0
    assert group == pid == str(child.pid) != str(os.getpgid(0))
    assert cwd == str(tmp_path)


def test_an_exception_in_the_child_exits_255_saying_what_it_was() -> None:
    def broken() -> None:
        raise ValueError("no such thing")

    child = Forked(broken, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    assert b"ValueError('no such thing')" in child.stderr.read()
    assert child.wait() == 255


def test_a_target_that_returns_exits_0_and_wait_can_time_out() -> None:
    child = Forked(lambda: time.sleep(0.3), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.05)
    assert child.wait(timeout=10) == 0


def test_stdin_and_stdout_may_be_descriptors_or_files_of_the_parent(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(b"line\n")
    with open(source, "rb") as src, open(tmp_path / "out", "wb") as dst:

        def copy() -> None:
            os.write(1, os.read(0, 100) * 2)
            os._exit(0)

        child = Forked(copy, stdin=src, stdout=dst.fileno())
        assert child.wait() == 0
    assert (tmp_path / "out").read_bytes() == b"line\nline\n"


def test_a_forked_proc_is_waited_for_and_killed_like_any_command(tmp_path: Path) -> None:
    """`Proc(fork=...)` as sidecar mode starts its bridges: its stderr goes to the task's log,
    wait_all notices its exit through its pidfd, and a stopped task kills its group."""
    log = StderrLog(str(tmp_path / "stderr"))

    def quick() -> None:
        os.write(2, b"hello from the child\n")
        os._exit(0)

    def forked(label: str, target: Callable[[], object]) -> Proc:
        return Proc(
            label,
            ["bridge"],
            cwd=str(tmp_path),
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            log=log,
            fork=target,
        )

    proc = forked("bridge", quick)
    started = time.monotonic()
    wait_all([proc], Watch(30, threading.Event(), []))
    assert time.monotonic() - started < 5 and proc.popen.returncode == 0
    assert log.tail_text("bridge", wait=5) == "hello from the child"

    cancel = threading.Event()
    slow = forked("slow", lambda: time.sleep(60))
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(Exception, match="stopped"):
        wait_all([slow], Watch(30, cancel, []))
    assert slow.popen.returncode == -signal.SIGTERM
    log.close()
