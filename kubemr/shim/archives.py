"""A job's archives (spec.archives): fetched and unpacked once per worker, linked into every
command directory.

Hadoop's `-archives` and mrjob's `--archives`: a `.tar.gz`, `.tgz`, `.tar` or `.zip` from
S3, http(s) or the local disk holds what does not fit in `files` (a binary, a model, a
dictionary). The first task of a worker that needs them reads each archive once and unpacks
it under the worker's scratch directory (into a temporary directory renamed into place, so
a worker that dies half-way leaves nothing that looks complete); every command directory
then gets a symbolic link, named as the archive says, to the unpacked directory. Members
that would land outside it (absolute names, `..`, links pointing out, devices) make the
archive refused, never written.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable

from kubemr.errors import TaskFailed
from kubemr.spec import scheme_of
from kubemr.storage.base import Storage

CHUNK = 1024 * 1024
HTTP_TIMEOUT = 60.0


class Archives:
    """The unpacked archives of one worker's job, under `root`."""

    def __init__(self, root: str, archives: tuple[tuple[str, str], ...]) -> None:
        self.root = root
        self.archives = archives
        self._lock = threading.Lock()
        self._ready: dict[str, str] = {}

    def link_into(self, directory: str, storage: Callable[[str], Storage]) -> None:
        """Make `directory/NAME` a link to each archive, unpacking those not yet here."""
        for where, name in self.archives:
            os.symlink(self._unpacked(where, name, storage), os.path.join(directory, name))

    def _unpacked(self, where: str, name: str, storage: Callable[[str], Storage]) -> str:
        with self._lock:
            found = self._ready.get(name)
            if found is not None:
                return found
            target = os.path.join(self.root, name)
            if not os.path.isdir(target):  # another worker of this scratch may have it
                os.makedirs(self.root, exist_ok=True)
                partial = tempfile.mkdtemp(prefix=f".{name}-", dir=self.root)
                try:
                    download = os.path.join(partial, ".download")
                    _fetch(where, download, storage)
                    tree = os.path.join(partial, "tree")
                    _unpack(where, download, tree)
                    os.unlink(download)
                    os.rename(tree, target)
                finally:
                    shutil.rmtree(partial, ignore_errors=True)
            self._ready[name] = target
            return target


def _fetch(where: str, path: str, storage: Callable[[str], Storage]) -> None:
    """Copy the archive at `where` to the local file `path`."""
    try:
        if scheme_of(where) in ("http", "https"):
            with urllib.request.urlopen(where, timeout=HTTP_TIMEOUT) as src, open(path, "wb") as f:
                shutil.copyfileobj(src, f, CHUNK)
            return
        with storage(where).open_read(where) as src, open(path, "wb") as f:
            shutil.copyfileobj(src, f, CHUNK)
    except urllib.error.HTTPError as exc:
        raise TaskFailed(
            f"archive {where} cannot be fetched: HTTP {exc.code} {exc.reason}"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise TaskFailed(f"archive {where} cannot be fetched: {why}") from exc


def _unpack(where: str, path: str, tree: str) -> None:
    """Unpack the archive file `path` (named `where`) into the new directory `tree`."""
    os.makedirs(tree)
    try:
        if where.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    _inside(where, tree, info.filename)
                z.extractall(tree)
                for info in z.infolist():  # zipfile keeps no permissions: executables stay so
                    mode = (info.external_attr >> 16) & 0o777
                    if mode & 0o111 and not info.is_dir():
                        os.chmod(os.path.join(tree, info.filename), mode)
            return
        with tarfile.open(path, "r:*") as t:
            members = t.getmembers()
            for m in members:
                _inside(where, tree, m.name)
                if m.issym() or m.islnk():
                    base = os.path.dirname(m.name) if m.issym() else ""
                    _inside(where, tree, os.path.join(base, m.linkname), what="a link to")
                elif not (m.isfile() or m.isdir()):
                    raise TaskFailed(f"archive {where} holds {m.name}, which is not a file")
            if hasattr(tarfile, "data_filter"):  # refuses what the checks above do, and more
                t.extractall(tree, members, filter="data")
            else:
                t.extractall(tree, members)  # every member was checked above
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise TaskFailed(f"archive {where} cannot be unpacked: {exc}") from exc


def _inside(where: str, tree: str, name: str, what: str = "") -> None:
    """Refuse a member name (or link target) that would land outside `tree`."""
    root = os.path.realpath(tree)
    full = os.path.realpath(os.path.join(tree, name))
    if os.path.isabs(name) or not (full == root or full.startswith(root + os.sep)):
        said = f"{what} {name}".strip()
        raise TaskFailed(
            f"archive {where} holds {said}, outside the directory it unpacks into; refused"
        )
