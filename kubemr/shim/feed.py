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

When the streamed segments are small (many partitions: a few KiB each), a FIFO and a thread
apiece would cost more than the bytes: the feed then concatenates them into one FIFO instead,
each segment fetched whole (by a few threads at once, in any order) and written in one piece,
and the reduce task sorts its input rather than merging it (`merged` is False). That gives
the same bytes: the order sorts by (key, then the whole line bytewise) is total, so lines
that compare equal are the same bytes, and any arrangement of them sorts to one result.

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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, cast

import zstandard

from kubemr.errors import StorageError, TemporaryStorageError
from kubemr.shim.attempt import Failure
from kubemr.shuffle import ZSTD, Kept, Segment, Spool
from kubemr.storage.base import Storage

BATCH = 256
"""Inputs `sort -m` merges at once (its --batch-size), and so the threads streaming them."""
SMALL_SEGMENTS = 32 * 1024
"""Mean decoded size of the streamed segments at or below which they are concatenated and
sorted (bench/shuffle.py: a FIFO and its thread cost about what sorting 20 KiB does)."""
LARGEST_CONCATENATED = 1024 * 1024
"""No segment larger than this is concatenated (each is held whole while it waits its turn)."""
CONCAT_THREADS = 16
"""Segments fetched at once when they are concatenated."""
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


class _Buffer:
    """A segment's decoded bytes, held whole until they can be written into the shared FIFO;
    writing to it raises BrokenPipeError once the feed stops (nobody will read them)."""

    def __init__(self, stop: threading.Event) -> None:
        self.parts: list[bytes] = []
        self.written = 0
        self._stop = stop

    def write(self, data: bytes | memoryview, /) -> int:
        if self._stop.is_set():
            raise BrokenPipeError(errno.EPIPE, "the feed stopped")
        self.parts.append(bytes(data))
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def concatenates(segments: Sequence[Segment]) -> bool:
    """Whether these streamed segments go into one FIFO, to be sorted (see the module's
    docstring): more than one, every size known, none large, small on average."""
    sizes = [seg.size for seg in segments]
    return (
        len(sizes) > 1
        and min(sizes) >= 0
        and max(sizes) <= LARGEST_CONCATENATED
        and sum(sizes) <= SMALL_SEGMENTS * len(sizes)
    )


