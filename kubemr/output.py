"""Whether a job's output can take its results: checked before anything runs.

`kubemr run` checks before it starts a worker, and planning checks again on a
cluster (where only the pods reach the storage), so a job never runs for
hours to fail when it publishes. Refused, each in one sentence: an output
that already holds results (any `part-*`, `_SUCCESS` or `_RESULTS`, as
Hadoop refuses an existing output directory), an output inside one of the
job's inputs (the next run would read these results as input), and, on this
machine's disk, an output that is a file or cannot be written.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence

from kubemr import layout
from kubemr.errors import InputError, NotFound, StorageError, TemporaryError
from kubemr.storage.base import Storage
from kubemr.storage.local import file_path

#: What a job's output holds once it has results.
RESULT_NAMES = (layout.SUCCESS, layout.RESULTS)


def results_in(storage: Storage, output: str) -> list[str]:
    """The names of results already in `output` (its top level only), sorted."""
    base = output if output.endswith("/") else output + "/"
    try:
        found = storage.list(base)
    except NotFound:
        return []
    names = {info.url[len(base) :] for info in found if info.url.startswith(base)}
    return sorted(n for n in names if "/" not in n and (n.startswith("part-") or n in RESULT_NAMES))


def inside(url: str, container: str) -> bool:
    """Whether `url` lies in (or is) the directory or prefix `container`."""
    a = url if url.endswith("/") else url + "/"
    b = container if container.endswith("/") else container + "/"
    return a.startswith(b)


def check_output(
    output: str, inputs: Sequence[str], storage_for: Callable[[str], Storage], hint: str
) -> None:
    """Raise InputError (exit code 2) if `output` cannot take the job's results; `hint`
    says how to choose another output (`give another --output`). Storage that is briefly
    away raises its TemporaryError, to be tried again."""
    try:
        _check(output, inputs, storage_for, hint)
    except TemporaryError:
        raise
    except StorageError as exc:  # no such bucket, no credentials, a malformed URL
        raise InputError(f"the output {output} cannot be used: {_sentence(exc)}; {hint}.") from exc


def _sentence(exc: Exception) -> str:
    text = str(exc).strip().rstrip(".")
    return text[:1].lower() + text[1:]


def _check(
    output: str, inputs: Sequence[str], storage_for: Callable[[str], Storage], hint: str
) -> None:
    for item in inputs:
        if "://" in item and inside(output, item):
            raise InputError(
                f"the output {output} lies inside the input {item}, so a later run would read "
                f"these results as its input; {hint} outside the inputs."
            )
    if output.startswith("file://"):
        _check_writable(file_path(output), output, hint)
    found = results_in(storage_for(output), output)
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise InputError(
            f"the output {output} already holds results ({shown}); remove them or {hint}."
        )


def _check_writable(path: str, output: str, hint: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"the output {output} is a file, not a directory; {hint}.")
    probe = os.path.join(path, f".kubemr-probe-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise InputError(
            f"the output {output} cannot be written: {exc.strerror or exc}; {hint}."
        ) from exc
