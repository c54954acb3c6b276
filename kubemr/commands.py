"""What each `kubemr` subcommand does, for runs on this machine.

`cli` parses arguments; these functions do the work and return the exit
code. They print results to stdout and everything else to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from kubemr import compression, layout, reporter, state
from kubemr.cluster import locate, pod_logs
from kubemr.errors import KubemrError, NotFound, RunError, RunMismatch, SpecError
from kubemr.local import LocalRun, check_inputs, check_output, prepare, run_spec, spec_differences
from kubemr.manifest import read_manifest
from kubemr.plan import load_plan
from kubemr.progress import describe
from kubemr.runs import lock_run, read_doc, runs_home
from kubemr.shim import config as shim_config
from kubemr.shim.attempt import Failure
from kubemr.shim.job import Job
from kubemr.shim.stdin import feed
from kubemr.spec import parse_manifest


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    worst = 0
    for path in args.files:
        try:
            spec = parse_manifest(read_manifest(path))
        except KubemrError as exc:
            _err(f"{path}: invalid: {exc}")
            worst = max(worst, exc.exit_code)
            continue
        kind = (
            "map-only"
            if spec.reduce is None and spec.map is not None
            else (f"{spec.partitions} partition(s)")
        )
        print(f"{path}: valid ({len(spec.inputs)} input(s), {kind})")
    return worst


def cmd_run(args: argparse.Namespace) -> int:
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1 or workers > 256:
        raise SpecError(f"--workers must be from 1 to 256, got {workers}.")
    prep = prepare(args.file, args.output, os.environ)
    run_dir = os.path.abspath(args.run_dir or os.path.join(runs_home(), prep.name))
    db = os.path.join(run_dir, "job.db")
    again = f"kubemr run {shlex.quote(args.file)} --run-dir NEW-DIR"
    if os.path.exists(db):
        lock_run(run_dir)
        stored = read_doc(run_dir)
        differ = spec_differences(stored.get("spec") or {}, run_spec(prep, run_dir))
        if differ:
            raise RunMismatch(
                f"{run_dir} holds a run of {stored.get('metadata', {}).get('name')} whose "
                f"{', '.join(differ[:4])} differ{'s' if len(differ) == 1 else ''} from "
                f"{args.file}; a run resumes only the same job: start a new one with `{again}` "
                "(or change metadata.name), or remove that directory."
            )
        try:
            state.current_stage(stored)
        except state.MalformedDocument as exc:
            raise RunError(
                f"{run_dir} cannot be resumed: {exc}; start the job again with a new --run-dir."
            ) from exc
        phase = state.phase_of(stored)
        if phase in state.TERMINAL:
            name = str(stored["metadata"]["name"])
            _err(f"{name} already ran in {run_dir} and {phase.lower()}; to run it again: {again}")
            return _report(stored, name, run_dir, 0.0, again=True)
        _err(f"resuming {run_dir}")
    else:
        check_inputs(prep.spec)
        output = prep.spec.output
        if output is not None:
            check_output(output, prep.spec)
        LocalRun.create(prep, run_dir)
        lock_run(run_dir)
    run = LocalRun(run_dir, workers, quiet=args.quiet)
    name = str(run.store.get()["metadata"]["name"])
    if not args.quiet:
        _err(f"running {name} with {workers} worker(s) in {run_dir}")
    started = time.monotonic()
    try:
        doc = run.run()
    except KeyboardInterrupt:
        _err(
            f"interrupted; resume with: kubemr run {shlex.quote(args.file)} "
            f"--run-dir {shlex.quote(run_dir)}"
        )
        return 128 + run.signal  # 130 for Ctrl-C, 143 for SIGTERM, as shells report them
    return _report(doc, name, run_dir, time.monotonic() - started)


def _report(
    doc: dict[str, Any], name: str, run_dir: str, elapsed: float, again: bool = False
) -> int:
    status = state.status_of(doc)
    if state.phase_of(doc) == state.SUCCEEDED:
        output = str(doc["spec"]["output"])
        shown = output.removeprefix("file://")
        took = "" if again else f" in {elapsed:.1f}s"
        _err(f"{name} succeeded{took}: {state.result_count(doc)} result file(s)")
        for line in reporter.counters_block(status.get("counters") or {}):
            _err(line)
        print(shown)
        return 0
    message = status.get("message") or "no reason recorded"
    _err(f"kubemr: error: {name} failed: {message}")
    task = status.get("failedTask")
    if task:
        _err(f"  full stderr: kubemr logs {name} --task {task}")
        if str(task).startswith(("map-", "reduce-")):
            _err(f"  debug it:    kubemr replay {name} --task {task}")
    _err(f"  run directory: {run_dir}")
    return 1


def _job(doc: dict[str, Any]) -> Job:
    """The job as this machine reaches its data (through $AWS_ENDPOINT_URL when set)."""
    config = shim_config.from_env(for_worker=False)
    config = dataclasses.replace(config, endpoint_override=os.environ.get("AWS_ENDPOINT_URL"))
    return Job.from_doc(doc, config)


def cmd_status(args: argparse.Namespace) -> int:
    found = locate(args)
    doc = found.doc
    status = state.status_of(doc)
    print(f"name:      {doc['metadata']['name']}")
    if found.run_dir:
        print(f"run dir:   {found.run_dir}")
    else:
        print(f"namespace: {found.namespace}")
    print(f"progress:  {describe(doc)}")
    if status.get("message"):
        print(f"message:   {status['message']}")
    for cond in status.get("conditions") or []:
        print(f"condition: {cond.get('type')}={cond.get('status')} {cond.get('message', '')}")
    for line in task_lines(doc):
        print(f"  {line}")
    for line in reporter.counters_block(status.get("counters") or {}):
        print(line)
    return 0


def task_lines(doc: dict[str, Any]) -> list[str]:
    """What runs now (claims by worker) and what failed, one line each."""
    lines: list[str] = []
    current = state.current_stage(doc)
    if current is not None:
        for holder, entry in current.running():
            a, d, b = int(entry["a"]), int(entry["d"]), int(entry["b"])
            first = state.Task(current.name, d).name
            span = f"{first}" if b - d == 1 else f"{first}..{b - 1} ({b - d} tasks)"
            text = f"{span}: running on {holder}, attempt {current.attempt_of(d)}"
            if d > a:
                text += f", {d - a} committed"
            if entry.get("m"):
                text += f"; status: {entry['m']}"
            lines.append(text)
        for start, end, count in current.fails.items(current.fails.keys() - current.committed()):
            span = state.Task(current.name, start).name + (
                f"..{end - 1}" if end - start > 1 else ""
            )
            lines.append(f"{span}: failed {count} attempt(s) so far")
    for stage, error in state.errors_of(doc):
        first = (str(error.get("e", "")).splitlines() or [""])[0]
        lines.append(f"{error.get('t', stage)} attempt {error.get('a', '?')} failed: {first}")
    return lines


def cmd_results(args: argparse.Namespace) -> int:
    doc = locate(args).doc
    if state.phase_of(doc) != state.SUCCEEDED:
        raise RunError(
            f"{doc['metadata']['name']} has no results: it is {describe(doc).split()[0]}."
        )
    job = _job(doc)
    for url in result_urls(job, doc):
        if not args.cat:
            print(url)
            continue
        with job.storage(url).open_read(url) as f:
            if compression.codec_of(url) is None:
                shutil.copyfileobj(f, sys.stdout.buffer, 1024 * 1024)
                continue
            for chunk in compression.decompressed(f, url):  # spec.outputCompression
                sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    return 0


def result_urls(job: Job, doc: dict[str, Any]) -> list[str]:
    """The result URLs of a job that succeeded: listed in its status, or in its manifest."""
    status = state.status_of(doc)
    if isinstance(status.get("results"), list):
        return [str(r) for r in status["results"]]
    manifest = status.get("resultsUrl")
    if not isinstance(manifest, str):
        return []
    text = job.storage(manifest).get_bytes(manifest).decode("utf-8")
    return [line for line in text.splitlines() if line]


def _no_task(doc: dict[str, Any], task: state.Task, st: state.Stage | None) -> RunError:
    """Why `task` has nothing to show: its stage has no such task, or has not begun."""
    name = str(doc["metadata"]["name"])
    if st is not None:
        has = (
            f"its only {task.stage} task is {task.stage}-0"
            if st.n == 1
            else f"its {task.stage} tasks are {task.stage}-0 to {task.stage}-{st.n - 1}"
        )
        return RunError(f"{name} has no task {task.name}: {has}.")
    if task.stage == "reduce" and state.status_of(doc).get("partitions") == 0:
        return RunError(f"{name} is map-only: it has no reduce tasks.")
    phase = state.phase_of(doc)
    if phase in state.TERMINAL:
        return RunError(
            f"{task.name} never ran: {name} {phase.lower()} before its {task.stage} stage began."
        )
    return RunError(f"{task.name} has not started yet: {name} is {describe(doc).split()[0]}.")


def _latest_attempt(doc: dict[str, Any], task: state.Task, wanted: int | None) -> int:
    st = state.stage_of(doc, task.stage)
    if st is None or task.index >= st.n:
        raise _no_task(doc, task, st)
    attempt = st.attempt_of(task.index)
    if attempt == 0:
        raise RunError(f"{task.name} has not started yet.")
    if wanted is not None:
        if not 1 <= wanted <= attempt:
            raise RunError(f"{task.name} has attempts 1 to {attempt}, not {wanted}.")
        return wanted
    return attempt


def cmd_logs(args: argparse.Namespace) -> int:
    found = locate(args)
    doc = found.doc
    if not args.task and found.run_dir is None:
        print(pod_logs(found, str(doc["metadata"]["name"])))
        return 0
    if not args.task:
        logs = os.path.join(str(found.run_dir), "logs")
        for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
            print(f"==> {name} <==")
            with open(os.path.join(logs, name), "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer)
        sys.stdout.flush()
        return 0
    task = _task(args.task)
    attempt = _latest_attempt(doc, task, args.attempt)
    job = _job(doc)
    url = layout.log_url(job.workdir(doc), task, attempt)
    try:
        data = job.storage(url).get_bytes(url)
    except NotFound:
        return _unstored_log(found.run_dir, doc, task, attempt)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return 0


def _unstored_log(run_dir: str | None, doc: dict[str, Any], task: state.Task, attempt: int) -> int:
    """The stderr of an attempt that is still running (stored only when it ends): on this
    machine, what it wrote so far; on a cluster, where to see it."""
    st = state.stage_of(doc, task.stage)
    holder = st.holder_of(task.index) if st is not None else None
    if st is None or holder is None or attempt != st.attempt_of(task.index):
        _err(f"{task.name} attempt {attempt} wrote nothing to stderr.")
        return 0
    if run_dir is None:
        _err(
            f"{task.name} attempt {attempt} is still running on {holder}; its stderr is stored "
            f"when it ends (until then: kubectl logs on the pod {holder})."
        )
        return 0
    live = sorted(
        glob.glob(os.path.join(run_dir, "scratch", "*", f"{task.name}.a{attempt}", "stderr.log"))
    )
    if live:
        with open(live[0], "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
        sys.stdout.flush()
    so_far = "its stderr so far" if live else "it has written nothing to stderr yet"
    _err(f"{task.name} attempt {attempt} is still running: {so_far}.")
    return 0


def _task(name: str) -> state.Task:
    try:
        return state.Task.parse(name)
    except ValueError as exc:
        raise RunError(f"{exc}.") from exc


def cmd_replay(args: argparse.Namespace) -> int:
    doc = locate(args).doc
    task = _task(args.task)
    if task.stage not in ("map", "reduce"):
        raise RunError("only map-N and reduce-N tasks can be replayed.")
    job = _job(doc)
    status = state.status_of(doc)
    if "planUrl" not in status:
        raise RunError(f"{doc['metadata']['name']} was not planned yet; nothing to replay.")
    st = state.stage_of(doc, task.stage)
    if st is None or task.index >= st.n:
        raise _no_task(doc, task, st)
    attempt = max(st.attempt_of(task.index), 1)
    workdir = job.workdir(doc)
    out = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115
    cwd = tempfile.mkdtemp(prefix=f"kubemr-replay-{task.name}-")
    try:
        job.write_files(cwd)
        if task.stage == "map":
            plan_url = str(status["planUrl"])
            splits, _ = load_plan(job.storage(plan_url).get_bytes(plan_url))
            split = splits[task.index]
            env = job.task_env(task, attempt, {"KUBEMR_INPUT": split.input_env()})
            _err(f"replaying {task.name} (input {split.describe()}) in {cwd}")
            proc = subprocess.Popen(
                ["sh", "-c", job.commands.map], cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out
            )
            assert proc.stdin is not None
            failure = Failure()
            feeder = threading.Thread(
                target=feed, args=(split, job.storage, proc.stdin, failure), daemon=True
            )
            feeder.start()
            code = proc.wait()
            feeder.join()
            failure.raise_if_any()
            return code
        return _replay_reduce(job, doc, task, attempt, workdir, cwd, out)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
        if args.out:
            out.close()


def _replay_reduce(
    job: Job, doc: dict[str, Any], task: state.Task, attempt: int, workdir: str, cwd: str, out: Any
) -> int:
    """A reduce task as the worker runs it (kubemr.shim.reducer: the same fetch and merge),
    its output to `out`."""
    from kubemr.shim.attempt import sort_argv
    from kubemr.shim.reducer import merge_argv, merge_inputs
    from kubemr.shuffle import IndexCache

    done, total = state.counts(doc, "map")
    if done < total:
        raise RunError(f"{task.name} cannot be replayed before every map task is done.")
    assert job.commands.reduce is not None
    attempts = state.attempts_of(doc, "map")
    gone = RunError(
        "the map outputs of this run were removed after it succeeded; set "
        "spec.keepIntermediate: true to replay reduce tasks."
    )
    try:
        feed = merge_inputs(
            job, workdir, attempts, task.index, os.path.join(cwd, ".runs"), IndexCache()
        )
        missing = [p for p in feed.paths if not os.path.exists(p)]
        if missing:
            raise NotFound(f"{missing[0]} is gone")
    except NotFound as exc:
        raise gone from exc
    env = job.task_env(task, attempt, {"KUBEMR_PARTITION": str(task.index)})
    _err(f"replaying {task.name} over {len(attempts)} map output(s) in {cwd}")
    merger = subprocess.Popen(
        merge_argv(sort_argv(job), feed, os.path.join(cwd, ".runs.lst")),
        env={**os.environ, "LC_ALL": "C"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert merger.stdout is not None
    feed.start(merger.kill)
    try:
        reducer = subprocess.Popen(
            ["sh", "-c", job.commands.reduce], cwd=cwd, env=env, stdin=merger.stdout, stdout=out
        )
        merger.stdout.close()
        code = reducer.wait()
        merger.wait()
    finally:
        feed.close()
    try:
        feed.failure.raise_if_any()
    except NotFound as exc:
        raise gone from exc
    return code
