"""What file:// storage promises beyond the shared contract: renames, links, no escapes."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from kubemr.errors import NotFound, StorageError
from kubemr.storage import storage_for, to_url
from kubemr.storage.local import TEMP_PREFIX, LocalStorage


@pytest.fixture
def local() -> LocalStorage:
    storage = storage_for("file:///")
    assert isinstance(storage, LocalStorage)
    return storage


def url_of(path: Path) -> str:
    return to_url(str(path), "/")


def test_in_flight_temporary_files_are_not_listed(local: LocalStorage, tmp_path: Path) -> None:
    (tmp_path / "part-00000").write_bytes(b"done")
    (tmp_path / f"{TEMP_PREFIX}part-00001.abc123").write_bytes(b"half writ")
    assert [info.url for info in local.list(url_of(tmp_path))] == [url_of(tmp_path / "part-00000")]


def test_a_failed_write_leaves_nothing_behind(local: LocalStorage, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "inside").write_bytes(b"x")
    with pytest.raises(StorageError, match="taken"):
        local.put_bytes(b"data", url_of(tmp_path / "taken"))
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_put_file_moves_the_file_on_the_same_filesystem(
    local: LocalStorage, tmp_path: Path
) -> None:
    source = tmp_path / "spill"
    source.write_bytes(b"sorted run")
    inode = source.stat().st_ino
    dst = tmp_path / "out" / "deep" / "run-0"
    local.put_file(str(source), url_of(dst))
    assert not source.exists()
    assert dst.stat().st_ino == inode
    assert dst.read_bytes() == b"sorted run"


def test_put_file_copies_across_filesystems(local: LocalStorage, tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the temp dir")
    source = tmp_path / "spill"
    source.write_bytes(b"sorted run")
    dst = other / f"kubemr-test-{os.getpid()}" / "run-0"
    try:
        local.put_file(str(source), url_of(dst))
        assert dst.read_bytes() == b"sorted run"
        assert [name for name in os.listdir(dst.parent)] == ["run-0"]
    finally:
        local.delete_prefix(url_of(dst.parent))
    assert not dst.parent.exists()


def test_copy_uses_a_hard_link(local: LocalStorage, tmp_path: Path) -> None:
    src = tmp_path / "attempt" / "part"
    src.parent.mkdir()
    src.write_bytes(b"result")
    dst = tmp_path / "final" / "part-00000"
    local.copy(url_of(src), url_of(dst))
    assert dst.stat().st_ino == src.stat().st_ino
    local.copy(url_of(src), url_of(dst))
    assert dst.read_bytes() == b"result"
    assert sorted(os.listdir(dst.parent)) == ["part-00000"]


def test_new_files_follow_the_umask(local: LocalStorage, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        local.put_bytes(b"x", url_of(tmp_path / "f"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


@pytest.mark.parametrize(
    "url", ["file:///tmp/a/../../etc/passwd", "file://relative/path", "file:///tmp/.."]
)
def test_urls_that_could_escape_are_refused(local: LocalStorage, url: str) -> None:
    with pytest.raises(StorageError):
        local.put_bytes(b"x", url)
    with pytest.raises(StorageError):
        local.delete_prefix(url)


def test_deleting_the_root_is_refused(local: LocalStorage) -> None:
    with pytest.raises(StorageError, match="root"):
        local.delete_prefix("file:///")


def test_a_directory_is_not_an_object(local: LocalStorage, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(NotFound, match="directory"):
        local.stat(url_of(tmp_path / "dir"))
    with pytest.raises(NotFound):
        local.list(url_of(tmp_path / "dir"))  # exists, but holds no files
    assert not local.exists(url_of(tmp_path / "dir"))


def as_nobody(action: Callable[[], object]) -> str:
    """What `action` raised (as StorageError), or "it succeeded", run as user nobody.

    Root reads anything, so the action runs in a forked child that became user nobody (a
    fork needs no access to the checkout, wherever it lies)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, act, report, exit without cleanup
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            try:
                action()
                message = "it succeeded"
            except StorageError as exc:
                message = str(exc)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


def test_unreadable_files_give_one_clear_sentence(local: LocalStorage) -> None:
    folder = Path(tempfile.mkdtemp(prefix="kubemr-perm-"))
    try:
        folder.chmod(0o755)
        path = folder / "secret"
        path.write_bytes(b"x")
        path.chmod(0)
        message = as_nobody(lambda: local.get_bytes(url_of(path)))
        assert "permission denied" in message.lower(), message
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_listing_refuses_what_it_cannot_read_but_hidden_names(local: LocalStorage) -> None:
    """An unreadable subdirectory or file of an input directory would be skipped, or found
    only when a task reads it: listing says so at once. Names starting with `_` or `.` are
    skipped by every reader, so they may be unreadable."""
    folder = Path(tempfile.mkdtemp(prefix="kubemr-perm-"))
    try:
        folder.chmod(0o755)
        (folder / "ok.txt").write_text("x\n")
        for hidden in ("_logs", ".cache"):
            (folder / hidden).mkdir()
            (folder / hidden).chmod(0)
        (folder / "_secret.txt").write_text("x\n")
        (folder / "_secret.txt").chmod(0)
        url = url_of(folder) + "/"
        assert as_nobody(lambda: local.list(url)) == "it succeeded"
        (folder / "locked").mkdir()
        (folder / "locked").chmod(0)
        message = as_nobody(lambda: local.list(url))
        assert "cannot read the directory" in message and "locked" in message, message
        (folder / "locked").chmod(0o755)
        (folder / "data.txt").write_text("x\n")
        (folder / "data.txt").chmod(0)
        message = as_nobody(lambda: local.list(url))
        assert "cannot read" in message and "data.txt" in message, message
    finally:
        for p in folder.rglob("*"):
            p.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def test_local_path(local: LocalStorage, tmp_path: Path) -> None:
    assert local.local_path(url_of(tmp_path / "x")) == str(tmp_path / "x")
    assert storage_for("s3://b/k").local_path("s3://b/k") is None
