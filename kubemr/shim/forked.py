"""A child process that runs a function of this program, started by fork() without an exec.

In sidecar mode every user command is handed to the executor by a bridge
(kubemr/shim/bridge.py) that must look to the shim like `sh -c COMMAND`: a
process of its own, in a process group of its own, with the command's stdin,
stdout, stderr, exit status and signals. Started as a new Python interpreter
it costs about 30 ms a command, most of it the interpreter starting and
importing. Forked from the worker, which has imported everything already, it
costs about a millisecond. `Forked` is that child, with the part of
`subprocess.Popen`'s interface the shim uses (pid, stdin, stdout, stderr,
poll, wait, returncode), so everything else (process groups, pidfds,
timeouts, stderr capture) treats it as any other command.

The child of a multi-threaded process holds only the thread that forked, and
any lock another thread held at that moment stays held in it; so the function
it runs must use system calls and threads only (as the bridge does: no
logging, no storage clients, nothing shared with the worker's threads), and
it ends with os._exit, never returning into the worker's code.
"""

from __future__ import annotations

import fcntl
import gc
import os
import resource
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from typing import IO, Any

__all__ = ["Forked"]


def _child_end(spec: Any, readable: bool, opened: list[int]) -> tuple[int, int | None]:
    """(the descriptor the child gets, the parent's end of a new pipe or None) for a Popen
    stdin/stdout argument: PIPE, DEVNULL, a descriptor or a file object."""
    if spec == subprocess.PIPE:
        r, w = os.pipe()
        opened.extend((r, w))
        return (r, w) if readable else (w, r)
    if spec == subprocess.DEVNULL:
        fd = os.open(os.devnull, os.O_RDONLY if readable else os.O_WRONLY)
        opened.append(fd)
        return fd, None
    if isinstance(spec, int):
        return spec, None
    if spec is None:
        return (0 if readable else 1), None
    return spec.fileno(), None


class Forked:
    """`target()` run in a forked child, in a new session (so a process group of its own),
    with `stdin`, `stdout` as Popen takes them and stderr a pipe (`.stderr`). The child's
    exit status is `target`'s os._exit code; if it raises, 255."""

    def __init__(
        self, target: Callable[[], object], *, stdin: Any, stdout: Any, cwd: str | None = None
    ) -> None:
        self.returncode: int | None = None
        self.stdin: IO[bytes] | None = None
        self.stdout: IO[bytes] | None = None
        self._lock = threading.Lock()
        opened: list[int] = []
        try:
            child_in, parent_in = _child_end(stdin, True, opened)
            child_out, parent_out = _child_end(stdout, False, opened)
            err_r, err_w = os.pipe()
            opened.extend((err_r, err_w))
            with warnings.catch_warnings():
                # Python 3.12 warns about fork() in a process with threads; see the module.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:
                self._child(target, (child_in, child_out, err_w), cwd)
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        self.pid = pid
        keep = {parent_in, parent_out, err_r}
        for fd in opened:
            if fd not in keep:
                os.close(fd)
        if parent_in is not None:
            self.stdin = open(parent_in, "wb")  # noqa: SIM115 - closed by its user
        if parent_out is not None:
            self.stdout = open(parent_out, "rb")  # noqa: SIM115 - closed by its user
        self.stderr: IO[bytes] = open(err_r, "rb")  # noqa: SIM115 - read to its end

    @staticmethod
    def _child(target: Callable[[], object], fds: tuple[int, int, int], cwd: str | None) -> None:
        code = 255
        try:
            gc.disable()  # collecting the worker's objects would touch (and copy) its memory
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)  # not the worker's handlers
            os.setsid()
            # Move them out of 0-2 first, in case one of them is there already.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]
            for number, fd in enumerate(high):
                os.dup2(fd, number)
            os.closerange(3, _fd_limit())
            if cwd is not None:
                os.chdir(cwd)
            target()
            code = 0
        except BaseException as exc:
            try:
                os.write(2, f"[kubemr] the bridge failed: {exc!r}\n".encode(errors="replace"))
            except OSError:
                pass
        os._exit(code)

    def poll(self) -> int | None:
        """The exit status if the child has exited (reaping it), else None."""
        with self._lock:
            if self.returncode is None:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit (subprocess.TimeoutExpired after `timeout` seconds)."""
        if timeout is None:
            with self._lock:
                if self.returncode is None:
                    _, status = os.waitpid(self.pid, 0)
                    self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(["bridge"], timeout)
            time.sleep(0.005)
        return code


def _fd_limit() -> int:
    """One more than the highest descriptor this process may have open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft
