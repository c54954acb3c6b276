"""The one small interface every data backend implements.

kubemr moves data (inputs, intermediate sorted runs, results, task logs)
through a `Storage` chosen by URL scheme (see `kubemr.storage.storage_for`).
Everything here streams: no method holds a whole object in memory except the
`*_bytes` helpers, which are for small metadata files (split lists, counters).

Writes are atomic at the destination: a reader sees either nothing or the
whole object, never a partial one (local files: write a temporary file in the
same directory, then rename; S3: a single PUT or a completed multipart upload).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its full URL and size in bytes."""

    url: str
    size: int


@dataclass(frozen=True)
class StorageConfig:
    """Settings from `spec.storage`; credentials come from the standard AWS environment."""

    endpoint: str | None = None
    region: str | None = None


class Storage(ABC):
    """A place where data lives, addressed by URL."""

    @abstractmethod
    def stat(self, url: str) -> ObjectInfo:
        """Size of one object; raises NotFound if it does not exist."""

    @abstractmethod
    def list(self, url: str) -> list[ObjectInfo]:
        """Every object under `url` taken as a directory/prefix, recursively, sorted by URL.

        A URL naming a single object (not a prefix) lists just that object.
        Raises NotFound when nothing exists there.
        """

    @abstractmethod
    def open_read(self, url: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """A stream of the raw bytes [start, end) of one object (to its end when `end` is None)."""

    @abstractmethod
    def put_file(self, path: str, url: str) -> None:
        """Store the local file `path` at `url`, atomically.

        The local file may be consumed (moved into place) when that is cheaper.
        """

    @abstractmethod
    def put_bytes(self, data: bytes, url: str) -> None:
        """Store a small object atomically."""

    @abstractmethod
    def get_bytes(self, url: str) -> bytes:
        """Read a small object whole; raises NotFound."""

    @abstractmethod
    def copy(self, src: str, dst: str) -> None:
        """Copy one object within this storage, atomically at `dst`; repeating it is harmless."""

    @abstractmethod
    def exists(self, url: str) -> bool:
        """Whether one object exists at `url`."""

    @abstractmethod
    def delete_prefix(self, url: str) -> None:
        """Delete every object under `url`; deleting nothing is not an error."""

    def local_path(self, url: str) -> str | None:
        """The local filesystem path of `url`, when this storage is the local disk."""
        return None
