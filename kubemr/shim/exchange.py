"""The directory a kubemr sidecar shares with the user's container (sidecar mode).

In sidecar mode the user's image has only /bin/sh. An init container puts
the POSIX-sh executor (executor.sh) into a volume both containers mount,
the user's container runs it, and the sidecar hands it each command through
a bridge process (bridge.py) that looks to the shim like `sh -c COMMAND`.
This module is the sidecar's side of that directory: preparing it, waiting
for the executor, reading the commands the image declares, telling the
executor to stop, and clearing commands a crashed shim left behind. The
layout and the handshake are described at the top of executor.sh and
bridge.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import time
from collections.abc import Mapping

from kubemr.errors import KubemrError
from kubemr.shim.bridge import EXECUTOR_FAILED, is_name, listening, tell

__all__ = [
    "BRIDGE",
    "EXECUTOR",
    "EXECUTOR_FAILED",
    "bridge_argv",
    "image_commands",
    "install",
    "kill_all",
    "tell_exit",
    "wait_ready",
]

HERE = os.path.dirname(os.path.abspath(__file__))
EXECUTOR = os.path.join(HERE, "executor.sh")
BRIDGE = os.path.join(HERE, "bridge.py")
IMAGE_COMMANDS = ("KUBEMR_MAP", "KUBEMR_COMBINE", "KUBEMR_REDUCE")


def _fifo(path: str, mode: int) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        os.mkfifo(path)
    else:
        if not stat.S_ISFIFO(mode):
            raise KubemrError(
                f"cannot prepare the exchange directory: {path} exists and is not a FIFO"
            )
    os.chmod(path, mode)


def install(directory: str) -> None:
    """Put the executor into `directory` with the FIFOs and folders it expects; idempotent.

    What it makes is as open as `directory` itself: in a pod that is an emptyDir, which
    anyone may write, as the user's container may run as another user than the sidecar;
    on a workstation it is a private directory, and `control` must not be writable by
    other users, who could otherwise run commands as this one.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        perm = stat.S_IMODE(os.stat(directory).st_mode) & 0o777
        target = os.path.join(directory, "executor.sh")
        partial = target + ".partial"
        shutil.copyfile(EXECUTOR, partial)
        os.chmod(partial, 0o755)
        os.replace(partial, target)
        for name in ("control", "tick"):
            _fifo(os.path.join(directory, name), perm & 0o666)
        for name in ("req", "image-env"):
            path = os.path.join(directory, name)
            os.makedirs(path, exist_ok=True)
            os.chmod(path, perm)
    except OSError as exc:
        raise KubemrError(f"cannot prepare the exchange directory {directory}: {exc}") from exc


def wait_ready(directory: str, timeout: float) -> None:
    """Wait until the executor listens on `directory/control`; KubemrError after `timeout` s."""
    deadline = time.monotonic() + timeout
    control = os.path.join(directory, "control")
    ready = os.path.join(directory, "ready")
    delay = 0.01
    while not (os.path.exists(ready) and listening(control)):
        if time.monotonic() >= deadline:
            raise KubemrError(
                f"the executor in the user's container did not start within {timeout:g}s: "
                f"its container must run `sh {directory}/executor.sh {directory}` "
                "(and its image must have /bin/sh)"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def image_commands(directory: str) -> dict[str, str]:
    """The KUBEMR_MAP/COMBINE/REDUCE values set in the user's container, by name."""
    found: dict[str, str] = {}
    for name in IMAGE_COMMANDS:
        try:
            with open(os.path.join(directory, "image-env", name), "rb") as f:
                found[name] = os.fsdecode(f.read())
        except FileNotFoundError:
            pass
    return found


def tell_exit(directory: str, code: int) -> None:
    """Ask the executor to stop its commands and exit with `code` (nothing if it is gone)."""
    tell(os.path.join(directory, "control"), f"exit {code & 0xFF}\n")


def kill_all(directory: str) -> None:
    """SIGKILL every command that started and has no exit code (left by a crashed shim)."""
    control = os.path.join(directory, "control")
    req = os.path.join(directory, "req")
    try:
        ids = os.listdir(req)
    except FileNotFoundError:
        return
    for rid in ids:
        path = os.path.join(req, rid)
        try:
            started = os.path.getsize(os.path.join(path, "pid")) > 0
        except OSError:
            continue
        if started and not os.path.exists(os.path.join(path, "code")):
            tell(control, f"kill {rid} KILL\n")


def bridge_argv(directory: str, cwd: str, command: str, env: Mapping[str, str]) -> list[str]:
    """argv that runs `command` in the user's container, standing in for `sh -c command`."""
    bad = [name for name in env if not is_name(name)]
    if bad:
        raise KubemrError(
            f"cannot pass the variable {bad[0]!r} to a command in the user's container: "
            "a shell variable name is letters, digits and _"
        )
    pairs = [f"{name}={value}" for name, value in env.items()]
    return [sys.executable, "-I", "-S", BRIDGE, directory, cwd, command, *pairs]
