"""Streaming map outputs into a reduce task's merge, with nothing staged on disk.

A reduce task merges one sorted segment of every map task with one `sort -m`. Segments that
are plain local files are named to it as they are. Each of the others (a range of an object
in S3, a compressed file, a range of what was read ahead into the spool) gets a FIFO, in
/dev/shm when there is one, which a thread fills with the segment's bytes, decompressed, as
the merge reads them.

GNU sort merges at most `--batch-size` inputs at once, opening them in the order it was given
them, each batch whole before it reads any, and merging batch after batch into temporary
files when there are more. So the threads are exactly as many as the batch, and take the
FIFOs in that order: every FIFO of the batch being merged has a writer, and a writer waiting
for a later batch blocks in open(), not in write(). Nothing can deadlock, and at most a batch
of streams is open at a time, however many map tasks there are.

A dropped connection is resumed where it broke (a new ranged GET from the next byte; the
decompressor goes on where it was), up to `RETRIES` times. A segment that cannot be read,
or that decodes to another size than its index says, fails the attempt: the merge is killed
at once, so the reduce command never sees a clean end of a partial input go unnoticed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, cast

import zstandard

from kubemr.errors import StorageError, TemporaryStorageError
from kubemr.shim.attempt import Failure
from kubemr.shuffle import ZSTD, Kept, Segment, Spool
from kubemr.storage.base import Storage

BATCH = 256
"""Inputs `sort -m` merges at once (its --batch-size), and so the threads streaming them."""
CHUNK = 1024 * 1024
RETRIES = 4
PIPE_BYTES = 1024 * 1024
SHM = "/dev/shm"


def merge_batch() -> int:
    """How many inputs one `sort -m` merges at once: BATCH, or fewer under a low limit of open
    files (the merge holds one per input, this process two per feeding thread)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return BATCH
    return max(2, min(BATCH, (soft - 64) // 3))


class _FdWriter:
    """A write-only file object over a FIFO's descriptor, writing everything it is given."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0

    def write(self, data: bytes | memoryview, /) -> int:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Feed:
    """The merge inputs of one reduce attempt: `paths`, in order, for `sort -m`; call `start`
    once the merge runs, `close` once it has ended (or failed), then `failure.raise_if_any`."""

    def __init__(
        self,
        storage: Callable[[str], Storage],
        segments: Sequence[Segment],
        directory: str,
        batch: int | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.batch = batch or merge_batch()
        self.failure = Failure()
        self.paths: list[str] = []
        self._storage = storage
        self._spool = spool
        self._streams: list[tuple[str, Segment]] = []
        self._spent = [seg.url.removeprefix("file://") for seg in segments if seg.last_of_spool]
        self._fifos: str | None = None
        for i, seg in enumerate(segments):
            if seg.path is not None:
                self.paths.append(seg.path)
                continue
            if self._fifos is None:
                self._fifos = _fifo_directory(directory)
            fifo = os.path.join(self._fifos, f"{i:06d}")
            os.mkfifo(fifo, 0o600)
            self.paths.append(fifo)
            self._streams.append((fifo, seg))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending = {fifo for fifo, _ in self._streams}  # not yet done by their writer
        self._pool: ThreadPoolExecutor | None = None
        self._on_failure: Callable[[], None] = lambda: None

    def start(self, on_failure: Callable[[], None]) -> None:
        """Start the writers; `on_failure` is called (from a writer) if a segment fails, to stop
        the merge."""
        self._on_failure = on_failure
        if not self._streams:
            return
        self._pool = ThreadPoolExecutor(min(self.batch, len(self._streams)), "feed")
        for fifo, seg in self._streams:
            self._pool.submit(self._send, fifo, seg)

    def close(self) -> None:
        """Stop every writer and wait for them: those waiting for a reader are released by
        opening their FIFO here (the merge has ended: nobody else will). Spool files whose
        last segment this merge read are removed."""
        self._stop.set()
        if self._pool is not None:
            while True:
                with self._lock:
                    waiting = list(self._pending)
                if not waiting:
                    break
                for fifo in waiting:
                    with contextlib.suppress(OSError):
                        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
                time.sleep(0.005)
            self._pool.shutdown(wait=True)
        for path in self._spent:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if self._fifos is not None:
            shutil.rmtree(self._fifos, ignore_errors=True)

    def _send(self, fifo: str, seg: Segment) -> None:
        try:
            if self._stop.is_set():
                return
            out = _FdWriter(os.open(fifo, os.O_WRONLY))  # waits for the merge to open it
            if seg.size < 0 or seg.size > PIPE_BYTES:
                with contextlib.suppress(OSError):  # fewer wake-ups than 64 KiB at a time
                    fcntl.fcntl(out.fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            try:
                if not self._stop.is_set():
                    _stream(self._storage(seg.url), seg, out, self._spool)
            finally:
                out.close()
        except BrokenPipeError:
            pass  # the merge stopped reading: its own exit status says whether that is an error
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                self._fail(exc)
        except BaseException as exc:
            self._fail(exc)
        finally:
            with self._lock:
                self._pending.discard(fifo)

    def _fail(self, exc: BaseException) -> None:
        if self._stop.is_set():
            return
        self.failure.record(exc)
        self._on_failure()


def _decoder(codec: str, out: IO[bytes]) -> IO[bytes]:
    """A writer that decodes what it is given into `out` (writing it all before returning)."""
    if codec != ZSTD:
        return out
    writer = zstandard.ZstdDecompressor().stream_writer(out, write_size=CHUNK, closefd=False)
    return cast("IO[bytes]", writer)


def _fifo_directory(fallback: str) -> str:
    """A new directory for FIFOs: in /dev/shm when there is one (creating a file in memory
    takes microseconds, on a disk it may take a millisecond), else `fallback`."""
    with contextlib.suppress(OSError):
        return tempfile.mkdtemp(prefix="kubemr-feed-", dir=SHM)
    os.makedirs(fallback, exist_ok=True)
    return tempfile.mkdtemp(prefix="feed-", dir=fallback)


class _Route:
    """Where the bytes of one read go, by their offset in the object: the segment's own to
    the merge, decoded (closing its FIFO as soon as they are all there), the rest, as they
    are, into one spool file."""

    def __init__(self, seg: Segment, out: _FdWriter, spool: Spool | None) -> None:
        self.seg = seg
        self.out = out
        self.spool = spool
        self.sink = _decoder(seg.codec, cast("IO[bytes]", out))
        self.file: IO[bytes] | None = None
        self.main = seg.end is None or seg.start < seg.end

    def write(self, pos: int, data: bytes) -> None:
        view = memoryview(data)
        if self.main:
            end = self.seg.end
            take = view if end is None else view[: end - pos]
            self.sink.write(take)
            if end is not None and pos + len(take) == end:
                self.end_main()
            view = view[len(take) :]
        ahead = self.seg.ahead
        if view and ahead is not None:
            if self.file is None:
                self.file = open(ahead.path + ".partial", "wb")  # noqa: SIM115 - see end()
            self.file.write(view)

    def end_main(self) -> None:
        """The segment's own bytes are all written: check them and let the merge go on."""
        self.main = False
        seg = self.seg
        _check(seg.url, seg.start, seg.end, self.out.written, seg.size)
        self.out.close()

    def end(self) -> None:
        """The whole read is done: what was read ahead counts from now on."""
        if self.main:
            self.end_main()
        ahead, seg = self.seg.ahead, self.seg
        if self.file is not None and ahead is not None and self.spool is not None:
            self.file.close()
            self.file = None
            os.replace(ahead.path + ".partial", ahead.path)
            assert seg.end is not None
            self.spool.keep(seg.url, Kept(ahead.path, seg.end, ahead.end, ahead.last))

    def abandon(self) -> None:
        if self.file is not None:
            self.file.close()
            os.unlink(self.file.name)
            self.file = None


def _check(url: str, start: int, end: int | None, got: int, size: int) -> None:
    if size >= 0 and got != size:
        raise StorageError(
            f"bytes {start}-{end} of {url} decode to {got} bytes, not the {size} its index "
            "records: the map output is damaged."
        )


def _stream(storage: Storage, seg: Segment, out: _FdWriter, spool: Spool | None) -> None:
    """Write segment `seg`, decoded, to `out`, and what it reads ahead to the spool; resume a
    broken read where it stopped."""
    route = _Route(seg, out, spool)
    end = seg.ahead.end if seg.ahead is not None else seg.end
    pos = seg.start
    tries = 0
    try:
        while end is None or pos < end:
            try:
                with storage.open_read(seg.url, pos, end) as src:
                    while chunk := src.read(CHUNK if end is None else min(CHUNK, end - pos)):
                        route.write(pos, chunk)
                        pos += len(chunk)
                if end is None or pos >= end:
                    break
                raise TemporaryStorageError(f"{seg.url} ended at byte {pos}, before byte {end}")
            except TemporaryStorageError:
                tries += 1
                if tries > RETRIES:
                    raise
                time.sleep(0.2 * 2**tries)
        route.end()
    finally:
        route.abandon()
