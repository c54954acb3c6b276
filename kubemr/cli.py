"""The `kubemr` command line: run, validate, status, results, logs, replay, shim.

Every error a user can cause ends as one line on stderr and a non-zero exit
code (2 for a bad manifest or input, 1 for a failed job); no traceback. Set
KUBEMR_DEBUG=1 to see tracebacks of internal errors.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from kubemr import __version__
from kubemr.errors import KubemrError, RunError

EPILOG = """\
examples:
  kubemr run examples/bash-wordcount/job.yaml          run a job here, one worker per CPU
  kubemr run job.yaml --workers 4 --output ./counts    choose workers and where results go
  kubemr validate job.yaml                             check a manifest without running it
  kubemr status wordcount-x2k9f                        phase and progress of a run
  kubemr results wordcount-x2k9f --cat                 print the merged results
  kubemr logs wordcount-x2k9f --task map-3             the stderr a task wrote
  kubemr replay wordcount-x2k9f --task map-3           re-run one task in the foreground

Runs live in $KUBEMR_HOME/runs (default ~/.local/state/kubemr/runs).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubemr",
        description="MapReduce over shell commands, on this machine or on Kubernetes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kubemr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a MapReduceJob on this machine",
        description="Run a MapReduceJob manifest on this machine with N worker processes. "
        "Relative paths in spec.inputs and spec.output are relative to the manifest's directory.",
    )
    run.add_argument("file", metavar="FILE", help="the MapReduceJob manifest (YAML)")
    run.add_argument(
        "-w",
        "--workers",
        type=int,
        default=None,
        help=f"worker processes (default: the number of CPUs, {os.cpu_count() or 1})",
    )
    run.add_argument(
        "-o",
        "--output",
        metavar="URL",
        help="where results go, overriding spec.output: a directory, file:// or s3:// URL "
        "(default: spec.output, else the run directory's output/)",
    )
    run.add_argument(
        "--run-dir",
        metavar="DIR",
        help="the run directory (default: $KUBEMR_HOME/runs/NAME); an existing one is resumed",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    validate = sub.add_parser(
        "validate",
        help="check manifests offline",
        description="Check MapReduceJob manifests without running them; prints one line per file.",
    )
    validate.add_argument("files", metavar="FILE", nargs="+")

    status = sub.add_parser("status", help="phase, progress and message of a local run")
    status.add_argument("run", metavar="RUN", help="a run name or run directory")

    results = sub.add_parser("results", help="list the result files of a run, or print them")
    results.add_argument("run", metavar="RUN")
    results.add_argument("--cat", action="store_true", help="print the results, part by part")

    logs = sub.add_parser(
        "logs",
        help="the stderr of a task, or the worker logs",
        description="Print the stored stderr of a task's latest attempt (or of --attempt N); "
        "without --task, the worker processes' logs.",
    )
    logs.add_argument("run", metavar="RUN")
    logs.add_argument("--task", metavar="TASK", help="map-N, reduce-N, plan or publish")
    logs.add_argument("--attempt", type=int, metavar="N")

    replay = sub.add_parser(
        "replay",
        help="re-run one task in the foreground with its exact input",
        description="Re-run one task of a run here, in the foreground, with its exact input, "
        "environment, files and command; its output goes to stdout (or --out), its stderr to "
        "stderr. The exit code is the command's.",
    )
    replay.add_argument("run", metavar="RUN")
    replay.add_argument("--task", required=True, metavar="TASK", help="map-N or reduce-N")
    replay.add_argument("--out", metavar="FILE", help="write the task's output to FILE")

    sub.add_parser(
        "shim",
        help="the worker entrypoint (started by `kubemr run` and by pods)",
        description="Run the worker loop; configured only through KUBEMR_* environment variables.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return dispatch(args)
    except KubemrError as exc:
        print(f"kubemr: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kubemr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last line of defence against tracebacks
        if os.environ.get("KUBEMR_DEBUG"):
            traceback.print_exc()
        print(
            f"kubemr: internal error: {type(exc).__name__}: {exc} "
            "(set KUBEMR_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 70


def dispatch(args: argparse.Namespace) -> int:
    from kubemr import commands

    handlers = {
        "run": commands.cmd_run,
        "validate": commands.cmd_validate,
        "status": commands.cmd_status,
        "results": commands.cmd_results,
        "logs": commands.cmd_logs,
        "replay": commands.cmd_replay,
        "shim": commands.cmd_shim,
    }
    handler = handlers.get(args.command)
    if handler is None:
        raise RunError(f"unknown command {args.command}")
    return handler(args)
