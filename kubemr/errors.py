"""The exception tree of kubemr, in one place.

Every error a user can cause ends as one sentence that names what is wrong
and what to do; the CLI prints `str(error)` and exits non-zero, the operator
puts it in `status.message`. Library errors are translated at the boundary
(`raise KubemrError(...) from exc`), so no traceback reaches a user.

    KubemrError                 anything kubemr reports to a user
    ├── SpecError               the manifest is invalid (exit code 2)
    ├── InputError              an input cannot be listed or read (exit code 2 when planning)
    ├── StorageError            reading or writing data failed
    │   └── NotFound            the object or file does not exist
    ├── StoreError              the job document could not be read or written
    │   ├── Conflict            a patch's `test` failed: lost a race, re-read and decide again
    │   ├── Refused             the store refused a patch that no retry can make pass
    │   └── JobNotFound         no such job
    ├── TaskFailed              a user command failed (exit code, timeout)
    ├── UsageError              arguments that do not make sense together (exit code 2)
    └── RunError                a local run cannot start or continue
        └── RunMismatch         the run directory holds another job (exit code 2)

`TemporaryError` is mixed into errors that are worth retrying (a lost race, a
503 from S3, a dropped connection); everything else is permanent.
"""

from __future__ import annotations


class KubemrError(Exception):
    """Base class: the message is one sentence meant for a user."""

    exit_code = 1


class TemporaryError(KubemrError):
    """Retrying the same operation later may succeed."""


class SpecError(KubemrError):
    """The MapReduceJob manifest is invalid."""

    exit_code = 2


class InputError(KubemrError):
    """An input cannot be listed or read."""

    exit_code = 2


class StorageError(KubemrError):
    """Reading or writing data failed."""


class TemporaryStorageError(StorageError, TemporaryError):
    """A storage call failed in a way that may pass on retry (throttling, 5xx, network)."""


class NotFound(StorageError):
    """The object or file does not exist."""


class StoreError(KubemrError):
    """The job document could not be read or written."""


class Conflict(StoreError, TemporaryError):
    """A patch's `test` precondition failed: another writer got there first."""


class Refused(StoreError):
    """The store refused a patch for a reason other than a lost race (it is malformed, breaks
    the schema, or would make the document too large): retrying it cannot help."""


class JobNotFound(StoreError):
    """There is no job by that name."""

    exit_code = 2


class TaskFailed(KubemrError):
    """A user command failed."""


class RunError(KubemrError):
    """A local run cannot start or continue."""


class UsageError(KubemrError):
    """A command was given arguments that do not make sense together."""

    exit_code = 2


class RunMismatch(RunError):
    """The run directory holds a run of another job (or of this one, changed)."""

    exit_code = 2
