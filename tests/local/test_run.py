"""`kubemr run` end to end: real worker processes, real shell commands, real files.

Results are compared with what the bare shell pipeline
`cat inputs | map | LC_ALL=C sort | reduce` gives for the same commands.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Kubemr, read_doc, results, sh, tasks, unique_seconds

WORDCOUNT = REPO / "examples" / "bash-wordcount"
MAP_SH = (WORDCOUNT / "map.sh").read_text()
REDUCE_SH = (WORDCOUNT / "reduce.sh").read_text()


def bare_pipeline(inputs: list[Path], map_cmd: str, reduce_cmd: str, cwd: Path) -> bytes:
    cat = " ".join(f"'{p}'" for p in inputs)
    return sh(f"cat {cat} | {map_cmd} 2>/dev/null | LC_ALL=C sort | {reduce_cmd}", cwd=cwd)


def sorted_lines(data: bytes) -> list[bytes]:
    return sorted(data.splitlines(keepends=True))


def test_example_wordcount_equals_bare_pipeline(kubemr: Kubemr) -> None:
    """The README example: its results are the bare pipeline's, and it prints where they are."""
    proc = kubemr("run", str(WORDCOUNT / "job.yaml"), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    output = Path(proc.stdout.strip())
    assert output.is_dir()
    corpus = sorted(p for p in (WORDCOUNT / "corpus").iterdir() if not p.name.startswith("_"))
    expected = bare_pipeline(corpus, "sh map.sh", "sh reduce.sh", WORDCOUNT)
    assert sorted_lines(results(output)) == sorted_lines(expected)
    assert sorted(p.name for p in output.iterdir()) == ["_SUCCESS", "part-r-00000", "part-r-00001"]
    # Each part is sorted: reduce saw its partition's lines in bytewise order.
    for part in output.glob("part-*"):
        lines = part.read_bytes().splitlines()
        assert lines == sorted(lines)
    # Counters from reporter lines are summed over tasks and printed.
    words = len(sh("cat *.txt | sh ../map.sh 2>/dev/null", cwd=WORDCOUNT / "corpus").splitlines())
    assert f"words={words}" in proc.stderr


def test_example_files_match_inline_files() -> None:
    """The example's map.sh/reduce.sh are the same scripts its manifest ships in `files`."""
    import yaml

    spec = yaml.safe_load((WORDCOUNT / "job.yaml").read_text())["spec"]
    assert spec["files"]["map.sh"] == MAP_SH
    assert spec["files"]["reduce.sh"] == REDUCE_SH


def test_python_example_matches_bash_example(kubemr: Kubemr) -> None:
    bash = kubemr("run", str(WORDCOUNT / "job.yaml"), "-w", "2", "-q")
    py = kubemr("run", str(REPO / "examples/python-wordcount/job.yaml"), "-w", "2", "-q")
    assert bash.returncode == 0 and py.returncode == 0, bash.stderr + py.stderr
    for name in ("part-r-00000", "part-r-00001"):
        a = (Path(bash.stdout.strip()) / name).read_bytes()
        b = (Path(py.stdout.strip()) / name).read_bytes()
        assert a == b


def test_results_identical_for_any_number_of_workers(kubemr: Kubemr) -> None:
    outs = []
    for workers in ("1", "3"):
        proc = kubemr("run", str(WORDCOUNT / "job.yaml"), "-w", workers, "-q")
        assert proc.returncode == 0, proc.stderr
        outs.append(Path(proc.stdout.strip()))
    for name in ("part-r-00000", "part-r-00001"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_map_only_job_writes_part_m_per_split(kubemr: Kubemr) -> None:
    data = kubemr.tmp / "in"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}.txt").write_bytes(b"".join(b"line %d of %d\n" % (j, i) for j in range(400)))
    job = kubemr.job("maponly", inputs=["./in/"], map="tr a-z A-Z", splitSize="4Ki")
    proc = kubemr("run", str(job), "-w", "2", "-o", str(kubemr.tmp / "out"))
    assert proc.returncode == 0, proc.stderr
    out = kubemr.tmp / "out"
    parts = sorted(out.glob("part-m-*"))
    assert len(parts) > 3  # cut into several splits
    expected = sh("cat in/f0.txt in/f1.txt in/f2.txt | tr a-z A-Z", cwd=kubemr.tmp)
    assert results(out) == expected  # part order is input order


def test_tricky_input_lines_each_reach_exactly_one_map(kubemr: Kubemr) -> None:
    """No trailing newline, CRLF, empty files and lines, long lines, non-UTF-8, keys with spaces."""
    data = kubemr.tmp / "in"
    data.mkdir()
    (data / "a-no-newline.txt").write_bytes(b"alpha 1\nbeta 2\ngamma without newline")
    (data / "b-crlf.txt").write_bytes(b"key one\tv1\r\nkey two\tv2\r\n\r\n")
    (data / "c-empty.txt").write_bytes(b"")
    (data / "d-long.txt").write_bytes(b"x" * 300_000 + b"\n" + b"short\n" + b"y" * 70_000)
    (data / "e-binary.bin").write_bytes(
        bytes(range(1, 256)).replace(b"\n", b"") + b"\n\xff\xfe\t\x80\n"
    )
    (data / "f-spaces.txt").write_bytes(
        b"".join(b"k e y %d\tvalue\n" % (i % 7) for i in range(2000))
    )
    job = kubemr.job(
        "tricky", inputs=["./in/"], map="cat", reduce="cat", partitions=3, splitSize="1Ki"
    )
    proc = kubemr("run", str(job), "-w", "2", "-o", str(kubemr.tmp / "out"))
    assert proc.returncode == 0, proc.stderr
    got = results(kubemr.tmp / "out")
    expected = b""
    for f in sorted(data.iterdir()):
        content = f.read_bytes()
        if content and not content.endswith(b"\n"):
            content += b"\n"
        expected += content
    assert sorted_lines(got) == sorted_lines(expected)
    # Every partition is sorted bytewise and a key never spans two partitions.
    keys_seen: dict[bytes, str] = {}
    for part in sorted((kubemr.tmp / "out").glob("part-r-*")):
        lines = part.read_bytes().splitlines()
        assert lines == sorted(lines)
        for line in lines:
            key = line.split(b"\t", 1)[0]
            assert keys_seen.setdefault(key, part.name) == part.name


def test_combiner_and_custom_separator(kubemr: Kubemr) -> None:
    """keyFields=2 with ',' as separator: the key is the first two fields."""
    data = kubemr.tmp / "sales.csv"
    rows = [
        b"%s,%s,%d\n" % (r, p, n) for r in (b"eu", b"us") for p in (b"a", b"b") for n in range(50)
    ]
    data.write_bytes(b"".join(rows * 3))
    total = (
        'awk -F, \'{k=$1","$2} k!=p{if(NR>1)print p","s; p=k; s=0} {s+=$3} END{if(NR)print p","s}\''
    )
    job = kubemr.job(
        "sales",
        inputs=["./sales.csv"],
        map="cat",
        combine=total,
        reduce=total,
        partitions=2,
        separator=",",
        keyFields=2,
        splitSize="2Ki",
    )
    proc = kubemr("run", str(job), "-w", "2", "-o", str(kubemr.tmp / "out"))
    assert proc.returncode == 0, proc.stderr
    got = sorted(results(kubemr.tmp / "out").decode().split())
    assert got == ["eu,a,3675", "eu,b,3675", "us,a,3675", "us,b,3675"]


@pytest.mark.parametrize("partitions", [1, 3])
def test_equal_keys_are_adjacent_whatever_bytes_keys_hold(kubemr: Kubemr, partitions: int) -> None:
    """With "," as separator, `a b,1` sorts between `a` and `a,1` as a whole line (" " is
    below ","), which would split key `a`. Sorted by key first, every key's lines are one
    run, with ties in whole-line order, so results stay deterministic."""
    lines = [b"a,1", b"a b,1", b"a", b"b,2", b"a,0", b"a\x01x,5", b"b", b"a b,0"]
    (kubemr.tmp / "in.txt").write_bytes(b"".join(line + b"\n" for line in lines))
    job = kubemr.job(
        "keys",
        inputs=["./in.txt"],
        map="cat",
        reduce="cat",
        partitions=partitions,
        separator=",",
    )
    proc = kubemr("run", str(job), "-o", str(kubemr.tmp / "out"))
    assert proc.returncode == 0, proc.stderr
    for part in sorted((kubemr.tmp / "out").glob("part-r-*")):
        keys = [line.split(b",", 1)[0] for line in part.read_bytes().splitlines()]
        runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
        assert len(runs) == len(set(runs)), f"a key is split in {part.name}: {keys}"
        assert keys == sorted(keys)
    got = results(kubemr.tmp / "out").splitlines()
    assert sorted(got) == sorted(lines)
    if partitions == 1:
        assert got == [b"a", b"a,0", b"a,1", b"a\x01x,5", b"a b,0", b"a b,1", b"b", b"b,2"]


@pytest.mark.parametrize("partitions", [1, 3])
@pytest.mark.parametrize("low", [False, True])
def test_whole_line_sorting_gives_the_order_of_keys_or_is_redone_by_key(
    kubemr: Kubemr, partitions: int, low: bool
) -> None:
    """With a tab as separator and no combiner, map outputs are sorted as whole lines, which
    is the order of keys unless a line holds a byte below the tab: `a\x01x<TAB>5` sorts
    between `a` and `a<TAB>1` as a whole line. Then the map task sorts again by key. Either
    way the results are those of sorting by key, then by line (reference: GNU sort)."""
    lines = [b"a\t1", b"a b\t1", b"a", b"b\t2", b"a\t0", b"b", b"a b\t0", b"c\tz"] * 30
    if low:
        lines += [b"a\x01x\t5", b"b\x02\t7"]
    data = kubemr.tmp / "in.txt"
    data.write_bytes(b"".join(line + b"\n" for line in lines))
    job = kubemr.job(
        "tabs", inputs=["./in.txt"], map="cat", reduce="cat", partitions=partitions, splitSize="1Ki"
    )
    proc = kubemr("run", str(job), "-o", str(kubemr.tmp / "out"))
    assert proc.returncode == 0, proc.stderr
    for part in sorted((kubemr.tmp / "out").glob("part-r-*")):
        want = sh("LC_ALL=C sort -t \"$(printf '\\t')\" -k1,1", stdin=part.read_bytes())
        assert part.read_bytes() == want, part.name
    assert sorted(results(kubemr.tmp / "out").splitlines()) == sorted(lines)
    if partitions == 1 and low:
        keys = [x.split(b"\t", 1)[0] for x in results(kubemr.tmp / "out").splitlines()]
        assert keys.index(b"a\x01x") > max(i for i, k in enumerate(keys) if k == b"a")


@pytest.mark.parametrize(
    ("role", "partitions"),
    [("map", 0), ("map", 2), ("combine", 1), ("combine", 2), ("reduce", 1), ("reduce", 3)],
)
def test_a_command_that_stops_reading_early_succeeds_in_every_role(
    kubemr: Kubemr, role: str, partitions: int
) -> None:
    """`head -n 2` closes its stdin and exits 0, as at the end of a shell pipeline: what fed
    it (the split, the sort, the partitioner, the merge) stopping on a broken pipe is not a
    failure of the task. Enough data that every feeder is still writing when it stops."""
    data = kubemr.tmp / "in.txt"
    data.write_bytes(b"".join(b"k%05d\t%d\n" % (i % 5000, i) for i in range(400_000)))
    commands = {"map": "cat", "combine": None, "reduce": "cat"}
    commands[role] = "head -n 2"
    spec = {k: v for k, v in commands.items() if v is not None and (k == "map" or partitions)}
    if partitions:
        spec["partitions"] = partitions
    job = kubemr.job("early", inputs=["./in.txt"], splitSize="4Mi", **spec)
    proc = kubemr("run", str(job), "-o", str(kubemr.tmp / "out"))
    assert proc.returncode == 0, proc.stderr
    got = results(kubemr.tmp / "out").splitlines()
    maps = 2  # 5.5 MB in splits of 4 MiB
    expected = {"map": 2 * maps, "combine": 2 * partitions * maps, "reduce": 2 * partitions}
    assert len(got) == expected[role], got


def test_bz2_xz_and_zst_inputs_are_read_decompressed(kubemr: Kubemr) -> None:
    """The same words in four compressed forms and plain count the same: each file is read
    whole, decompressed, by one map task."""
    import bz2
    import lzma

    import zstandard

    words = b"".join(b"w%d w%d\n" % (i % 97, i % 13) for i in range(50_000))
    data = kubemr.tmp / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(words)
    (data / "b.txt.gz").write_bytes(gzip.compress(words))
    (data / "c.txt.bz2").write_bytes(bz2.compress(words))
    (data / "d.txt.xz").write_bytes(lzma.compress(words))
    (data / "e.txt.zst").write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(words))
    job = kubemr.job(
        "codecs",
        inputs=["./data/"],
        map="tr ' ' '\\n' | sed 's/$/\t1/'",
        reduce="awk -F '\\t' '{ n[$1] += $2 } END { for (k in n) print k \"\\t\" n[k] }' | sort",
        splitSize="64Ki",
    )
    proc = kubemr("run", str(job), "-w", "2", "-o", str(kubemr.tmp / "out"))
    assert proc.returncode == 0, proc.stderr
    expected = sh(
        "tr ' ' '\\n' | awk '{ n[$1] += 5 } END { for (k in n) print k \"\\t\" n[k] }' | sort",
        stdin=words,
    )
    assert results(kubemr.tmp / "out") == expected


