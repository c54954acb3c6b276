"""Every Kubernetes request has a deadline: a hung apiserver costs a worker seconds, not its lease.

The server here is a real TCP listener on 127.0.0.1 that accepts connections and never
answers a byte; it stands in for a kube-apiserver (or a network path to one) that hangs,
which a real apiserver cannot be made to do on demand.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubemr.errors import TemporaryError
from kubemr.kube import Kube, KubeConfig
from kubemr.store.kube import KubeStore


@pytest.fixture
def silent_server() -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)  # kept open, never answered
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def kubeconfig(tmp_path: Path, port: int) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "hung",
                        "cluster": {
                            "server": f"https://127.0.0.1:{port}",
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "hung", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return str(path)


def test_reads_and_patches_of_a_hung_apiserver_end_at_their_deadline(
    tmp_path: Path, silent_server: int
) -> None:
    kube = Kube(KubeConfig(kubeconfig=kubeconfig(tmp_path, silent_server)), timeout=1.0)
    for call in (
        lambda: kube.get_job("ns", "j"),
        lambda: kube.patch_job_status("ns", "j", [{"op": "test", "path": "/status", "value": 1}]),
        lambda: kube.list_pods("ns", "a=b"),
        lambda: kube.get_batch_job("ns", "j"),
    ):
        started = time.monotonic()
        with pytest.raises(TemporaryError):
            call()
        assert time.monotonic() - started < 3, "a request outlived its deadline"
    kube.close()


def test_a_worker_store_gets_a_quarter_of_the_lease_as_its_deadline(
    tmp_path: Path, silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", kubeconfig(tmp_path, silent_server))
    store = KubeStore.from_url("kube://ns/j", timeout=2.0)
    assert store.kube.timeout == 2.0
    started = time.monotonic()
    with pytest.raises(TemporaryError):
        store.get()
    assert time.monotonic() - started < 5
    store.close()
