"""The operator's log lines (`kubemr.operator.logs`): JSON objects carrying the job's namespace
and name as fields, or text naming it; tracebacks kept."""

from __future__ import annotations

import json
import logging
import sys

from kubemr.operator.logs import JsonFormatter, TextFormatter, job_fields


def record(msg: str, *args: object, exc: bool = False, **extra: str) -> logging.LogRecord:
    log = logging.getLogger("kubemr.operator")
    exc_info = None
    if exc:
        try:
            raise ValueError("bad record")
        except ValueError:
            exc_info = sys.exc_info()
    return log.makeRecord(log.name, logging.INFO, "f.py", 1, msg, args, exc_info, extra=extra)


def test_json_lines_carry_the_job_as_fields() -> None:
    line = json.loads(
        JsonFormatter().format(record("created %s", "Job", **job_fields("team", "a")))
    )
    assert line["msg"] == "created Job" and line["level"] == "info"
    assert line["namespace"] == "team" and line["name"] == "a"
    assert line["logger"] == "kubemr.operator" and line["ts"].endswith("+00:00")
    plain = json.loads(JsonFormatter().format(record("watching all namespaces")))
    assert "namespace" not in plain and "name" not in plain


def test_a_traceback_stays_in_one_json_line() -> None:
    text = JsonFormatter().format(record("reconciling failed", exc=True, **job_fields("t", "a")))
    assert "\n" not in text
    assert "ValueError: bad record" in json.loads(text)["error"]


def test_text_lines_name_the_job() -> None:
    text = TextFormatter().format(record("created %s", "Job", **job_fields("team", "a")))
    assert text.endswith(" INFO team/a: created Job"), text
