"""The operator's log lines: text for a person at a terminal, JSON for a log pipeline.

As controller-runtime operators do (`--zap-encoder=json`), `kubemr operator`
writes one JSON object per line when its output is not a terminal (in a pod,
always), so that Loki, Elasticsearch or `kubectl logs | jq` can filter on
fields. A line about one job carries it as `namespace` and `name` (pass
`extra=job_fields(ns, name)`), whichever format is used.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

FORMATS = ("text", "json")


def job_fields(namespace: str, name: str) -> dict[str, str]:
    """The `extra` of a log call about one MapReduceJob."""
    return {"job_namespace": namespace, "job_name": name}  # a LogRecord has its own `name`


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the job's namespace and name when
    the record is about one, and the traceback of an exception as `error`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("namespace", "name"):
            value = getattr(record, f"job_{key}", None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time level [namespace/name] message`, for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        namespace = getattr(record, "job_namespace", None)
        name = getattr(record, "job_name", None)
        text = super().format(record)
        if namespace is not None and name is not None:
            head, _, rest = text.partition(f" {record.levelname} ")
            return f"{head} {record.levelname} {namespace}/{name}: {rest}"
        return text


def configure(fmt: str | None) -> None:
    """Log INFO and above to stderr as `fmt` (None: text on a terminal, else json)."""
    chosen = fmt or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
