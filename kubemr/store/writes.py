"""Sending a patch of the job document until it is applied, lost to a rival, or refused.

Every write of the protocol can meet three things besides success, and each
needs its own answer:

- a lost race (`Conflict`: a `test` failed): read what won, from the watch
  rather than with a GET, back off with jitter so that racing workers spread
  out, and build the patch again from the new document, if it still makes sense;
- an unknown outcome (a timeout, a dropped connection, a 5xx: the write may
  have been applied and its answer lost): read the document again and ask
  whether it already holds this write (`applied`), so that a renewal or a
  commit recognises its own earlier write instead of taking it for a rival's;
- a refusal no retry can cure (`Refused`: the patch breaks the schema or would
  make the object too large), and a 422 whose preconditions hold when checked
  again (kube-apiserver answers a malformed patch exactly as a failed `test`):
  after a few such answers the write fails with a sentence naming the cause
  instead of retrying for ever.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import jsonpatch
import jsonpointer

from kubemr.errors import Conflict, JobNotFound, KubemrError, Refused, TemporaryError
from kubemr.store.base import Doc, Store
from kubemr.store.sqlite import as_apiserver

log = logging.getLogger("kubemr.store")

Patch = list[dict[str, Any]]
#: 422 answers in a row to a patch whose preconditions hold, before it counts as refused.
MAX_UNEXPLAINED = 4
#: Races lost in a row before a write gives up (as lost): a bound, not an expected case.
MAX_RACES = 50
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0


def preconditions_hold(doc: Doc, patch: Patch) -> bool | None:
    """Whether `patch` would apply to `doc`: True, False (a `test` fails: a lost race), or
    None (its tests pass but an operation does not apply: the patch itself is wrong)."""
    try:
        jsonpatch.apply_patch(copy.deepcopy(doc), as_apiserver(doc, patch))
    except jsonpatch.JsonPatchTestFailed:
        return False
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException):
        return None
    return True


class Backoff:
    """Exponential backoff with full jitter (a random wait up to the current bound)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.tries = 0

    def next(self) -> float:
        bound = min(BACKOFF_CAP, BACKOFF_BASE * (2**self.tries))
        self.tries += 1
        return self.rng.uniform(0, bound)

    def reset(self) -> None:
        self.tries = 0


class Writer:
    """Sends patches to one store; shared by a worker's threads (it holds no lock)."""

    def __init__(
        self,
        store: Store,
        seen: Callable[[Doc], None] | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.seen = seen or (lambda doc: None)
        self.sleep = sleep
        self.rng = rng or random.Random()
        #: Lost races seen by this writer (for logs and benchmarks).
        self.conflicts = 0
        #: How long to wait, after a lost race, for the version that won to arrive.
        self.race_wait = 0.5

    def send(
        self,
        doc: Doc,
        build: Callable[[Doc], Patch | None],
        applied: Callable[[Doc], bool] | None = None,
        what: str = "update",
        give_up_after: float | None = None,
        retry_races: bool = True,
    ) -> tuple[Doc | None, Doc]:
        """Send `build(doc)`; on a lost race build again from the newer document (unless
        `retry_races` is false) until it applies or `build` returns None.

        Returns (the document after the write, or None if it did not happen; the latest
        document seen). Raises Refused for a patch no retry can make pass, and the
        store's last error once `give_up_after` seconds passed without an answer.
        """
        started = time.monotonic()
        backoff = Backoff(self.rng)
        unexplained = races = 0
        while True:
            patch = build(doc)
            if patch is None:
                return None, doc
            try:
                new = self.store.patch(patch)
            except Refused:
                raise
            except JobNotFound:
                raise
            except Conflict as exc:
                self.conflicts += 1
                fresh = self._latest(doc, wait=self.race_wait)
                if applied is not None and applied(fresh):
                    return fresh, fresh
                verdict = preconditions_hold(fresh, patch)
                if verdict is False:
                    unexplained = 0
                    races += 1
                    if not retry_races or races >= MAX_RACES:
                        return None, fresh
                else:
                    unexplained += 1
                    if verdict is None or unexplained >= MAX_UNEXPLAINED:
                        raise Refused(
                            f"the job store refused the {what} though its preconditions "
                            f"hold ({exc}); the patch itself is wrong, which is a bug in kubemr."
                        ) from exc
                doc = fresh
                self.sleep(backoff.next())
                continue
            except TemporaryError as exc:
                if give_up_after is not None and time.monotonic() - started > give_up_after:
                    raise
                log.warning("the %s got no answer (%s); checking whether it was applied", what, exc)
                self.sleep(max(0.2, backoff.next()))
                try:
                    fresh = self.store.get()
                except JobNotFound:
                    raise
                except KubemrError:
                    continue  # still unreachable: send again (every write here is idempotent)
                self.seen(fresh)
                if applied is not None and applied(fresh):
                    return fresh, fresh
                doc = fresh
                continue
            self.seen(new)
            return new, new

    def _latest(self, doc: Doc, wait: float) -> Doc:
        """The document after `doc` that won the race (the watch shows it at once)."""
        try:
            fresh = self.store.changed(doc, wait)
        except JobNotFound:
            raise
        except KubemrError:
            fresh = self.store.get()
        self.seen(fresh)
        return fresh
