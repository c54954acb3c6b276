"""The sidecar-mode executor and its bridge, as real processes (no Kubernetes).

executor.sh runs under a real `busybox sh` (the shell of the smallest user
images), and the core cases again under dash and bash, and under dash with
only busybox applets and no `setsid` on PATH (where a command's processes are
found by the tag in their environment instead of by process group). The bridge runs exactly as
the shim starts it, from `exchange.bridge_argv`. Every command a test starts
carries a tag of that test in its environment, so that a test can ask which
of its processes are still alive, and teardown can kill them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from kubemr.errors import KubemrError
from kubemr.shim import exchange

BUSYBOX = next((p for p in ("/usr/bin/busybox", "/bin/busybox") if os.path.exists(p)), None)
if BUSYBOX is None:
    pytest.skip("busybox not installed; apt-get install busybox-static", allow_module_level=True)

# The tools a restricted PATH offers (busybox applets), as in an image without setsid.
# (busybox sh itself finds its own setsid applet whatever PATH says.)
APPLETS = ("sh", "cat", "head", "sleep", "echo", "printf", "true", "tr", "wc", "env", "pwd", "yes")
NOSETSID = "nosetsid"

SHELLS: dict[str, list[str]] = {"busybox": [BUSYBOX, "sh"]}
for _name in ("dash", "bash"):
    _path = shutil.which(_name)
    if _path:
        SHELLS[_name] = [_path]
SHELLS[NOSETSID] = SHELLS.get("dash") or SHELLS.get("bash") or SHELLS["busybox"]
CORE = sorted(SHELLS)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has finished)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def tagged(tag: str) -> list[int]:
    """Live processes whose environment carries KUBEMR_TEST_TAG=tag."""
    needle = f"KUBEMR_TEST_TAG={tag}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read() and alive(int(name)):
                    found.append(int(name))
        except OSError:
            pass
    return found


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def kill_group(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Exchange:
    """One exchange directory, its executor and the bridges of one test."""

    def __init__(self, tmp: Path, shell: str) -> None:
        self.dir = tmp / "x"
        self.tmp = tmp
        self.shell = shell
        self.tag = uuid.uuid4().hex
        self.executor: subprocess.Popen[bytes] | None = None
        self.bridges: list[subprocess.Popen[bytes]] = []
        self.environ = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMR_")}
        if shell == NOSETSID:
            bin_dir = tmp / "bin"
            bin_dir.mkdir()
            for applet in APPLETS:
                (bin_dir / applet).symlink_to(BUSYBOX)
            self.environ["PATH"] = str(bin_dir)
        exchange.install(str(self.dir))

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start the executor as the user's container would, and wait until it listens."""
        with open(self.tmp / "executor.log", "ab") as log:
            self.executor = subprocess.Popen(
                [*SHELLS[self.shell], str(self.dir / "executor.sh"), str(self.dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.environ, **(env or {})},
                start_new_session=True,
            )
        exchange.wait_ready(str(self.dir), 5)
        groups = "proc" if self.shell == NOSETSID else "setsid"
        assert f"(process groups: {groups}," in self.log()
        return self.executor

    def log(self) -> str:
        return (self.tmp / "executor.log").read_text(errors="replace")

    def bridge(
        self,
        command: str,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        environ: dict[str, str] | None = None,
        stdin: Any = subprocess.DEVNULL,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
    ) -> subprocess.Popen[bytes]:
        """Start a bridge for `command` as the shim does (own process group, shim's env)."""
        env = {**(env or {}), "KUBEMR_TEST_TAG": self.tag}
        argv = exchange.bridge_argv(str(self.dir), str(cwd or self.tmp), command, env)
        proc = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env={**self.environ, **(environ or {})},
            start_new_session=True,
        )
        self.bridges.append(proc)
        return proc

    def run(
        self, command: str, data: bytes = b"", timeout: float = 10, **kwargs: Any
    ) -> tuple[int, bytes, bytes]:
        """Run `command` through a bridge to its end: exit code, stdout, stderr."""
        proc = self.bridge(command, stdin=subprocess.PIPE, **kwargs)
        out, err = proc.communicate(data, timeout=timeout)
        return proc.returncode, out, err

    def survivors(self) -> list[int]:
        return tagged(self.tag)

    def close(self) -> None:
        for pid in tagged(self.tag):
            kill_group(pid)
        for proc in [*self.bridges, *([self.executor] if self.executor else [])]:
            kill_group(proc.pid)
            proc.wait(5)
        for pid in tagged(self.tag):  # started while the executor was being killed
            kill_group(pid)


