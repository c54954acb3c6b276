"""Runs one user command in the user's container, looking to its parent like `sh -c COMMAND`.

In sidecar mode the commands run in the user's container, which has no
Python, while the shim runs in the kubemr sidecar. The shim starts this
script where it would start `sh -c COMMAND`; it hands the command to the
POSIX-sh executor in the user's container (kubemr/shim/executor.sh) over the
directory both containers mount, X, and streams the bytes through FIFOs, so
that its parent sees the same stdin, stdout, stderr and exit code, and its
SIGTERM reaches the command. Process groups, timeouts and stderr capture in
the shim therefore stay as they are.

    python -I -S bridge.py X CWD COMMAND [NAME=VALUE ...]

The handshake:

1. wait (KUBEMR_BRIDGE_READY_TIMEOUT seconds, default 120) until X/ready
   exists and X/control has a reader (the executor holds it open);
2. make X/req/ID/ with `script` (cd CWD, export the variables, exec
   /bin/sh -c COMMAND) and the FIFOs `in`, `out`, `err`; open `out` and `err`
   for reading without blocking, then write `run ID` to X/control;
3. copy stdin to `in` (its open waits for the command's shell), `out` to
   stdout and `err` to stderr, with splice(2) where both ends allow it;
4. when `out` and `err` reach EOF, read X/req/ID/code and exit with it (a code
   of 128+N, a shell's way of saying "killed by signal N", ends this process by
   signal N, as `sh -c` would have ended). The
   executor writes `code` before it closes `err`, so EOF on `err` without a
   `code`, or nobody reading X/control any more, means the executor died.

SIGTERM, SIGINT or SIGHUP is passed on as `kill ID TERM`; if the command is
still running a second before the parent's grace period ends
(KUBEMR_BRIDGE_GRACE seconds after the signal, default 4.5: a little under
the shim's own), `kill ID KILL` follows, so the command is gone before this
process could be SIGKILLed. When the executor cannot run the command, this
script exits EXECUTOR_FAILED after one `[kubemr] executor:` line on stderr.

The shim runs `main` in a child forked from the worker for each command
(kubemr.shim.forked: no interpreter to start); as a program, run with `-I -S`.
Either way it uses the standard library only and must not import kubemr: in a
forked child nothing may take a lock that one of the worker's threads held.
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import select
import signal
import sys
import threading
import time

# `typing` alone would double this script's start-up time; annotations are never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import NoReturn

EXECUTOR_FAILED = 254
CHUNK = 1024 * 1024
PIPE_SIZE = 1024 * 1024
CHECK_SECONDS = 0.5
DEATH_GRACE = 1.0

NOT_RUNNING = (
    "the executor in the user's container is not running; it did not listen on {control} "
    "within {timeout:g}s (does the container run `sh {x}/executor.sh {x}`?)"
)
DIED = (
    "the executor in the user's container stopped before reporting the command's exit code "
    "(container killed or out of memory?)"
)


def fail(message: str) -> NoReturn:
    """Say what went wrong on stderr and exit with the reserved code."""
    try:
        os.write(2, f"[kubemr] executor: {message}\n".encode(errors="replace"))
    except OSError:
        pass
    os._exit(EXECUTOR_FAILED)


def quote(value: str) -> str:
    """`value` as one single-quoted sh word, whatever it contains."""
    return "'" + value.replace("'", "'\\''") + "'"


def script(cwd: str, command: str, env: list[tuple[str, str]]) -> bytes:
    """The sh script the executor runs for this command."""
    lines = [f"cd {quote(cwd)} || exit"]
    lines += [f"export {name}={quote(value)}" for name, value in env]
    lines.append(f"exec /bin/sh -c {quote(command)}")
    return os.fsencode("\n".join(lines) + "\n")


def is_name(name: str) -> bool:
    """A valid sh variable name: [A-Za-z_][A-Za-z0-9_]*."""
    return name.isascii() and name.isidentifier()


def listening(control: str) -> bool:
    """Whether someone (the executor) holds X/control open for reading."""
    try:
        fd = os.open(control, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True


def tell(control: str, line: str) -> bool:
    """Write one request line to X/control; False if the executor is not there."""
    try:
        fd = os.open(control, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        os.write(fd, line.encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def grow(fd: int) -> None:
    """Ask for a bigger pipe buffer (fewer wake-ups); the default is fine if refused."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


