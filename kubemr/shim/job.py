"""What every task of one job shares: its spec, its commands, its storage.

Built once per worker from the job document and the shim's configuration.
Commands come from the spec, or else from the image's environment
(`KUBEMR_MAP`, `KUBEMR_COMBINE`, `KUBEMR_REDUCE`), which is how an image
wraps any binary without a line of kubemr-specific code.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubemr import layout
from kubemr.errors import SpecError
from kubemr.shim.config import ShimConfig
from kubemr.spec import JobSpec, parse_spec
from kubemr.state import Task, status_of
from kubemr.storage import storage_for
from kubemr.storage.base import Storage, StorageConfig


@dataclass(frozen=True)
class Commands:
    map: str
    combine: str | None
    reduce: str | None


def resolve_commands(spec: JobSpec, config: ShimConfig) -> Commands:
    """The job's commands. A spec with `map` describes the whole job; without it, the image's
    KUBEMR_MAP/KUBEMR_COMBINE/KUBEMR_REDUCE fill in what the spec leaves out."""
    if spec.map:
        return Commands(spec.map, spec.combine, spec.reduce)
    if not config.map_command:
        raise SpecError("spec.map is not set and KUBEMR_MAP is not set either; give a map command.")
    reduce = spec.reduce or config.reduce_command
    combine = spec.combine or config.combine_command
    return Commands(config.map_command, combine if reduce else None, reduce)


@dataclass(frozen=True)
class Job:
    """One job as a worker sees it."""

    name: str
    uid: str
    spec: JobSpec
    commands: Commands
    config: ShimConfig

    @staticmethod
    def from_doc(doc: Mapping[str, Any], config: ShimConfig) -> Job:
        meta = doc.get("metadata") or {}
        spec = parse_spec(doc.get("spec") or {})
        commands = resolve_commands(spec, config)
        name = str(meta.get("name") or "job")
        uid = str(meta.get("uid") or name)
        return Job(name, uid, spec, commands, config)

    @property
    def storage_config(self) -> StorageConfig:
        endpoint = self.config.endpoint_override or self.spec.storage.endpoint
        return StorageConfig(endpoint=endpoint, region=self.spec.storage.region)

    def storage(self, url: str) -> Storage:
        return storage_for(url, self.storage_config)

    @property
    def output(self) -> str:
        if not self.spec.output:
            raise SpecError("spec.output is not set; give the s3:// URL where results go.")
        return self.spec.output if self.spec.output.endswith("/") else self.spec.output + "/"

    def workdir(self, doc: Mapping[str, Any]) -> str:
        """The job's workdir: recorded by planning, else what planning would choose."""
        recorded = status_of(doc).get("workdir")
        if isinstance(recorded, str):
            return recorded
        if self.config.workdir:
            return self.config.workdir.rstrip("/") + "/"
        return layout.default_workdir(self.output, self.uid)

    @property
    def partitions(self) -> int:
        return self.spec.partitions if self.commands.reduce else 0

    def task_env(self, task: Task, attempt: int, extra: Mapping[str, str]) -> dict[str, str]:
        """The environment of a user command: inherited, the spec's env, then KUBEMR_*."""
        env = dict(self.config.base_env)
        env.update(self.spec.env)
        env.update(
            {
                "KUBEMR_JOB": self.name,
                "KUBEMR_TASK": task.name,
                "KUBEMR_ATTEMPT": str(attempt),
            }
        )
        env.update(extra)
        return env

    def write_files(self, directory: str) -> None:
        """Put the job's `files` in a command's working directory, executable."""
        os.makedirs(directory, exist_ok=True)
        for name, text in self.spec.files.items():
            path = os.path.join(directory, name)
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            os.chmod(path, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
