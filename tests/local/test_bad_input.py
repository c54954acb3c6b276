"""Bad input through the real `kubemr` CLI: manifests, data and commands that misbehave.

No traceback ever reaches a user. A manifest that is wrong in any way ends
with exit code 2 and one line naming the problem, before anything starts;
data that is odd (binary, no separator, empty) gives the results a shell
pipeline gives, and data that cannot be read fails the job naming it;
commands that flood stderr, stop reading or print malformed reporter lines
neither break a task nor fill the disk.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Kubemr, read_doc, results, sh, unique_seconds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubemr.spec import API_VERSION, KIND, MAX_FILES_BYTES

_names = itertools.count()

# Manifests


def assert_refused(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit code 2 and one line on stderr, no traceback; returns the line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    return lines[0]


def assert_clean_outcome(proc: subprocess.CompletedProcess[str]) -> None:
    """Whatever a manifest holds, the CLI ends with 0, 1 or 2 and never a traceback."""
    assert proc.returncode in (0, 1, 2), (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    if proc.returncode == 2:
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def manifest_text(spec: Any, metadata: Any = None) -> str:
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "spec": spec}
    if metadata is not None:
        doc["metadata"] = metadata
    return yaml.safe_dump(doc)


def billion_laughs(levels: int = 9) -> str:
    """A few lines of YAML whose aliases expand to 9**levels strings in `metadata.labels`."""
    lines = ['    l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return (
        "apiVersion: kubemr.io/v1alpha1\nkind: MapReduceJob\nmetadata:\n  name: lol\n"
        "  labels:\n" + "\n".join(lines) + "\nspec:\n  inputs: [abc]\n  map: cat\n"
    )


HOSTILE = {
    "wrong type": (manifest_text({"inputs": "s3://b/k", "map": "cat"}), "spec.inputs"),
    "missing inputs": (manifest_text({"map": "cat"}), "spec.inputs"),
    "no spec": (manifest_text(None), "spec"),
    "huge number": (manifest_text({"inputs": ["a"], "map": "cat", "replicas": 10**40}), "replicas"),
    "huge integer literal": (
        "apiVersion: kubemr.io/v1alpha1\nkind: MapReduceJob\nspec:\n  inputs: [a]\n  map: cat\n"
        "  maxAttempts: " + "9" * 5000 + "\n",
        "cannot be read",
    ),
    "huge files": (
        manifest_text({"inputs": ["a"], "map": "cat", "files": {"a": "x" * MAX_FILES_BYTES}}),
        "spec.files holds",
    ),
    "not a DNS label": (manifest_text({"inputs": ["a"], "map": "cat"}, {"name": "Job_1"}), "name"),
    "traversal in files": (
        manifest_text({"inputs": ["a"], "map": "cat", "files": {"../../etc/cron.d/x": "y"}}),
        "spec.files key",
    ),
    "traversal in output": (
        manifest_text({"inputs": ["a"], "map": "cat", "output": "out/../../etc/"}),
        "spec.output",
    ),
    "traversal in file output": (
        manifest_text({"inputs": ["a"], "map": "cat", "output": "file:///tmp/../etc/"}),
        "spec.output",
    ),
    "unknown input scheme": (manifest_text({"inputs": ["gopher://x/y"], "map": "cat"}), "gopher"),
    "unknown output scheme": (
        manifest_text({"inputs": ["a"], "map": "cat", "output": "hdfs://nn/out/"}),
        "hdfs",
    ),
    "alias bomb": (billion_laughs(), "expands to more than"),
    "python tag": (
        "apiVersion: kubemr.io/v1alpha1\nkind: MapReduceJob\nspec: !!python/object/apply:os.system"
        " ['touch pwned']\n",
        "not valid YAML",
    ),
    "binary garbage": (bytes(range(256)).decode("latin-1"), "manifest"),
    "a list": ("- a\n- b\n", "must be a mapping"),
    "two documents": (
        "---\n".join([manifest_text({"inputs": ["a"], "map": "cat"})] * 2),
        "YAML documents",
    ),
    "a key given twice": (
        "apiVersion: kubemr.io/v1alpha1\nkind: MapReduceJob\nspec:\n  inputs: [a]\n"
        "  map: cat\n  map: wc -l\n",
        "gives the key 'map' twice in one mapping (line 6); keep one",
    ),
    "an env name given twice": (
        "apiVersion: kubemr.io/v1alpha1\nkind: MapReduceJob\nspec:\n  inputs: [a]\n"
        "  map: cat\n  env: {A: '1', A: '2'}\n",
        "gives the key 'A' twice",
    ),
    "no apiVersion": (
        "kind: MapReduceJob\nspec:\n  inputs: [a]\n  map: cat\n",
        "apiVersion is missing; write `apiVersion: kubemr.io/v1alpha1`",
    ),
    "a null kind": (
        "apiVersion: kubemr.io/v1alpha1\nkind: null\nspec:\n  inputs: [a]\n  map: cat\n",
        "kind must be 'MapReduceJob', got null",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_manifest_is_refused_in_one_line(kubemr: Kubemr, case: str) -> None:
    text, needle = HOSTILE[case]
    path = kubemr.tmp / "hostile.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    for args in (["validate", str(path)], ["run", str(path), "-w", "1"]):
        line = assert_refused(kubemr(*args))
        assert needle in line, (case, line)
    assert not (kubemr.home / "runs").exists()  # nothing started
    assert not (kubemr.tmp / "pwned").exists()


def test_manifest_that_cannot_be_read_is_refused(kubemr: Kubemr) -> None:
    (kubemr.tmp / "a-directory.yaml").mkdir()
    (kubemr.tmp / "latin1.yaml").write_bytes(b"spec: {map: caf\xe9}\n")
    for name in ("a-directory.yaml", "latin1.yaml", "absent.yaml"):
        line = assert_refused(kubemr("validate", str(kubemr.tmp / name)))
        assert name in line


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=10)
    | st.sampled_from(
        ["./in.txt", "s3://b/k", "ftp://x/", "../x", "~", "a/../b", "64Mi", "-1", "\x00", "\t"]
    )
)
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3)
)
spec_keys = st.sampled_from(
    [
        "inputs",
        "map",
        "combine",
        "reduce",
        "partitions",
        "files",
        "env",
        "output",
        "storage",
        "splitSize",
        "maxAttempts",
        "taskTimeoutSeconds",
        "separator",
        "keyFields",
        "template",
        "replicas",
    ]
)
specs = st.builds(
    lambda base, more: {**base, **more},
    st.fixed_dictionaries({"inputs": st.just(["./in.txt"]) | values, "map": st.just("cat")}),
    st.dictionaries(spec_keys, values, max_size=3),
)
metadatas = st.none() | st.dictionaries(
    st.sampled_from(["name", "generateName", "namespace", "labels", "bogus"]), values, max_size=2
)
CLI_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@CLI_SETTINGS
@given(specs, metadatas)
def test_generated_manifests_through_validate(kubemr: Kubemr, spec: Any, metadata: Any) -> None:
    path = kubemr.tmp / f"gen-{next(_names)}.yaml"
    path.write_text(manifest_text(spec, metadata))
    proc = kubemr("validate", str(path))
    assert_clean_outcome(proc)
    assert proc.returncode in (0, 2)


@CLI_SETTINGS
@given(specs, metadatas)
def test_generated_manifests_through_run(kubemr: Kubemr, spec: Any, metadata: Any) -> None:
    n = next(_names)
    (kubemr.tmp / "in.txt").write_bytes(b"a\t1\nb\t2\n")
    if isinstance(spec.get("map"), str):
        spec["map"] = "cat"  # commands stay harmless; their type is what is under test
    for key in ("combine", "reduce"):
        if isinstance(spec.get(key), str):
            spec[key] = "cat"
    path = kubemr.tmp / f"gen-{n}.yaml"
    path.write_text(manifest_text(spec, metadata))
    out = kubemr.tmp / f"out-{n}"
    run_dir = kubemr.tmp / f"run-{n}"
    proc = kubemr("run", str(path), "-w", "1", "-q", "-o", str(out), "--run-dir", str(run_dir))
    assert_clean_outcome(proc)
    if proc.returncode == 2:
        assert not run_dir.exists()
    elif proc.returncode == 0:
        assert (out / "_SUCCESS").exists()
    else:
        assert not (out / "_SUCCESS").exists()


# Data


def make_job(kubemr: Kubemr, name: str, **spec: Any) -> tuple[Path, Path]:
    return kubemr.job(name, **spec), kubemr.tmp / f"out-{name}"


def lines_of(data: bytes) -> list[bytes]:
    return sorted(data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"))


def test_map_output_without_separator_and_with_empty_keys(kubemr: Kubemr) -> None:
    """A line without a separator is all key; an empty key is a key like any other."""
    data = kubemr.tmp / "in.txt"
    data.write_bytes(
        b"".join(
            [b"no separator here\n", b"\tempty key\n", b"\t\n", b"\n", b"k\tv\n"] * 200
            + [b"x\ty\n" * 3, b"no separator here\n"]
        )
    )
    reduce_cmd = "cut -f1 | uniq -c"
    job, out = make_job(
        kubemr,
        "nosep",
        inputs=["./in.txt"],
        map="cat",
        reduce=reduce_cmd,
        partitions=3,
        splitSize="1Ki",
    )
    proc = kubemr("run", str(job), "-w", "2", "-q", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    expected = sh(f"cat in.txt | LC_ALL=C sort | {reduce_cmd}", cwd=kubemr.tmp)
    assert lines_of(results(out)) == lines_of(expected)


def test_inputs_that_are_all_empty_give_empty_results(kubemr: Kubemr) -> None:
    data = kubemr.tmp / "in"
    data.mkdir()
    for name in ("a.txt", "b.txt"):
        (data / name).write_bytes(b"")
    for reduce_cmd in ("cat", None):
        spec: dict[str, Any] = {"inputs": ["./in/"], "map": "cat"}
        if reduce_cmd:
            spec.update(reduce=reduce_cmd, partitions=2)
        name = f"empty-{'reduce' if reduce_cmd else 'maponly'}"
        job, out = make_job(kubemr, name, **spec)
        proc = kubemr("run", str(job), "-w", "2", "-q", "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        assert results(out) == b""


def test_an_input_that_vanishes_after_planning_fails_naming_it(kubemr: Kubemr) -> None:
    """With one worker, the first map task deletes every other input before it is read."""
    data = kubemr.tmp / "in"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}.txt").write_bytes(b"line %d\n" % i * 200)
    remove_others = (
        f'for f in {data}/*.txt; do case "$KUBEMR_INPUT" in *"$f"*) ;; *) rm -f "$f";; esac; '
        "done; cat"
    )
    job, out = make_job(
        kubemr, "vanish", inputs=["./in/"], map=remove_others, splitSize="1Ki", maxAttempts=2
    )
    proc = kubemr("run", str(job), "-w", "1", "-q", "-o", str(out))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    message = proc.stderr.splitlines()[0]
    assert "failed 2 of 2 attempts" in message and "no such file" in message
    assert "/in/f" in message  # names the input
    assert not out.exists() or not list(out.iterdir())  # nothing published


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("not-gzip.gz", b"plain text, not gzip\n"),
        ("truncated.gz", bytes.fromhex("1f8b0800000000000003") + b"\x4b\x4c\x4a"),
    ],
)
def test_a_corrupt_gz_input_fails_the_job_naming_it(kubemr: Kubemr, name: str, data: bytes) -> None:
    (kubemr.tmp / name).write_bytes(data)
    (kubemr.tmp / "good.txt").write_bytes(b"fine\n")
    job, out = make_job(
        kubemr, "gz", inputs=["./good.txt", f"./{name}"], map="cat", reduce="cat", maxAttempts=1
    )
    proc = kubemr("run", str(job), "-w", "1", "-q", "-o", str(out))
    assert proc.returncode == 1, proc.stderr
    message = proc.stderr.splitlines()[0]
    assert name in message and "gzip" in message, message
    assert message.count(name) == 1, message  # the input is named once
    assert "Traceback" not in proc.stderr
    assert not (out / "_SUCCESS").exists()


# Commands


def test_a_command_flooding_stderr_keeps_its_stored_log_bounded(kubemr: Kubemr) -> None:
    """300 MB on stderr (long lines and one line without end): the stored log stays small."""
    (kubemr.tmp / "in.txt").write_bytes(b"a\t1\nb\t2\n")
    flood = (
        "yes \"$(head -c 1000 /dev/zero | tr '\\0' x)\" | head -c 250000000 >&2; "
        "head -c 50000000 /dev/zero | tr '\\0' y >&2; cat"
    )
    job, out = make_job(kubemr, "flood", inputs=["./in.txt"], map=flood, reduce="cat")
    proc = kubemr("run", str(job), "-w", "1", "-q", "-o", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert results(out) == b"a\t1\nb\t2\n"
    logs = kubemr("logs", "flood", "--task", "map-0")
    assert logs.returncode == 0
    stored = logs.stdout.encode()
    assert 4 * 1024 * 1024 <= len(stored) < 24 * 1024 * 1024, len(stored)
    assert "bytes of stderr dropped" in logs.stdout
    assert logs.stdout.rstrip("\n").endswith("y" * 1000)  # the tail is kept
    total = sum(f.stat().st_size for f in kubemr.run_dir("flood").rglob("*") if f.is_file())
    assert total < 32 * 1024 * 1024, total


@pytest.mark.parametrize(
    ("map_cmd", "expected"),
    [
        ("head -n1", lambda lines: lines[:1]),  # closes stdin after one line
        ("true", lambda lines: []),  # exits 0 without reading
        ("exec 0<&-; echo done", lambda lines: [b"done"]),  # closes stdin at once
    ],
)
def test_commands_that_stop_reading_early_succeed(
    kubemr: Kubemr, map_cmd: str, expected: Any
) -> None:
    lines = [b"line %06d\tpayload" % i for i in range(400_000)]  # ~8 MB, far more than a pipe
    (kubemr.tmp / "in.txt").write_bytes(b"\n".join(lines) + b"\n")
    job, out = make_job(kubemr, "early", inputs=["./in.txt"], map=map_cmd)
    proc = kubemr("run", str(job), "-w", "1", "-q", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert results(out).splitlines() == expected(lines)


def test_malformed_reporter_lines_are_counted_and_never_fail_a_task(kubemr: Kubemr) -> None:
    (kubemr.tmp / "in.txt").write_bytes(b"a\nb\n")
    noise = [
        "reporter:counter:only,two",
        "reporter:counter:g,n,not-a-number",
        "reporter:counter:,,1",
        "reporter:counter:g,n,1,extra",
        "reporter:nonsense",
        "reporter:",
        "reporter:counter:g,n,99999999999999999999999999",
        "reporter:status:" + "s" * 10000,
    ]
    script = "; ".join(f"printf '%s\\n' '{line}' >&2" for line in noise)
    script += "; printf 'reporter:counter:g,good,\\xff\\n' >&2; echo 'reporter:counter:g,ok,2' >&2"
    job, out = make_job(kubemr, "reporter", inputs=["./in.txt"], map=f"{script}; cat")
    proc = kubemr("run", str(job), "-w", "1", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert results(out) == b"a\nb\n"
    counters = read_doc(kubemr.run_dir("reporter"))["status"]["counters"]
    assert counters["kubemr"]["malformed reporter lines"] == 7
    assert counters["g"]["ok"] == 2
    assert counters["g"]["n"] == 99999999999999999999999999
    assert "malformed reporter lines=7" in proc.stderr


def test_a_command_that_detaches_a_child_does_not_hang_the_task(kubemr: Kubemr) -> None:
    """A background child that keeps stderr open is killed with the task's process group."""
    (kubemr.tmp / "in.txt").write_bytes(b"a\n")
    nap = unique_seconds(300)
    job, out = make_job(
        kubemr, "detach", inputs=["./in.txt"], map=f"(sleep {nap} &) ; cat", taskTimeoutSeconds=60
    )
    proc = kubemr("run", str(job), "-w", "1", "-q", "-o", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert results(out) == b"a\n"
    left = subprocess.run(["pgrep", "-f", f"^sleep {nap}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a detached child outlived its task"


def test_a_run_left_by_an_older_kubemr_is_refused_not_hung_on(kubemr: Kubemr) -> None:
    """A run directory whose job document another version of kubemr wrote (one status entry
    per task) cannot be resumed: `kubemr run` says so and how to start again, and exits."""
    (kubemr.tmp / "in.txt").write_text("a\n")
    job = kubemr.job("old", inputs=["./in.txt"], map="cat")
    run_dir = kubemr.tmp / "old-run"
    first = kubemr("run", str(job), "--run-dir", str(run_dir))
    assert first.returncode == 0, first.stderr
    db = sqlite3.connect(run_dir / "job.db")
    doc = read_doc(run_dir)
    doc["status"] = {"phase": "Mapping", "map": [{"s": "p", "a": 0}], "partitions": 0}
    db.execute("UPDATE job SET doc = ? WHERE id = 1", (json.dumps(doc),))
    db.commit()
    db.close()
    again = kubemr("run", str(job), "--run-dir", str(run_dir), timeout=30)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "cannot be resumed" in again.stderr and "new --run-dir" in again.stderr


def test_outputs_that_cannot_take_the_results_are_refused_before_anything_runs(
    kubemr: Kubemr,
) -> None:
    """An output inside an input directory (the next run would count these results too), an
    output that is a file or cannot be written, and one that holds a stale part of an
    earlier run: each refused with exit code 2 and one sentence, before any worker starts."""
    data = kubemr.tmp / "data"
    data.mkdir()
    (data / "a.txt").write_text("x y\n")
    (kubemr.tmp / "a-file").write_text("not a directory\n")
    stale = kubemr.tmp / "stale"
    stale.mkdir()
    (stale / "part-r-00007").write_text("old\n")
    cases = {
        str(data / "counts"): "lies inside the input",
        str(kubemr.tmp / "a-file"): "is a file",
        str(kubemr.tmp / "a-file" / "out"): "cannot be written",
        str(stale): "already holds results (part-r-00007)",
    }
    job = kubemr.job("outs", inputs=["./data/"], map="cat", reduce="cat")
    for output, said in cases.items():
        proc = kubemr("run", str(job), "-o", output)
        assert proc.returncode == 2, (output, proc.stderr)
        assert said in proc.stderr and "--output" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not list((kubemr.home / "runs").glob("*/job.db"))  # nothing started
    assert (stale / "part-r-00007").read_text() == "old\n"


@pytest.mark.parametrize("item", ["data/missing.txt", "missing.txt", "./data/nope/", "/none/x"])
def test_a_mistyped_path_is_refused_before_anything_runs(kubemr: Kubemr, item: str) -> None:
    """An input that is not a URL is a path and must exist (a mistyped one once ran and mapped
    its own name): refused with exit code 2, naming it and how to write a string meant as-is."""
    (kubemr.tmp / "data").mkdir(exist_ok=True)
    job = kubemr.job("typo", inputs=[item], map="cat")
    line = assert_refused(kubemr("run", str(job), "-o", str(kubemr.tmp / "out")))
    assert f"input {item} does not exist" in line and f"opaque:{item}" in line, line
    assert not (kubemr.tmp / "out").exists()


def test_relative_paths_and_opaque_strings(kubemr: Kubemr) -> None:
    """A relative path with or without ./ is read from the manifest's directory, whatever
    the working directory; `opaque:TEXT` reaches the map command as TEXT, even one that looks
    like a path."""
    (kubemr.tmp / "data").mkdir()
    (kubemr.tmp / "data" / "in.txt").write_text("from the file\n")
    job = kubemr.job(
        "rel", inputs=["data/in.txt", "opaque:data/missing.txt", "opaque:x y"], map="cat"
    )
    proc = subprocess.run(
        kubemr.argv("run", str(job), "-o", str(kubemr.tmp / "out")),
        env=kubemr.environ(None),
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    assert results(kubemr.tmp / "out") == b"from the file\ndata/missing.txt\nx y\n"


@pytest.mark.parametrize(
    ("output", "said"),
    [
        ("file://relative/out", "is not an absolute file:// URL"),
        ("s3://bad_bucket!/x/", "'bad_bucket!' is not a valid bucket name"),
        ("s3://", "names no bucket"),
    ],
)
def test_an_output_that_cannot_be_used_exits_2(kubemr: Kubemr, output: str, said: str) -> None:
    (kubemr.tmp / "in.txt").write_text("a\n")
    job = kubemr.job("badout", inputs=["./in.txt"], map="cat")
    line = assert_refused(kubemr("run", str(job), "-o", output))
    assert said in line, line
    assert not list((kubemr.home / "runs").glob("*/job.db"))


def test_a_named_pipe_input_is_refused_saying_what_it_is(kubemr: Kubemr) -> None:
    os.mkfifo(kubemr.tmp / "pipe")
    job = kubemr.job("fifo", inputs=["./pipe"], map="cat")
    line = assert_refused(kubemr("run", str(job), "-o", str(kubemr.tmp / "out")))
    assert "is a named pipe (FIFO), not a file or directory" in line, line
