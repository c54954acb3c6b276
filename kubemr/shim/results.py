"""Where a task's command writes its result: the file itself, or a compressor in front of it.

With `spec.outputCompression` (Hadoop's mapreduce.output.fileoutputformat.compress with
GzipCodec or ZStandardCodec), a reduce task's result, or a map-only job's, is written as
`part-r-00000.gz` or `.zst`: the command writes into a pipe and a thread compresses what it
reads into the file. The compressed bytes depend on the result's bytes alone (gzip with no
name and a zero time, zstd in one thread), so an attempt run again writes the same file.
"""

from __future__ import annotations

import gzip
import subprocess
import threading
from typing import IO, Any

import zstandard

from kubemr.shim.attempt import Failure
from kubemr.shim.process import Proc

CHUNK = 1024 * 1024
GZIP_LEVEL = 6
ZSTD_LEVEL = 3


class ResultFile:
    """The local file a task's result goes to; `stdout` is what its command writes to. Call
    `started` with the command once it runs: then `thread`, if any, must be waited for."""

    def __init__(self, path: str, codec: str, failure: Failure) -> None:
        self.codec = codec
        self.failure = failure
        self.thread: threading.Thread | None = None
        self._file: IO[bytes] | None = open(path, "wb")  # noqa: SIM115 - see started()

    @property
    def stdout(self) -> Any:
        return self._file if self.codec == "none" else subprocess.PIPE

    def started(self, proc: Proc) -> None:
        """The command writes to it now: close this process's copy of the file, or start the
        thread that compresses what it writes."""
        assert self._file is not None
        out, self._file = self._file, None
        if self.codec == "none":
            out.close()
            return
        assert proc.popen.stdout is not None
        self.thread = threading.Thread(
            target=self._compress, args=(proc.popen.stdout, out), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        """If the command never started, the file is closed here."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _compress(self, src: IO[bytes], dst: IO[bytes]) -> None:
        try:
            with dst, src:
                writer: Any
                if self.codec == "gzip":
                    writer = gzip.GzipFile("", "wb", GZIP_LEVEL, dst, mtime=0)
                else:
                    writer = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(
                        dst, closefd=False
                    )
                with writer:
                    while chunk := src.read(CHUNK):
                        writer.write(chunk)
        except BaseException as exc:
            self.failure.record(exc)
