"""`file://` storage: the local disk, used by local runs and for plain paths.

Writes are atomic: data goes to a temporary name in the destination's own
directory and is renamed over the destination with `os.replace`, so a reader
sees the old file, or nothing, or the whole new file. Temporary names start
with `TEMP_PREFIX`; `list` leaves out those in-flight files (they are not
objects yet) and nothing else.

A `file://` URL must be absolute and must not contain `..` components: a
write can never land outside the path it names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO

from kubemr.errors import NotFound, StorageError
from kubemr.storage.base import ObjectInfo, Storage
from kubemr.storage.streams import CHUNK, check_range, empty, window
from kubemr.storage.urls import scheme

TEMP_PREFIX = ".kubemr-tmp."
"""Files whose names start with this are writes in progress, never listed."""


def file_path(url: str) -> str:
    """The absolute local path named by a `file://` URL (trailing `/` kept)."""
    if scheme(url) != "file":
        raise StorageError(f"{url} is not a file:// URL.")
    rest = url[len("file://") :]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    if not rest.startswith("/"):
        raise StorageError(
            f"{url} is not an absolute file:// URL; write file:///absolute/path "
            "(or give a plain path)."
        )
    if ".." in rest.split("/"):
        raise StorageError(f"{url} contains '..'; give the path without it.")
    return rest


class LocalStorage(Storage):
    """Files on this machine, addressed by `file:///absolute/path` URLs."""

    def stat(self, url: str) -> ObjectInfo:
        path = _object_path(url)
        with _errors("read", url):
            info = os.stat(path)
        if not _is_file(info.st_mode):
            raise NotFound(f"{url} is a directory, not a file.")
        return ObjectInfo(url, info.st_size)

    def list(self, url: str) -> list[ObjectInfo]:
        path = file_path(url)
        if os.path.isfile(path) and not url.endswith("/"):
            return [self.stat(url)]
        if not os.path.isdir(path):
            if os.path.exists(path):
                raise StorageError(
                    f"{url} is {_kind(os.stat(path).st_mode)}, not a file or directory; inputs "
                    "are read more than once (to plan, and again on a retry), so save the data "
                    "to a file and give that."
                )
            raise NotFound(f"Nothing exists at {url}.")
        base = url if url.endswith("/") else url + "/"
        found = [
            ObjectInfo(base + relative, size) for relative, size in _walk(path.rstrip("/") or "/")
        ]
        if not found:
            raise NotFound(f"The directory {url} contains no files.")
        found.sort(key=lambda info: info.url)
        return found

    def open_read(self, url: str, start: int = 0, end: int | None = None) -> BinaryIO:
        check_range(start, end)
        path = _object_path(url)
        with _errors("read", url):
            handle = open(path, "rb")  # noqa: SIM115 -- ownership passes to the caller
        if end is not None and end <= start:
            handle.close()
            return empty()
        handle.seek(start)
        if start == 0 and end is None:
            return handle
        return window(handle, None if end is None else end - start)

    def put_file(self, path: str, url: str) -> None:
        dst = self._writable(url)
        with _errors("read", path):
            os.stat(path)
        with _errors("write", url):
            try:
                os.replace(path, dst)
                return
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            with open(path, "rb") as src:
                _write_atomically(dst, lambda out: shutil.copyfileobj(src, out, CHUNK))

    def put_bytes(self, data: bytes, url: str) -> None:
        dst = self._writable(url)
        with _errors("write", url):
            _write_atomically(dst, lambda out: out.write(data))

    def get_bytes(self, url: str) -> bytes:
        with self.open_read(url) as stream:
            return stream.read()

    def copy(self, src: str, dst: str) -> None:
        src_path = _object_path(src)
        dst_path = self._writable(dst)
        with _errors("read", src):
            if not _is_file(os.stat(src_path).st_mode):
                raise NotFound(f"{src} is a directory, not a file.")
        with contextlib.suppress(OSError):
            if os.path.samefile(src_path, dst_path):
                return  # the same file, or already a link to it
        with _errors("write", dst):
            temp = _temp_name(dst_path)
            try:
                os.link(src_path, temp)
            except OSError:
                with open(src_path, "rb") as source:
                    _write_atomically(dst_path, lambda out: shutil.copyfileobj(source, out, CHUNK))
                return
            try:
                os.replace(temp, dst_path)
            finally:
                # rename() does nothing when both names are links to one file
                # (dst was already a link to src), leaving the temporary name.
                _remove_quietly(temp)

    def exists(self, url: str) -> bool:
        return not url.endswith("/") and os.path.isfile(file_path(url))

    def delete_prefix(self, url: str) -> None:
        path = file_path(url).rstrip("/")
        if not path:
            raise StorageError(f"Refusing to delete everything under {url} (the filesystem root).")
        with _errors("delete", url):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path) and not url.endswith("/"):
                os.unlink(path)

    def local_path(self, url: str) -> str | None:
        return file_path(url)

    def _writable(self, url: str) -> str:
        """The path to write `url` to, its directory created."""
        path = file_path(url)
        if url.endswith("/"):
            raise StorageError(f"Cannot write to {url}: it ends with '/', so it names a directory.")
        with _errors("write", url):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        return path


def _object_path(url: str) -> str:
    """The path of a URL that must name one file; a URL ending in '/' names none."""
    path = file_path(url)
    if url.endswith("/"):
        raise NotFound(f"{url} names a directory (it ends with '/'), not a file.")
    return path


def _walk(root: str) -> Iterator[tuple[str, int]]:
    """(path relative to root, size) of every file under root, skipping writes in progress.

    A directory or file that cannot be read raises StorageError, so that no input is
    skipped in silence; unless its name, or a directory above it, starts with `_` or `.`:
    every reader of kubemr skips those (as Hadoop does), readable or not."""

    def unreadable(exc: OSError) -> None:
        path = str(exc.filename or root)
        if not _hidden(os.path.relpath(path, root)):
            raise StorageError(f"cannot read the directory {path}: {exc.strerror or exc}.")

    for directory, _dirs, files in os.walk(root, onerror=unreadable):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                continue
            full = os.path.join(directory, name)
            try:
                info = os.stat(full)
            except FileNotFoundError:  # deleted while walking, or a dangling link
                continue
            if _is_file(info.st_mode):
                relative = os.path.relpath(full, root)
                if not os.access(full, os.R_OK) and not _hidden(relative):
                    raise StorageError(f"cannot read {full}: permission denied.")
                yield relative, info.st_size


def _hidden(relative: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.split(os.sep) if part != ".")


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def _is_file(mode: int) -> bool:
    return stat.S_ISREG(mode)


def _temp_name(dst: str) -> str:
    directory, name = os.path.split(dst)
    return os.path.join(directory, f"{TEMP_PREFIX}{name}.{secrets.token_hex(6)}")


def _write_atomically(dst: str, write: Callable[[BinaryIO], object]) -> None:
    """Write through `write` into a temporary file next to `dst`, then rename it over `dst`."""
    temp = _temp_name(dst)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        os.replace(temp, dst)
    except BaseException:
        _remove_quietly(temp)
        raise


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


@contextlib.contextmanager
def _errors(action: str, url: str) -> Iterator[None]:
    """Translate OSError into kubemr errors that name `url`."""
    try:
        yield
    except FileNotFoundError as exc:
        raise NotFound(f"Cannot {action} {url}: no such file or directory.") from exc
    except PermissionError as exc:
        raise StorageError(f"Cannot {action} {url}: permission denied.") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StorageError(f"Cannot {action} {url}: {reason}.") from exc