def copy(src: int, dst: int) -> None:
    """Copy src to dst until EOF on src; raises BrokenPipeError when dst's reader left."""
    splice = True
    while True:
        if splice:
            try:
                n = os.splice(src, dst, CHUNK)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                splice = False
                continue
            if n == 0:
                return
        else:
            data = os.read(src, CHUNK)
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view) :]


def feed(path: str) -> None:
    """stdin -> `in`; closes `in` at EOF. A command that stops reading ends the copy."""
    try:
        fd = os.open(path, os.O_WRONLY)  # waits for the command's shell to open it
    except OSError:
        return
    try:
        grow(fd)
        copy(0, fd)
    except OSError:
        # The command closed its stdin (EPIPE) or ours is unusable: let whoever writes
        # to us see a closed pipe too, as they would writing to `sh -c` directly.
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        except OSError:
            pass
    finally:
        os.close(fd)


def drain(fd: int, dst: int, finished: Callable[[], bool]) -> None:
    """`out` or `err` -> dst until every writer has closed it (or `finished`, see below)."""
    # Opened without blocking before any writer existed: a read would see EOF at once,
    # but poll reports nothing until a writer has come (data) and maybe gone (HUP).
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll()
    os.set_blocking(fd, True)
    grow(fd)
    try:
        copy(fd, dst)
    except OSError:
        # Nobody reads our stdout or stderr: stop reading too, so that the command gets
        # SIGPIPE as it would under sh -c.
        os.close(fd)
        if dst == 2:
            # EOF on `err` can no longer tell when `code` is complete: watch for it.
            while not finished():
                time.sleep(0.02)
        return
    os.close(fd)