@pytest.fixture(params=CORE)
def core(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Exchange]:
    """A running executor under each shell."""
    ex = Exchange(tmp_path, request.param)
    try:
        ex.start()
        yield ex
    finally:
        ex.close()


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[[str], Exchange]]:
    """Exchange directories under a chosen shell, not yet started."""
    made: list[Exchange] = []

    def factory(shell: str = "busybox") -> Exchange:
        ex = Exchange(tmp_path / f"{shell}-{len(made)}", shell)
        made.append(ex)
        return ex

    yield factory
    for ex in made:
        ex.close()


@pytest.fixture
def busybox(make: Callable[[str], Exchange]) -> Exchange:
    ex = make("busybox")
    ex.start()
    return ex


def wait_line(stream: IO[bytes] | None, expected: bytes) -> None:
    assert stream is not None
    assert stream.readline() == expected


# --- the data path --------------------------------------------------------------------


def test_bytes_pass_through_unchanged(core: Exchange) -> None:
    block = bytes(range(256)) * 64 + b"\r\n\n\0" + os.urandom(4096)
    data = block * 200 + b"a last line without a newline"  # about 4 MB
    code, out, err = core.run("cat", data)
    assert (code, err) == (0, b"")
    assert out == data


def test_cwd_and_odd_variables_reach_the_command(core: Exchange) -> None:
    cwd = core.tmp / 'it\'s a "dir" $HOME'
    cwd.mkdir()
    odd = 'it\'s "quoted" $HOME `echo no` \\n\nsecond line\n\n'
    command = 'pwd\nprintf \'<%s>\' "$ODD" "$EMPTY"\n'
    code, out, _ = core.run(command, cwd=cwd, env={"ODD": odd, "EMPTY": ""})
    assert code == 0
    assert out == f"{cwd}\n<{odd}><>".encode()


def test_multiline_command_with_quotes(core: Exchange) -> None:
    command = 'a=\'one  two\'\nb="it\'s"\nprintf \'%s|%s\\n\' "$a" "$b"\necho \'$a\' "\\$b"'
    code, out, _ = core.run(command)
    assert (code, out) == (0, b"one  two|it's\n$a $b\n")


def test_exit_code_and_stderr_pass_through(core: Exchange) -> None:
    command = "cat >/dev/null; printf 'oops\\000\\377 no newline' >&2; exit 3"
    code, out, err = core.run(command, b"x")
    assert (code, out) == (3, b"")
    assert err == b"oops\0\xff no newline"


def test_command_killed_by_a_signal_ends_the_bridge_by_that_signal(core: Exchange) -> None:
    """As `sh -c 'kill -USR1 $$'` ends by SIGUSR1: the executor's shell reports 128+N, and
    the bridge ends itself by signal N."""
    code, _, err = core.run("kill -USR1 $$")
    assert (code, err) == (-signal.SIGUSR1, b"")  # no "User defined signal 1" from a shell


def test_command_that_ignores_stdin(core: Exchange) -> None:
    started = time.monotonic()
    code, out, _ = core.run("true", b"y" * (20 << 20))
    assert (code, out) == (0, b"")
    assert time.monotonic() - started < 5


def test_head_on_large_input(core: Exchange) -> None:
    data = b"first line\n" + b"more\n" * (4 << 20)
    code, out, _ = core.run("head -n1", data)
    assert (code, out) == (0, b"first line\n")


def test_files_as_stdin_and_stdout(busybox: Exchange) -> None:
    """An open file already at its range's start as stdin, an append-mode file as stdout
    (where splice refuses, the bridge copies)."""
    source = busybox.tmp / "in.bin"
    data = os.urandom(3 << 20)
    source.write_bytes(b"skipped header\n" + data)
    target = busybox.tmp / "out.bin"
    target.write_bytes(b"kept\n")
    with source.open("rb") as stdin, target.open("ab") as stdout:
        stdin.seek(len(b"skipped header\n"))
        proc = busybox.bridge("cat", stdin=stdin, stdout=stdout)
        assert proc.wait(10) == 0
    assert target.read_bytes() == b"kept\n" + data


