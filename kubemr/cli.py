"""The `kubemr` command line: run, validate, status, results, logs, replay, runs, delete,
submit, operator and shim.

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
  kubemr runs                                          the runs kept here: phase, age, size
  kubemr delete --finished                             free what finished runs keep
  kubemr submit job.yaml --wait                        run it on Kubernetes (kubeconfig as kubectl)

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

    submit = sub.add_parser(
        "submit",
        help="create a MapReduceJob on a cluster",
        description="Check a manifest as the operator will, create it on the cluster "
        "(kubeconfig as kubectl reads it), and with --wait show progress until it ends.",
    )
    submit.add_argument("file", metavar="FILE")
    submit.add_argument("--wait", action="store_true", help="wait; exit 0 if it succeeds, 1 if not")
    submit.add_argument("-o", "--output", metavar="URL", help="override spec.output (s3://...)")
    submit.add_argument(
        "--upload",
        action="store_true",
        help="copy inputs that are local paths to <output>/_inputs/ first, so the manifest "
        "`kubemr run` takes runs unchanged on the cluster",
    )
    submit.add_argument("--timeout", type=float, default=0, help="with --wait: give up after N s")
    submit.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    _cluster_options(submit)

    status = sub.add_parser("status", help="phase, progress and message of a run or cluster job")
    status.add_argument("run", metavar="RUN", help="a local run name or directory, or a job name")
    _cluster_options(status)

    results = sub.add_parser("results", help="list the result files of a job, or print them")
    results.add_argument("run", metavar="RUN")
    results.add_argument(
        "--cat",
        action="store_true",
        help="print the results, part by part (decompressed, if spec.outputCompression is set)",
    )
    _cluster_options(results)

    logs = sub.add_parser(
        "logs",
        help="the stderr of a task, or the worker logs",
        description="Print the stored stderr of a task's latest attempt (or of --attempt N); "
        "without --task, the worker processes' logs.",
    )
    logs.add_argument("run", metavar="RUN")
    logs.add_argument("--task", metavar="TASK", help="map-N, reduce-N, plan or publish")
    logs.add_argument("--attempt", type=int, metavar="N")
    _cluster_options(logs)

    sub.add_parser(
        "runs",
        help="list the runs kept on this machine",
        description="List the local runs in $KUBEMR_HOME/runs, oldest first: name, phase "
        "(', stopped' when no process runs it: `kubemr run` the same manifest resumes it), "
        "age and size on disk.",
    )
    delete = sub.add_parser(
        "delete",
        help="delete local runs and what they keep",
        description="Delete local runs: their run directories, with the output when it is "
        "inside (an output elsewhere is kept). A run that a process is running is refused. "
        "For a cluster job: kubectl delete mapreducejob NAME.",
    )
    delete.add_argument("runs", metavar="RUN", nargs="*", help="run names or run directories")
    delete.add_argument(
        "--finished", action="store_true", help="delete every run that succeeded or failed"
    )

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
    _cluster_options(replay)

    operator = sub.add_parser(
        "operator",
        help="run the Kubernetes operator",
        description="Watch MapReduceJobs and deploy their workers (in a pod, or against "
        "your kubeconfig for development).",
    )
    operator.add_argument("--image", help="default worker image (env KUBEMR_IMAGE)")
    operator.add_argument("-n", "--namespace", help="watch one namespace (default: all)")
    operator.add_argument("--kubeconfig", metavar="FILE")
    operator.add_argument("--context")
    operator.add_argument(
        "--metrics-bind-address",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at /metrics here (:8080 for every interface; default: off)",
    )
    operator.add_argument(
        "--health-probe-bind-address",
        metavar="HOST:PORT",
        help="serve /healthz and /readyz here for liveness and readiness probes (default: off)",
    )
    operator.add_argument(
        "--leader-elect",
        action="store_true",
        help="reconcile only while holding the Lease kubemr-operator (run several replicas; "
        "one acts, another takes over when it dies)",
    )
    operator.add_argument(
        "--leader-election-namespace",
        metavar="NS",
        help="where the Lease lives (default: the pod's namespace, else kubemr-system)",
    )
    operator.add_argument(
        "--leader-elect-lease-duration",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long a standby waits for a silent leader before taking over (default 15)",
    )
    operator.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text, or one JSON object per line (default: text on a terminal, else json)",
    )

    shim = sub.add_parser(
        "shim",
        help="the worker entrypoint (started by `kubemr run` and by pods)",
        description="Run the worker loop; configured only through KUBEMR_* environment variables.",
    )
    shim.add_argument(
        "--install-executor",
        metavar="DIR",
        help="sidecar mode: put the POSIX-sh executor and its control FIFO in DIR and exit "
        "(what the init container of a sidecar-mode pod does)",
    )
    return parser


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster (as kubectl)")
    group.add_argument("-n", "--namespace", help="the job's namespace (default: the context's)")
    group.add_argument("--context", help="the kubeconfig context")
    group.add_argument(
        "--kubeconfig", metavar="FILE", help="kubeconfig file (default: $KUBECONFIG)"
    )


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
    # Imported only where they run: a worker starts once per worker and per pod, and what
    # the CLI's other commands import (the cluster client among them) costs it 0.1-0.3 s.
    if args.command == "operator":
        from kubemr.operator.controller import cmd_operator

        return cmd_operator(args)
    if args.command == "shim":
        from kubemr.shim.worker import cmd_shim

        return cmd_shim(args)
    from kubemr import cluster, commands, runs

    handlers = {
        "run": commands.cmd_run,
        "validate": commands.cmd_validate,
        "status": commands.cmd_status,
        "results": commands.cmd_results,
        "logs": commands.cmd_logs,
        "replay": commands.cmd_replay,
        "submit": cluster.cmd_submit,
        "runs": runs.cmd_runs,
        "delete": runs.cmd_delete,
    }
    handler = handlers.get(args.command)
    if handler is None:
        raise RunError(f"unknown command {args.command}")
    return handler(args)
