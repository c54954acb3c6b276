"""One attempt of one task on this worker: its scratch space, log and stop conditions.

Each attempt gets a fresh scratch directory (`cwd/` holds the job's files
and is the commands' working directory; `out/` holds what it will upload;
`tmp/` is for sort spills) that is removed when the attempt ends, whatever
the outcome. The stderr log of every process of the attempt is collected in
one `StderrLog`.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from kubemr.errors import TaskFailed
from kubemr.partition import separator_option, sort_keys
from kubemr.shim import bridge, exchange
from kubemr.shim.job import Job
from kubemr.shim.process import Proc, StderrLog, Watch, kill_registered, shell
from kubemr.state import Task


def sort_argv(job: Job, tmp: str | None = None, whole_lines: bool = False) -> list[str]:
    """GNU sort by key, then bytewise on whole lines (`partition.sort_keys`, or the keys of
    spec.keyComparator): how every map output is sorted and every reduce input merged (run
    with LC_ALL=C); with `whole_lines`, bytewise on whole lines only
    (`partition.whole_lines_suffice` says when that is the same)."""
    sep = job.spec.separator.encode()
    if job.spec.key_comparator:  # spec.keyComparator's keys; ties bytewise on whole lines
        keys = [*separator_option(sep), *job.spec.key_comparator]
    else:
        keys = [] if whole_lines else sort_keys(sep, job.spec.key_fields)
    spill = ["-T", tmp] if tmp else []
    threads = job.config.sort_threads
    parallel = [f"--parallel={threads}"] if threads else []
    return ["sort", "-S", job.config.sort_memory, *parallel, *spill, *keys]


@dataclass
class Attempt:
    """The context of one running attempt."""

    job: Job
    task: Task
    number: int
    root: str
    watch: Watch
    log: StderrLog = field(init=False)

    def __post_init__(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        for sub in ("cwd", "out"):  # tmp/ is made for the first sort that needs it
            os.makedirs(os.path.join(self.root, sub))
        self.job.write_files(self.cwd)
        os.makedirs(self.registry, exist_ok=True)
        self.log = StderrLog(os.path.join(self.root, "stderr.log"))

    @property
    def cwd(self) -> str:
        return os.path.join(self.root, "cwd")

    @property
    def registry(self) -> str:
        """Where this worker records its commands' process groups (see `kill_registered`)."""
        return os.path.join(self.job.config.scratch, "pgids")

    def proc(
        self,
        label: str,
        argv: list[str],
        env: dict[str, str],
        stdin: Any,
        stdout: Any,
        fork: Callable[[], object] | None = None,
    ) -> Proc:
        """Start one process of this attempt in the command directory (see `Proc`)."""
        return Proc(
            label,
            argv,
            cwd=self.cwd,
            env=env,
            stdin=stdin,
            stdout=stdout,
            log=self.log,
            registry=self.registry,
            fork=fork,
        )

    def command(
        self, label: str, command: str, env: dict[str, str], stdin: Any, stdout: Any
    ) -> Proc:
        """Start a user command: with `sh -c` here, or, in sidecar mode, through the executor
        in the user's container (a bridge process stands in for it, with the same stdin,
        stdout, stderr, exit code and signals: a child forked from this worker, which needs
        no interpreter started; `exchange.bridge_argv` is the same bridge as a program)."""
        executor = self.job.config.executor
        if executor is None:
            return self.proc(label, shell(command), env, stdin, stdout)
        base = self.job.config.base_env
        # The user's container has its own environment; only what the task adds goes there.
        task_vars = {k: v for k, v in env.items() if base.get(k) != v}
        argv = exchange.bridge_argv(executor, self.cwd, command, task_vars)
        return self.proc(label, argv, env, stdin, stdout, fork=partial(bridge.main, argv[3:]))

    @property
    def out(self) -> str:
        return os.path.join(self.root, "out")

    @property
    def tmp(self) -> str:
        return os.path.join(self.root, "tmp")

    def sort_argv(self, *extra: str, whole_lines: bool = False) -> list[str]:
        """`sort_argv` of this job, spilling to this attempt's tmp directory."""
        os.makedirs(self.tmp, exist_ok=True)
        return [*sort_argv(self.job, self.tmp, whole_lines), *extra]

    def sort_env(self) -> dict[str, str]:
        env = dict(self.job.config.base_env)
        env["LC_ALL"] = "C"
        return env

    def check(self, proc: Proc, what: str, reader: Proc | None = None) -> None:
        """Raise TaskFailed if `proc` did not exit 0, quoting the tail of its stderr. Killed
        by SIGPIPE is no failure when `reader`, the process reading its output, exited 0:
        it stopped reading early (`head`), which ends a shell pipeline just as well."""
        code = proc.popen.returncode
        assert code is not None, f"{proc.label} is still running"
        if code == 0:
            return
        if code == -signal.SIGPIPE and reader is not None and reader.popen.returncode == 0:
            return
        if code == exchange.EXECUTOR_FAILED and self.job.config.executor is not None:
            # The bridge's own line, last (a command that printed such a line itself and
            # exited 254 is not taken for it unless it printed it last, in these words).
            last = (self.log.tail_text(proc.label).splitlines() or [""])[-1]
            if last.startswith("[kubemr] executor: "):
                raise TaskFailed(f"the {what} did not finish: {last.split('[kubemr] ', 1)[1]}")
        how = f"exited with code {code}" if code > 0 else f"was killed by signal {-code}"
        tail = self.log.tail_text(proc.label)
        detail = f"; stderr ends with:\n{tail}" if tail else " with no stderr output"
        raise TaskFailed(f"the {what} {how}{detail}")

    def cleanup(self) -> None:
        """End what the attempt's commands left running; its scratch directory is renamed
        out of the way and removed in the background (unlinking a tree costs milliseconds
        of waiting on the disk, which the next task need not spend)."""
        kill_registered(self.registry)
        REAPER.remove(self.root)


class Reaper:
    """Removes directories in one background thread; `drain` waits until it has."""

    def __init__(self) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def remove(self, path: str) -> None:
        gone = f"{path}.gone-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, gone)
        except FileNotFoundError:
            return
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="reaper")
                self._thread.start()
        self._queue.put(gone)

    def _run(self) -> None:
        while True:
            path = self._queue.get()
            shutil.rmtree(path, ignore_errors=True)
            self._queue.task_done()

    def drain(self) -> None:
        self._queue.join()


REAPER = Reaper()


class Failure:
    """An error raised in a helper thread, kept for the main thread to report."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def record(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc

    def raise_if_any(self) -> None:
        if self.error is not None:
            raise self.error
