"""Running user commands: process groups, stderr capture, timeouts, cancellation.

Every command runs as `sh -c COMMAND` in a process group of its own, so a
timeout or a lost lease kills the whole pipeline the user wrote (SIGTERM,
then SIGKILL after a grace period), not just the shell. Its stderr is read
line by line: reporter lines become counters and status, everything goes to
a bounded log file (the head is kept whole, then only the tail), and the last
lines are kept for the error message.
"""

from __future__ import annotations

import collections
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from kubemr import reporter
from kubemr.shim.forked import Forked

GRACE_SECONDS = 5.0
LOG_HEAD_BYTES = 4 * 1024 * 1024
TAIL_LINES = 20
TAIL_LINE_CHARS = 300


class StderrLog:
    """Collects the stderr of a task's processes: a bounded log, a tail, counters and status."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Unbuffered, so that `kubemr logs` of a running task shows what it wrote so far.
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()
        self._written = 0
        self._dropped = 0
        self._tail: collections.deque[bytes] = collections.deque(maxlen=200)
        self.counters: reporter.Counters = {}
        self.status: str | None = None
        self._threads: list[threading.Thread] = []
        self.tails: dict[str, collections.deque[str]] = {}
        self._readers: dict[str, threading.Thread] = {}

    def follow(self, stream: IO[bytes], label: str) -> None:
        """Start a thread reading `stream` (one process's stderr) to its end."""
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.tails[label] = tail
        thread = threading.Thread(target=self._read, args=(stream, tail), daemon=True)
        thread.start()
        self._threads.append(thread)
        self._readers[label] = thread

    def _read(self, stream: IO[bytes], tail: collections.deque[str]) -> None:
        with stream:
            for line in iter(lambda: stream.readline(65536), b""):
                self._line(line, tail)

    def _line(self, line: bytes, tail: collections.deque[str]) -> None:
        parsed = reporter.parse_line(line)
        with self._lock:
            if isinstance(parsed, reporter.Counter):
                reporter.add(self.counters, parsed.group, parsed.name, parsed.amount)
            elif isinstance(parsed, reporter.Status):
                self.status = parsed.message
            else:
                if isinstance(parsed, reporter.Malformed):
                    reporter.add(self.counters, *reporter.MALFORMED, 1)
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if text.strip():
                    tail.append(text[:TAIL_LINE_CHARS])
            if self._written < LOG_HEAD_BYTES:
                self._file.write(line)
                self._written += len(line)
            else:
                self._dropped += len(line)
                self._tail.append(line)

    def tail_text(self, label: str, wait: float = 0.0) -> str:
        """The last lines `label` wrote to stderr; after up to `wait` seconds for the rest of
        what it wrote before it ended to be read."""
        reader = self._readers.get(label)
        if wait and reader is not None:
            reader.join(wait)
        return "\n".join(self.tails.get(label, ()))

    def close(self) -> None:
        """Wait for the readers and finish the file; calling it again does nothing."""
        for thread in self._threads:
            thread.join()
        with self._lock:
            if self._file.closed:
                return
            if self._dropped:
                kept = sum(len(x) for x in self._tail)
                self._file.write(
                    f"[kubemr] ... {self._dropped - kept} bytes of stderr dropped ...\n".encode()
                )
                for line in self._tail:
                    self._file.write(line)
            self._file.close()


class Proc:
    """One command in its own process group."""

    def __init__(
        self,
        label: str,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        stdin: Any,
        stdout: Any,
        log: StderrLog,
        registry: str | None = None,
        fork: Callable[[], object] | None = None,
    ) -> None:
        """With `fork`, the process is a forked child of this one that runs `fork()` (see
        kubemr.shim.forked), with `argv` and `env` only naming what it does."""
        self.label = label
        self.log = log
        self.reaped = False
        self.popen: subprocess.Popen[bytes] | Forked
        if fork is not None:
            self.popen = Forked(fork, stdin=stdin, stdout=stdout, cwd=cwd)
        else:
            self.popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        if registry is not None:
            # So whoever started this worker can kill the group if the worker dies first.
            with open(os.path.join(registry, str(self.popen.pid)), "w"):
                pass
        assert self.popen.stderr is not None
        log.follow(self.popen.stderr, label)

    def kill(self, grace: float = GRACE_SECONDS) -> None:
        """SIGTERM the process group, then SIGKILL it after `grace` seconds."""
        signal_group(self.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        signal_group(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


def kill_registered(registry: str) -> None:
    """SIGKILL the process groups recorded in `registry` (left behind by a dead worker)."""
    try:
        names = os.listdir(registry)
    except FileNotFoundError:
        return
    for name in names:
        if name.isdigit():
            signal_group(int(name), signal.SIGKILL)
        try:
            os.unlink(os.path.join(registry, name))
        except FileNotFoundError:
            pass


def signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def shell(command: str) -> list[str]:
    """argv that runs a user command the way Hadoop Streaming users expect."""
    return ["sh", "-c", command]


class Stopped(Exception):
    """The task was stopped: timeout, lost lease, or shutdown. `reason` says which."""

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout


class Watch:
    """The conditions under which a running task must stop."""

    def __init__(self, timeout: float, cancel: threading.Event, why: list[str]) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.cancel = cancel
        self.why = why

    def check(self) -> None:
        if self.cancel.is_set():
            raise Stopped(self.why[0] if self.why else "stopped")
        if time.monotonic() > self.deadline:
            raise Stopped(f"timed out after {self.timeout:g}s (taskTimeoutSeconds)", timeout=True)


def _exits(procs: Sequence[Proc], timeout: float) -> None:
    """Return when one of `procs` (all running) has exited, or after `timeout` seconds.

    A pidfd becomes readable the moment its process exits, so an exit is noticed at once,
    where waiting with a timeout (Popen.wait) polls, noticing it up to tens of milliseconds
    late: for short tasks, that is most of their overhead."""
    fds: list[int] = []
    try:
        for p in procs:
            fds.append(os.pidfd_open(p.popen.pid))
    except OSError:  # no pidfds (an old kernel), or one has just been reaped
        for fd in fds:
            os.close(fd)
        try:
            procs[0].popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.poll(timeout * 1000)
    finally:
        for fd in fds:
            os.close(fd)


def wait_all(procs: Sequence[Proc], watch: Watch, threads: Sequence[threading.Thread] = ()) -> None:
    """Wait for every process and helper thread, killing them all if the watch fires."""
    try:
        while True:
            watch.check()
            running = [p for p in procs if p.popen.poll() is None]
            for p in procs:
                if p.popen.returncode is not None and not p.reaped:
                    # What a finished command left running in its group (`cmd &`) would keep
                    # its pipes open, and so the task, forever: end it with its command.
                    p.reaped = True
                    signal_group(p.popen.pid, signal.SIGKILL)
            if running:
                _exits(running, 0.05)
                continue
            alive = [t for t in threads if t.is_alive()]
            if not alive:
                return
            alive[0].join(0.05)
    except Stopped as exc:
        stuck = [p for p in procs if p.popen.poll() is None]
        for p in stuck:
            p.kill()
        if not exc.timeout:
            raise
        # Why it hung is often on its stderr: say it, as a failure does.
        tails = [(p.label, p.log.tail_text(p.label, wait=1.0)) for p in stuck]
        said = "".join(f"; the {name}'s stderr ends with:\n{tail}" for name, tail in tails if tail)
        raise Stopped(exc.reason + said, timeout=True) from None