class Feed:
    """The inputs of one reduce attempt: `paths`, in order, for `sort -m` when `merged`, else
    for `sort`; call `start` once the merge runs, `close` once it has ended (or failed), then
    `failure.raise_if_any`."""

    def __init__(
        self,
        storage: Callable[[str], Storage],
        segments: Sequence[Segment],
        directory: str,
        batch: int | None = None,
        spool: Spool | None = None,
        concatenate: bool | None = None,
    ) -> None:
        """`concatenate`: whether the streamed segments go into one FIFO, to be sorted; None
        (as reduce tasks do): when `concatenates` says so."""
        self.batch = batch or merge_batch()
        self.failure = Failure()
        self.paths: list[str] = []
        self._storage = storage
        self._spool = spool
        self._streams: list[tuple[str, Segment]] = []
        self._spent = [seg.url.removeprefix("file://") for seg in segments if seg.last_of_spool]
        self._fifos: str | None = None
        streamed = [seg for seg in segments if seg.path is None]
        #: Whether the inputs are sorted runs for `sort -m`, or must be sorted (concatenated).
        self.merged = not (concatenates(streamed) if concatenate is None else concatenate)
        for i, seg in enumerate(segments):
            if seg.path is not None:
                self.paths.append(seg.path)
                continue
            if self._fifos is None:
                self._fifos = _fifo_directory(directory)
            fifo = os.path.join(self._fifos, f"{i if self.merged else 0:06d}")
            if self.merged or not self._streams:
                os.mkfifo(fifo, 0o600)
                self.paths.append(fifo)
            self._streams.append((fifo, seg))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending = {fifo for fifo, _ in self._streams}  # not yet done by their writer
        self._out: _FdWriter | None = None  # the one FIFO, when concatenating
        self._left = len(self._streams)  # segments not yet done, when concatenating
        self._out_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._on_failure: Callable[[], None] = lambda: None

    def start(self, on_failure: Callable[[], None]) -> None:
        """Start the writers; `on_failure` is called (from a writer) if a segment fails, to stop
        the merge."""
        self._on_failure = on_failure
        if not self._streams:
            return
        if self.merged:
            self._pool = ThreadPoolExecutor(min(self.batch, len(self._streams)), "feed")
            for fifo, seg in self._streams:
                self._pool.submit(self._send, fifo, seg)
            return
        # Concatenating: reads of local files (the spool) have no waits that threads would
        # overlap, so one thread does them all; remote ones are spread over a few more.
        remote = [(f, seg) for f, seg in self._streams if _remote(seg)]
        local = [(f, seg) for f, seg in self._streams if not _remote(seg)]
        self._pool = ThreadPoolExecutor(min(CONCAT_THREADS, 1 + len(remote)), "feed")
        if local:
            self._pool.submit(self._send_pieces, local)
        for fifo, seg in remote:
            self._pool.submit(self._send_piece, fifo, seg)

    def _send_pieces(self, streams: Sequence[tuple[str, Segment]]) -> None:
        for fifo, seg in streams:
            self._send_piece(fifo, seg)

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
            with self._reporting():
                if self._stop.is_set():
                    return
                out = _open_fifo(fifo, grow=seg.size < 0 or seg.size > PIPE_BYTES)
                try:
                    if not self._stop.is_set():
                        _stream(self._storage(seg.url), seg, out, self._spool)
                finally:
                    out.close()
        finally:
            with self._lock:
                self._pending.discard(fifo)

    def _send_piece(self, fifo: str, seg: Segment) -> None:
        """Fetch one segment whole, then write it into the shared FIFO in one piece; the last
        segment done closes the FIFO (after opening it, if nothing was written: the sort waits
        for its end)."""
        try:
            with self._reporting():
                if self._stop.is_set():
                    return
                storage = self._storage(seg.url)
                path = storage.local_path(seg.url) if seg.ahead is None else None
                if path is not None and seg.end is not None:
                    parts = [_read_local(path, seg)]  # the spool: no stream, one read
                else:
                    buffer = _Buffer(self._stop)
                    _stream(storage, seg, buffer, self._spool)
                    parts = buffer.parts
                with self._out_lock:
                    if self._stop.is_set():
                        return
                    out = self._open_shared(fifo)
                    for part in parts:
                        out.write(part)
        finally:
            with self._out_lock:
                self._left -= 1
                last = self._left == 0
                if last:
                    with contextlib.suppress(OSError):
                        if not self._stop.is_set():
                            self._open_shared(fifo)
                    if self._out is not None:
                        self._out.close()
            if last:
                with self._lock:
                    self._pending.discard(fifo)

    def _open_shared(self, fifo: str) -> _FdWriter:
        if self._out is None:
            self._out = _open_fifo(fifo, grow=True)
        return self._out

    @contextlib.contextmanager
    def _reporting(self) -> Iterator[None]:
        """Record what fails a writer (which stops the sort). A reader that stopped reading is
        no failure of the feed: the sort's own exit status says whether that is an error."""
        try:
            yield
        except BrokenPipeError:
            pass
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                self._fail(exc)
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._stop.is_set():
            return
        self.failure.record(exc)
        self._on_failure()


def _open_fifo(fifo: str, grow: bool) -> _FdWriter:
    """`fifo` opened for writing (which waits for the sort to open it); with `grow`, its pipe
    buffer raised to PIPE_BYTES, for fewer wake-ups than 64 KiB at a time."""
    out = _FdWriter(os.open(fifo, os.O_WRONLY))
    if grow:
        with contextlib.suppress(OSError):
            fcntl.fcntl(out.fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return out


_local = threading.local()


def _read_local(path: str, seg: Segment) -> bytes:
    """Segment `seg` of the local file `path`, read with one pread and decoded whole (with a
    decompressor this thread keeps: making one costs more than decoding a few KiB)."""
    assert seg.end is not None
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, seg.end - seg.start, seg.start)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"Cannot read {path}: {exc.strerror}.") from exc
    if seg.codec == ZSTD:
        dctx = getattr(_local, "dctx", None)
        if dctx is None:
            dctx = _local.dctx = zstandard.ZstdDecompressor()
        try:
            data = dctx.decompressobj(read_across_frames=True).decompress(data)
        except zstandard.ZstdError as exc:
            raise StorageError(
                f"bytes {seg.start}-{seg.end} of {seg.url} do not decode ({exc}): "
                "the map output is damaged."
            ) from exc
    _check(seg.url, seg.start, seg.end, len(data), seg.size)
    return data


def _remote(seg: Segment) -> bool:
    """Whether reading the segment waits on the network (it is not in a local file)."""
    return not seg.url.startswith("file://")


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

    def __init__(self, seg: Segment, out: _FdWriter | _Buffer, spool: Spool | None) -> None:
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


def _stream(storage: Storage, seg: Segment, out: _FdWriter | _Buffer, spool: Spool | None) -> None:
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
