"""Command line of the devcluster node agent (run by ``hack/devcluster up``)."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from . import logserver
from .api import Api
from .node import Agent, Config
from .sandbox import ImageError, Images, build_busybox_rootfs


def parse(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(prog="nodeagent", description=__doc__)
    p.add_argument("--server", required=True, help="https://127.0.0.1:PORT")
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--serving-cert", required=True)
    p.add_argument("--serving-key", required=True)
    p.add_argument("--node-name", default="devcluster")
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--kubelet-port", required=True, type=int)
    p.add_argument("--busybox", default="/bin/busybox", type=Path)
    p.add_argument("--rootfs-dir", required=True, type=Path)
    p.add_argument("--project-root", required=True, type=Path)
    a = p.parse_args(argv)
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        p.error("bwrap not found: install Debian's bubblewrap (apt-get install bubblewrap)")
    try:
        rootfs = build_busybox_rootfs(a.busybox, a.rootfs_dir / "busybox")
    except ImageError as e:
        p.error(str(e))
    return Config(
        server=a.server,
        ca=a.ca,
        cert=a.cert,
        key=a.key,
        serving_cert=a.serving_cert,
        serving_key=a.serving_key,
        node_name=a.node_name,
        state_dir=a.state_dir,
        kubelet_port=a.kubelet_port,
        busybox_rootfs=rootfs,
        project_root=a.project_root,
        bwrap=bwrap,
    )


def main(argv: list[str]) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = parse(argv)
    api = Api(cfg.server, cfg.ca, cfg.cert, cfg.key)
    images = Images(cfg.busybox_rootfs, cfg.project_root, cfg.state_dir)
    agent = Agent(cfg, api, images)
    logserver.serve(agent, cfg.kubelet_port, cfg.serving_cert, cfg.serving_key, cfg.ca)
    agent.run()


if __name__ == "__main__":
    main(sys.argv[1:])