def test_gzip_and_opaque_inputs(kubemr: Kubemr) -> None:
    gz = kubemr.tmp / "words.txt.gz"
    with gzip.open(gz, "wb") as f:
        f.write(b"one two\nthree\n" * 100)
    job = kubemr.job(
        "mixed",
        inputs=["./words.txt.gz", "opaque:customers-shard-17"],
        map='if [ "$KUBEMR_INPUT" = customers-shard-17 ]; then read x; echo "opaque:$x"; '
        "else wc -l | tr -d ' '; fi",
    )
    proc = kubemr("run", str(job), "-w", "2", "-o", str(kubemr.tmp / "out"))
    assert proc.returncode == 0, proc.stderr
    assert results(kubemr.tmp / "out") == b"200\nopaque:customers-shard-17\n"


def test_commands_from_environment(kubemr: Kubemr) -> None:
    """With no map/reduce in the spec, KUBEMR_MAP/KUBEMR_REDUCE wrap any command."""
    (kubemr.tmp / "in.txt").write_text("b\na\nb\n")
    job = kubemr.job("envcmd", inputs=["./in.txt"])
    env = {"KUBEMR_MAP": "sed 's/$/\t1/'", "KUBEMR_REDUCE": "uniq -c | sed 's/^ *//'"}
    proc = kubemr("run", str(job), "-o", str(kubemr.tmp / "out"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert results(kubemr.tmp / "out") == b"1 a\t1\n2 b\t1\n"


def test_task_environment_and_files(kubemr: Kubemr) -> None:
    (kubemr.tmp / "in.txt").write_text("x\n")
    job = kubemr.job(
        "envjob",
        inputs=["./in.txt"],
        map="./show.sh",
        reduce='cat; echo "reduce $KUBEMR_TASK $KUBEMR_PARTITION $GREETING"',
        env={"GREETING": "hello"},
        files={
            "show.sh": '#!/bin/sh\necho "k\t$KUBEMR_JOB $KUBEMR_TASK $KUBEMR_ATTEMPT $GREETING"\n'
        },
    )
    proc = kubemr("run", str(job), "-o", str(kubemr.tmp / "out"))
    assert proc.returncode == 0, proc.stderr
    assert results(kubemr.tmp / "out") == b"k\tenvjob map-0 1 hello\nreduce reduce-0 0 hello\n"


def test_failing_command_fails_job_with_reason(kubemr: Kubemr) -> None:
    (kubemr.tmp / "in.txt").write_text("x\n")
    job = kubemr.job(
        "boom",
        inputs=["./in.txt"],
        map="echo starting >&2; echo 'something broke: disk on fire' >&2; exit 3",
        maxAttempts=2,
    )
    proc = kubemr("run", str(job))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "map-0 failed 2 of 2 attempts" in proc.stderr
    assert "exited with code 3" in proc.stderr
    assert "disk on fire" in proc.stderr
    assert "in.txt" in proc.stderr  # names the input
    doc = read_doc(kubemr.run_dir("boom"))
    assert doc["status"]["phase"] == "Failed"
    assert tasks(doc)[0]["a"] == 2
    logs = kubemr("logs", "boom", "--task", "map-0")
    assert logs.returncode == 0 and "disk on fire" in logs.stdout
    first = kubemr("logs", "boom", "--task", "map-0", "--attempt", "1")
    assert "starting" in first.stdout


def test_a_long_traceback_keeps_the_task_input_and_exit_code_in_the_message(
    kubemr: Kubemr,
) -> None:
    """Only the start of the quoted stderr is shortened: the job's message still says which
    task failed, on which input, with which exit code, and ends with the traceback's last line."""
    (kubemr.tmp / "in.txt").write_text("x\n")
    frames = "; ".join(f"echo '  File \"map.py\", line {i}, in step_{i}' >&2" for i in range(300))
    job = kubemr.job(
        "trace",
        inputs=["./in.txt"],
        map=f"echo 'Traceback (most recent call last):' >&2; {frames}; "
        "echo 'ValueError: bad record 17' >&2; exit 3",
        maxAttempts=1,
    )
    proc = kubemr("run", str(job), "-q")
    assert proc.returncode == 1, proc.stderr
    message = read_doc(kubemr.run_dir("trace"))["status"]["message"]
    assert len(message) <= 1000
    assert message.startswith("map-0 failed"), message
    assert "in.txt" in message and "exited with code 3" in message, message
    assert message.endswith("ValueError: bad record 17"), message
    assert "exited with code 3" in proc.stderr and "ValueError: bad record 17" in proc.stderr


def test_hung_command_is_killed_at_timeout(kubemr: Kubemr) -> None:
    (kubemr.tmp / "in.txt").write_text("x\n")
    marker = kubemr.tmp / "sleeper-ran"
    nap = unique_seconds(300)
    job = kubemr.job(
        "hang",
        inputs=["./in.txt"],
        map=f"touch {marker}; echo waiting for the lock >&2; sleep {nap} & wait",
        taskTimeoutSeconds=1,
        maxAttempts=2,
    )
    proc = kubemr("run", str(job), timeout=60)
    assert proc.returncode == 1
    assert "timed out after 1s" in proc.stderr
    assert "the map command's stderr ends with:\nwaiting for the lock" in proc.stderr
    assert marker.exists()
    # The whole process group went: no `sleep` of this test is left behind.
    leftover = sh(f"ps -eo args | grep -c '^sleep {nap}' || true").strip()
    assert leftover == b"0"


def test_bad_manifests_exit_2_with_one_sentence(kubemr: Kubemr) -> None:
    cases = {
        "missing-input": ({"inputs": ["./nope.txt"], "map": "cat"}, "does not exist"),
        "unknown-scheme": ({"inputs": ["ftp://x/y"], "map": "cat"}, "unknown scheme"),
        "no-inputs": ({"inputs": [], "map": "cat"}, "spec.inputs"),
        "neg-partitions": (
            {"inputs": ["x"], "map": "cat", "reduce": "cat", "partitions": -1},
            "spec.partitions",
        ),
        "binary-file": ({"inputs": ["x"], "map": "cat", "files": {"a.sh": 12}}, "spec.files.a.sh"),
        "no-map": ({"inputs": ["x"]}, "spec.map"),
        "typo": ({"inputs": ["x"], "map": "cat", "reducer": "cat"}, "did you mean spec.reduce"),
    }
    for name, (spec, words) in cases.items():
        job = kubemr.job(name, **spec)
        proc = kubemr("run", str(job))
        assert proc.returncode == 2, (name, proc.stderr)
        assert words in proc.stderr, (name, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not kubemr.run_dir(name).exists()  # nothing started
    proc = kubemr("run", str(kubemr.tmp / "absent.yaml"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = kubemr("validate", str(kubemr.job("ok", inputs=["x"], map="cat")))
    assert proc.returncode == 0 and "valid" in proc.stdout


def test_output_with_results_is_refused(kubemr: Kubemr) -> None:
    (kubemr.tmp / "in.txt").write_text("x\n")
    job = kubemr.job("twice", inputs=["./in.txt"], map="cat")
    out = str(kubemr.tmp / "out")
    assert kubemr("run", str(job), "-o", out).returncode == 0
    again = kubemr("run", str(job), "-o", out, "--run-dir", str(kubemr.tmp / "second"))
    assert again.returncode == 2
    assert "already holds results" in again.stderr


def test_replay_map_and_reduce(kubemr: Kubemr) -> None:
    data = kubemr.tmp / "in.txt"
    data.write_text("the cat\nthe dog\n" * 50)
    job = kubemr.job(
        "replay",
        inputs=["./in.txt"],
        map=MAP_SH,
        reduce=REDUCE_SH,
        partitions=2,
        keepIntermediate=True,
    )
    proc = kubemr("run", str(job), "-o", str(kubemr.tmp / "out"))
    assert proc.returncode == 0, proc.stderr
    replayed = kubemr("replay", "replay", "--task", "map-0")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.encode() == sh(MAP_SH + " 2>/dev/null", stdin=data.read_bytes())
    for p in (0, 1):
        red = kubemr("replay", "replay", "--task", f"reduce-{p}")
        assert red.returncode == 0, red.stderr
        assert red.stdout.encode() == (kubemr.tmp / "out" / f"part-r-0000{p}").read_bytes()


def test_no_attempt_leaves_its_scratch_directory_behind(kubemr: Kubemr) -> None:
    """Attempts' scratch directories are removed in the background; a worker waits for that
    before it exits."""
    for i in range(12):
        (kubemr.tmp / f"in{i}.txt").write_text(f"w{i} x\n" * 50)
    inputs = [f"./in{i}.txt" for i in range(12)]
    job = kubemr.job("scratch", inputs=inputs, map=MAP_SH, reduce=REDUCE_SH, partitions=2)
    assert kubemr("run", str(job), "-w", "2").returncode == 0
    scratch = kubemr.run_dir("scratch") / "scratch"
    left = [p for w in scratch.iterdir() for p in w.iterdir() if p.name not in ("pgids", "spool")]
    assert left == [], left
    assert not [p for p in scratch.glob("*/spool/*")]  # nothing read ahead is left either


def test_intermediate_data_removed_after_success(kubemr: Kubemr) -> None:
    (kubemr.tmp / "in.txt").write_text("a\nb\n")
    job = kubemr.job("clean", inputs=["./in.txt"], map="cat", reduce="cat")
    assert kubemr("run", str(job)).returncode == 0
    work = kubemr.run_dir("clean") / "work"
    assert not (work / "data").exists()
    assert any(work.glob("plan-a*.json"))
    replay = kubemr("replay", "clean", "--task", "reduce-0")
    assert replay.returncode == 1 and "spec.keepIntermediate: true" in replay.stderr
    assert "Traceback" not in replay.stderr


@pytest.mark.parametrize("workers", ["1", "4"])
def test_status_and_results_commands(kubemr: Kubemr, workers: str) -> None:
    (kubemr.tmp / "in.txt").write_text("b\na\n")
    job = kubemr.job("st", inputs=["./in.txt"], map="cat", reduce="cat")
    assert kubemr("run", str(job), "-w", workers).returncode == 0
    status = kubemr("status", "st")
    assert status.returncode == 0 and "Succeeded" in status.stdout
    cat = kubemr("results", "st", "--cat")
    assert cat.stdout == "a\nb\n"
    listing = kubemr("results", str(kubemr.run_dir("st")))
    assert listing.stdout.strip().endswith("part-r-00000")
    missing = kubemr("status", "nope")
    assert missing.returncode != 0 and "no local run" in missing.stderr


def test_progress_plain_lines_when_not_a_terminal(kubemr: Kubemr) -> None:
    proc = kubemr("run", str(WORDCOUNT / "job.yaml"), "-w", "2")
    assert proc.returncode == 0
    assert "Succeeded  map 6/6  reduce 2/2" in proc.stderr
    assert "\r" not in proc.stderr
    assert os.path.isdir(proc.stdout.strip())


def test_replay_of_an_input_that_is_gone_says_so_in_one_line(kubemr: Kubemr) -> None:
    data = kubemr.tmp / "in.txt"
    data.write_text("a\nb\n")
    job = kubemr.job("gone", inputs=["./in.txt"], map="cat")
    assert kubemr("run", str(job), "-o", str(kubemr.tmp / "out")).returncode == 0
    data.unlink()
    proc = kubemr("replay", "gone", "--task", "map-0")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "in.txt" in proc.stderr.splitlines()[-1]


def test_a_run_resumes_only_the_same_job(kubemr: Kubemr) -> None:
    """A run directory keeps its job: running a changed manifest (command, partitions,
    another output) against it is refused naming what changed, and running the same
    manifest again after it finished says it finished and how to run it again."""
    (kubemr.tmp / "in.txt").write_text("b a\na\n")
    first = kubemr.job(
        "same", inputs=["./in.txt"], map="tr ' ' '\\n'", reduce="uniq -c", partitions=2
    )
    out = kubemr.tmp / "out"
    done = kubemr("run", str(first), "-o", str(out))
    assert done.returncode == 0, done.stderr
    before = results(out)
    again = kubemr("run", str(first), "-o", str(out))
    assert again.returncode == 0 and "already ran" in again.stderr
    assert "--run-dir NEW-DIR" in again.stderr and again.stdout.strip() == str(out)
    changes: list[tuple[dict[str, Any], list[str], str]] = [
        ({"map": "cat"}, [], "spec.map"),
        ({"partitions": 3}, [], "spec.partitions"),
        ({}, ["-o", str(kubemr.tmp / "elsewhere")], "spec.output"),
    ]
    for change, extra, named in changes:
        spec = {"inputs": ["./in.txt"], "map": "tr ' ' '\\n'", "reduce": "uniq -c", "partitions": 2}
        spec.update(change)
        job = kubemr.job("same", **spec)
        proc = kubemr("run", str(job), *(extra or ["-o", str(out)]))
        assert proc.returncode == 2, proc.stderr
        assert named in proc.stderr and "start a new one" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert results(out) == before
    assert not (kubemr.tmp / "elsewhere").exists()
