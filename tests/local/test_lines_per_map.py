"""Line-per-task inputs (spec.linesPerMap, Hadoop's NLineInputFormat): every N lines of the
input files are one map task's stdin. Real `kubemr run` processes and shell commands."""

from __future__ import annotations

import gzip

from conftest import Kubemr, read_doc

from kubemr import state


def parts(kubemr: Kubemr, name: str) -> list[bytes]:
    out = kubemr.tmp / f"out-{name}"
    return [p.read_bytes() for p in sorted(out.glob("part-*"))]


def run(kubemr: Kubemr, name: str, **spec: object) -> list[bytes]:
    job = kubemr.job(name, output=str(kubemr.tmp / f"out-{name}"), **spec)
    done = kubemr("run", str(job), "-w", "2", "-q")
    assert done.returncode == 0, done.stderr
    return parts(kubemr, name)


def test_with_one_line_a_task_each_line_is_its_own_map_task(kubemr: Kubemr) -> None:
    urls = [f"https://example.invalid/item/{i}?q={i * i}" for i in range(25)]
    (kubemr.tmp / "urls.txt").write_text("".join(u + "\n" for u in urls))
    got = run(kubemr, "urls", inputs=["urls.txt"], map='cat; echo "$KUBEMR_TASK"', linesPerMap=1)
    assert len(got) == 25
    assert [g.decode().split("\n")[0] for g in got] == urls  # one line each, in order
    assert all(g.count(b"\n") == 2 for g in got)


def test_every_n_lines_of_each_file_whatever_their_ends(kubemr: Kubemr) -> None:
    """Empty lines and CRLF lines count as lines; a last line without a newline is read;
    each file is cut on its own, and opaque inputs stay one task each."""
    (kubemr.tmp / "a.txt").write_bytes(b"l1\nl2\n\nl4\r\nl5\nl6\nl7")
    (kubemr.tmp / "b.txt").write_bytes(b"u1\nu2\nu3\n")
    got = run(
        kubemr,
        "cuts",
        inputs=["a.txt", "b.txt", "opaque:x"],
        map="awk '{ print NR \": \" $0 }'",
        linesPerMap=3,
    )
    assert got == [
        b"1: l1\n2: l2\n3: \n",
        b"1: l4\r\n2: l5\n3: l6\n",
        b"1: l7\n",
        b"1: u1\n2: u2\n3: u3\n",
        b"1: x\n",
    ]


def test_a_reduce_over_line_tasks_gives_what_it_gives_over_splits(kubemr: Kubemr) -> None:
    lines = [f"w{i % 7} w{i % 3}" for i in range(500)]
    (kubemr.tmp / "in.txt").write_text("\n".join(lines) + "\n")
    spec = {
        "inputs": ["in.txt"],
        "map": "tr ' ' '\\n' | awk 'NF { print $0 \"\\t1\" }'",
        "reduce": "awk -F '\\t' '{ s[$1] += $2 } END { for (k in s) print k \"\\t\" s[k] }' | sort",
        "partitions": 2,
    }
    assert run(kubemr, "lines", linesPerMap=37, **spec) == run(kubemr, "splits", **spec)
    assert state.counts(read_doc(kubemr.run_dir("lines")), "map") == (14, 14)  # 500 / 37


def test_a_compressed_input_is_refused_saying_why(kubemr: Kubemr) -> None:
    (kubemr.tmp / "in.txt.gz").write_bytes(gzip.compress(b"a\nb\n"))
    job = kubemr.job("gz", inputs=["in.txt.gz"], map="cat", linesPerMap=1, output="out")
    done = kubemr("run", str(job), "-q")
    assert done.returncode != 0
    assert "in.txt.gz is compressed" in done.stderr and "spec.linesPerMap" in done.stderr
    assert "Traceback" not in done.stderr