def test_concurrent_commands_get_their_own_data(busybox: Exchange) -> None:
    datas = [bytes([65 + i]) * (1 << 20) + os.urandom(1000) for i in range(4)]
    procs = [
        busybox.bridge('cat; printf "%s" "$N"', env={"N": str(i)}, stdin=subprocess.PIPE)
        for i in range(4)
    ]
    # Write a first piece to each before finishing any, so that all four run at once.
    for proc, data in zip(procs, datas, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(data[:1000])
        proc.stdin.flush()
    results = [p.communicate(d[1000:], timeout=10) for p, d in zip(procs, datas, strict=True)]
    for i, ((out, _), proc) in enumerate(zip(results, procs, strict=True)):
        assert proc.returncode == 0
        assert out == datas[i] + str(i).encode()


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_reader_that_stops_gives_the_command_sigpipe(core: Exchange, stream: str) -> None:
    """As under sh -c: `yes` dies when whoever reads the bridge's stdout or stderr leaves."""
    redirect = "" if stream == "stdout" else ">&2"
    proc = core.bridge(f"yes {redirect}")
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    assert pipe.read(100_000) == b"y\n" * 50_000
    pipe.close()
    assert proc.wait(5) == -signal.SIGPIPE
    assert eventually(lambda: core.survivors() == [], 1)


def test_what_a_finished_command_left_running_is_killed(core: Exchange) -> None:
    """`cmd &` would keep the FIFOs open, and the task running, forever."""
    started = time.monotonic()
    code, out, _ = core.run("sleep 1000 & echo $! > pid; echo done", timeout=5)
    assert (code, out) == (0, b"done\n")
    assert time.monotonic() - started < 2
    # SIGKILL was sent before the exit code was written; the kernel may take a moment.
    assert eventually(lambda: not alive(int((core.tmp / "pid").read_text())), 1)
    assert eventually(lambda: core.survivors() == [], 1)


# --- signals ----------------------------------------------------------------------------


def test_sigterm_to_the_bridge_ends_the_whole_command(core: Exchange) -> None:
    pids = core.tmp / "pids"
    proc = core.bridge(f"sleep 1000 & echo $! > {pids}; echo $$ >> {pids}; echo up; sleep 1000")
    wait_line(proc.stdout, b"up\n")
    recorded = [int(x) for x in pids.read_text().split()]
    assert all(alive(pid) for pid in recorded)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == -signal.SIGTERM
    assert time.monotonic() - started < 2
    assert proc.stderr is not None and proc.stderr.read() == b""
    assert eventually(lambda: not any(alive(pid) for pid in recorded), 1)
    assert eventually(lambda: core.survivors() == [], 1)


def test_sigterm_reaches_the_command(core: Exchange) -> None:
    marker = core.tmp / "marker"
    proc = core.bridge(
        f"trap 'echo got TERM > {marker}; exit 5' TERM; echo up; while :; do sleep 0.05; done"
    )
    wait_line(proc.stdout, b"up\n")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 5
    assert marker.read_text() == "got TERM\n"


def test_command_that_ignores_term_is_killed_before_the_grace_ends(core: Exchange) -> None:
    proc = core.bridge("trap '' TERM; echo up; sleep 1000", environ={"KUBEMR_BRIDGE_GRACE": "1.5"})
    wait_line(proc.stdout, b"up\n")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == -signal.SIGKILL
    assert 0.4 < time.monotonic() - started < 1.5
    assert proc.stderr is not None and proc.stderr.read() == b""  # no "Killed" from a shell
    assert eventually(lambda: core.survivors() == [], 1)


def test_signal_before_the_command_starts_is_kept_for_it(busybox: Exchange) -> None:
    """A `kill` that overtakes its `run` (SIGTERM right after the bridge started) still lands."""
    for delay in (0.0, 0.01, 0.02, 0.03, 0.04, 0.06):
        proc = busybox.bridge("sleep 1000")
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        # Before Python has installed its handlers, the signal just ends the bridge.
        assert proc.wait(5) == -signal.SIGTERM
    assert eventually(lambda: busybox.survivors() == [], 1)


# --- the executor going away -------------------------------------------------------------


def test_executor_crash_is_reported(core: Exchange) -> None:
    proc = core.bridge("echo up; sleep 1000")
    wait_line(proc.stdout, b"up\n")
    assert core.executor is not None
    started = time.monotonic()
    os.killpg(core.executor.pid, signal.SIGKILL)  # the executor and its runners
    assert proc.wait(5) == exchange.EXECUTOR_FAILED
    assert time.monotonic() - started < 3
    assert proc.stderr is not None
    assert (
        proc.stderr.read()
        .decode()
        .startswith(
            "[kubemr] executor: the executor in the user's container stopped before reporting "
            "the command's exit code (container killed or out of memory?)\n"
        )
    )


def test_executor_not_running(make: Callable[[str], Exchange]) -> None:
    ex = make("busybox")  # installed, never started
    started = time.monotonic()
    code, _, err = ex.run("true", environ={"KUBEMR_BRIDGE_READY_TIMEOUT": "0.5"})
    assert code == exchange.EXECUTOR_FAILED
    assert 0.5 <= time.monotonic() - started < 3
    assert err.decode().startswith(
        "[kubemr] executor: the executor in the user's container is not running;"
    )
    assert err.count(b"\n") == 1
    assert os.listdir(ex.dir / "req") == []


def test_executor_that_stopped_leaves_ready_but_nobody_listens(busybox: Exchange) -> None:
    assert busybox.executor is not None
    os.killpg(busybox.executor.pid, signal.SIGKILL)
    busybox.executor.wait()
    code, _, err = busybox.run("true", environ={"KUBEMR_BRIDGE_READY_TIMEOUT": "0.3"})
    assert code == exchange.EXECUTOR_FAILED
    assert b"is not running" in err


def test_exit_request_stops_commands_and_the_executor(core: Exchange) -> None:
    proc = core.bridge("echo up; sleep 1000")
    wait_line(proc.stdout, b"up\n")
    assert core.executor is not None
    exchange.tell_exit(str(core.dir), 7)
    assert core.executor.wait(5) == 7
    assert proc.wait(5) == -signal.SIGTERM
    assert eventually(lambda: core.survivors() == [], 1)


def test_sigterm_to_the_executor_stops_its_commands(core: Exchange) -> None:
    proc = core.bridge("trap '' TERM; echo up; sleep 1000")  # even one that ignores TERM
    wait_line(proc.stdout, b"up\n")
    assert core.executor is not None
    core.executor.send_signal(signal.SIGTERM)
    assert core.executor.wait(5) == 143
    assert proc.wait(5) == -signal.SIGKILL
    assert eventually(lambda: core.survivors() == [], 1)


def test_kill_all_clears_a_command_whose_bridge_died(core: Exchange) -> None:
    proc = core.bridge("echo up; sleep 1000")
    wait_line(proc.stdout, b"up\n")
    os.killpg(proc.pid, signal.SIGKILL)  # a crashed shim: the request stays behind
    proc.wait()
    (request,) = (core.dir / "req").iterdir()
    assert (request / "pid").exists() and not (request / "code").exists()
    assert core.survivors() != []
    exchange.kill_all(str(core.dir))
    assert eventually(lambda: core.survivors() == [])
    assert eventually((request / "code").exists)


def test_requests_of_an_earlier_executor_are_forgotten(make: Callable[[str], Exchange]) -> None:
    """After a container restart their pids may be anyone's: kill_all must not hit them."""
    ex = make("busybox")
    decoy = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        stale = ex.dir / "req" / "1-stale"
        stale.mkdir()
        (stale / "pid").write_text(f"{decoy.pid}\n")
        ex.start()
        assert (stale / "pid").read_text() == ""
        exchange.kill_all(str(ex.dir))
        time.sleep(0.3)
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()


# --- the installer and the sidecar's helpers -----------------------------------------------


def test_image_commands_come_from_the_executor_environment(make: Callable[[str], Exchange]) -> None:
    ex = make("busybox")
    mapper = "grep -c 'it''s' | tr -d ' '\n# two lines, no final newline"
    ex.start(env={"KUBEMR_MAP": mapper, "KUBEMR_REDUCE": ""})
    assert exchange.image_commands(str(ex.dir)) == {"KUBEMR_MAP": mapper, "KUBEMR_REDUCE": ""}


def test_install_is_idempotent_and_wait_ready_times_out(tmp_path: Path) -> None:
    x = tmp_path / "x"
    exchange.install(str(x))
    exchange.install(str(x))
    assert (x / "executor.sh").read_bytes() == Path(exchange.EXECUTOR).read_bytes()
    assert sorted(os.listdir(x)) == ["control", "executor.sh", "image-env", "req", "tick"]
    started = time.monotonic()
    with pytest.raises(KubemrError, match=r"did not start within 0\.2s"):
        exchange.wait_ready(str(x), 0.2)
    assert time.monotonic() - started < 1


def test_bridge_argv_refuses_a_bad_variable_name(tmp_path: Path) -> None:
    with pytest.raises(KubemrError, match="letters, digits and _"):
        exchange.bridge_argv(str(tmp_path), str(tmp_path), "true", {"A-B": "1"})


def test_bridge_memory_stays_flat_on_a_large_stream(busybox: Exchange) -> None:
    command = "cat; echo done >&2; sleep 5"
    proc = busybox.bridge(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stdin is not None
    block = os.urandom(1 << 20)
    for _ in range(200):
        proc.stdin.write(block)
    proc.stdin.close()
    wait_line(proc.stderr, b"done\n")
    with open(f"/proc/{proc.pid}/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    assert peak < 40 * 1024, f"the bridge peaked at {peak} kB"
    proc.send_signal(signal.SIGTERM)
    proc.wait(5)