class Bridge:
    """One command handed to the executor, and what is known about it."""

    def __init__(self, x: str, grace: float) -> None:
        self.x = x
        self.control = os.path.join(x, "control")
        self.id = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.dir = os.path.join(x, "req", self.id)
        self.grace = grace
        self.sent = False
        self.signalled: float | None = None
        self.killed = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Pass the first TERM/INT/HUP on to the command; before it runs, just stop."""
        if not self.sent:
            self.remove()
            os._exit(128 + signum)
        if self.signalled is None:
            self.signalled = time.monotonic()
            tell(self.control, f"kill {self.id} TERM\n")

    def escalate(self) -> None:
        """KILL the command if it outlives TERM until a second before the grace ends."""
        if self.signalled is None or self.killed:
            return
        if time.monotonic() >= self.signalled + max(0.0, self.grace - 1.0):
            self.killed = True
            tell(self.control, f"kill {self.id} KILL\n")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while not (os.path.exists(os.path.join(self.x, "ready")) and listening(self.control)):
            if time.monotonic() >= deadline:
                fail(NOT_RUNNING.format(control=self.control, timeout=timeout, x=self.x))
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def prepare(self, text: bytes) -> tuple[int, int]:
        """Make req/ID/ and its FIFOs; the read ends of `out` and `err`, opened."""
        # As open as X/req (see exchange.install): the user's container may run as
        # another user, and writes pid and code here.
        perm = os.stat(os.path.dirname(self.dir)).st_mode & 0o777
        os.mkdir(self.dir)
        os.chmod(self.dir, perm)
        path = os.path.join(self.dir, "script")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, text)
            os.fchmod(fd, perm & 0o644)
        finally:
            os.close(fd)
        for name in ("in", "out", "err"):
            fifo = os.path.join(self.dir, name)
            os.mkfifo(fifo, 0o600)
            os.chmod(fifo, perm & 0o666)
        out = os.open(os.path.join(self.dir, "out"), os.O_RDONLY | os.O_NONBLOCK)
        err = os.open(os.path.join(self.dir, "err"), os.O_RDONLY | os.O_NONBLOCK)
        return out, err

    def code(self) -> int | None:
        """The exit code the executor wrote, if it wrote a whole one."""
        try:
            with open(os.path.join(self.dir, "code"), "rb") as f:
                text = f.read()
        except OSError:
            return None
        if not text.endswith(b"\n") or not text.strip().isdigit():
            return None
        return int(text) & 0xFF

    def finished(self) -> bool:
        """Whether the executor wrote the exit code, or went away."""
        return self.code() is not None or not listening(self.control)

    def remove(self) -> None:
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        for name in names:
            try:
                os.unlink(os.path.join(self.dir, name))
            except OSError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass

    def run(self, cwd: str, command: str, env: list[tuple[str, str]], ready: float) -> int:
        self.wait_ready(ready)
        try:
            out, err = self.prepare(script(cwd, command, env))
        except OSError as exc:
            self.remove()
            fail(f"cannot hand the command over in {self.dir}: {exc}")
        # From here a signal is passed on as `kill ID ...`; should it come before `run`,
        # the executor keeps it in req/ID/ for the runner.
        self.sent = True
        threads = [
            threading.Thread(target=drain, args=(out, 1, self.finished), daemon=True),
            threading.Thread(target=drain, args=(err, 2, self.finished), daemon=True),
        ]
        path = os.path.join(self.dir, "in")
        feeder = threading.Thread(target=feed, args=(path,), daemon=True)
        for thread in [*threads, feeder]:
            thread.start()
        if not tell(self.control, f"run {self.id}\n"):
            self.remove()
            fail(NOT_RUNNING.format(control=self.control, timeout=ready, x=self.x))
        dead_since: float | None = None
        next_check = time.monotonic() + CHECK_SECONDS
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(0.05)
            self.escalate()
            now = time.monotonic()
            if dead_since is not None:
                if now - dead_since >= DEATH_GRACE:
                    break
            elif now >= next_check:
                next_check = now + CHECK_SECONDS
                if not listening(self.control):
                    dead_since = now  # let a runner that is just finishing close `err`
        code = self.code()
        self.remove()
        if code is None:
            fail(DIED)
        return code


def seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def main(argv: list[str]) -> NoReturn:
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            # Closed: hold the number with something unwritable, so that no FIFO gets it,
            # and the command fails to write there as it would under sh -c.
            null = os.open(os.devnull, os.O_RDONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if len(argv) < 4:
        fail("usage: bridge.py EXCHANGE_DIRECTORY CWD COMMAND [NAME=VALUE ...]")
    x, cwd, command = argv[1:4]
    env: list[tuple[str, str]] = []
    for item in argv[4:]:
        name, sep, value = item.partition("=")
        if not sep or not is_name(name):
            fail(f"cannot pass {item[:60]!r} to the command: not NAME=VALUE")
        env.append((name, value))
    grace = seconds("KUBEMR_BRIDGE_GRACE", 4.5)
    ready = seconds("KUBEMR_BRIDGE_READY_TIMEOUT", 120.0)
    bridge = Bridge(x, grace)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, bridge.on_signal)
    code = bridge.run(cwd, command, env, ready)
    die_as(code)
    os._exit(code)


#: Signals whose default action ends a process; the others (stop, continue, ignore) do not.
ENDING = {
    int(s)
    for s in signal.Signals
    if s
    not in (
        signal.SIGCHLD, signal.SIGCONT, signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN,
        signal.SIGTTOU, signal.SIGURG, signal.SIGWINCH,
    )
}  # fmt: skip


def die_as(code: int) -> None:
    """A shell reports a command killed by signal N as 128+N: end this process by that signal
    too, so that its parent sees what it sees under `sh -c` (killed by SIGKILL, SIGPIPE...);
    without a core file. An `exit 137` of the command's own reads the same, as it does to any
    shell."""
    signum = code - 128
    if signum not in ENDING:
        return
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    if signum != signal.SIGKILL:  # whose action nobody can change
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
    time.sleep(1)  # delivered at once; should it not be, the exit code says it


if __name__ == "__main__":
    main(sys.argv)
