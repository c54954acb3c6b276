"""Sidecar mode, kubemr's side: meet the executor in the user's container, then let it go.

In sidecar mode a worker pod runs the user's image with kubemr's POSIX-sh
executor in it, and this shim beside it (`exchange` describes the handshake
between the two). Before it takes a task the shim waits until the executor
is listening, stops commands that an earlier, crashed shim of the same pod
left running, and takes the image's own KUBEMR_MAP/KUBEMR_COMBINE/KUBEMR_REDUCE
(which only the user's container can see). When the job is over it tells the
executor to exit with the shim's own exit code, so that the user's container
ends, and with it the pod and the Job.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from kubemr.errors import KubemrError
from kubemr.shim import exchange
from kubemr.shim.config import ShimConfig

log = logging.getLogger("kubemr.shim")

#: How long a new pod may take to start the user's container (pulling its image, say).
READY_TIMEOUT = 600.0


def prepare(config: ShimConfig, timeout: float = READY_TIMEOUT) -> ShimConfig:
    """Wait for the executor and return the configuration with the image's commands."""
    directory = config.executor
    assert directory is not None
    exchange.wait_ready(directory, timeout)
    exchange.kill_all(directory)
    image = exchange.image_commands(directory)
    return dataclasses.replace(
        config,
        map_command=config.map_command or image.get("KUBEMR_MAP"),
        combine_command=config.combine_command or image.get("KUBEMR_COMBINE"),
        reduce_command=config.reduce_command or image.get("KUBEMR_REDUCE"),
    )


def finish(config: ShimConfig, code: int, stopping: threading.Event) -> None:
    """Tell the executor to exit with `code`; then wait a while for the pod to stop us."""
    directory = config.executor
    assert directory is not None
    try:
        exchange.tell_exit(directory, code)
    except (KubemrError, OSError) as exc:
        log.warning("could not tell the executor to exit: %s", exc)
        return
    if config.linger_seconds and not stopping.is_set():
        stopping.wait(config.linger_seconds)
