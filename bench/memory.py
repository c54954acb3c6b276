"""Peak memory of every kubemr process while one worker maps and reduces one large split.

    .venv/bin/python bench/memory.py [--size-mb 1024] [--partitions 1]

Generates a text file of the given size, runs `kubemr run` with one worker on
it as a single split (map is `cat`, reduce is `cat`), samples the peak RSS
(VmHWM) of the `kubemr run` process and of every `kubemr shim` process until
the job ends, and prints a table. The streaming data path should keep every
kubemr process flat, whatever the input size (target: at most 150 MB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml


def generate(path: Path, size: int) -> None:
    line = b"".join(b"word%05d some text for the benchmark %d\n" % (i, i % 97) for i in range(4096))
    with open(path, "wb") as f:
        written = 0
        while written < size:
            f.write(line)
            written += len(line)


def kubemr_processes(root_pid: int) -> dict[int, str]:
    """The run process and its `kubemr shim` children (commands like cat and sort excluded)."""
    found = {root_pid: "kubemr run"}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        ppid = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:")), 0)
        if ppid == root_pid and b"shim" in cmd:
            found[int(entry)] = "kubemr shim"
    return found


def peak_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--partitions", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kubemr-bench-mem-"))
    try:
        data = work / "input.txt"
        generate(data, args.size_mb * 1024 * 1024)
        job = work / "job.yaml"
        job.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubemr.io/v1alpha1",
                    "kind": "MapReduceJob",
                    "metadata": {"name": "memory"},
                    "spec": {
                        "inputs": [str(data)],
                        "map": "cat",
                        "reduce": "cat",
                        "partitions": args.partitions,
                        "splitSize": "64Gi",
                    },
                }
            )
        )
        env = {**os.environ, "KUBEMR_HOME": str(work / "home")}
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubemr", "run", str(job), "-w", "1", "-q"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        peaks: dict[int, tuple[str, int]] = {}

        def sample() -> None:
            while proc.poll() is None:
                for pid, name in kubemr_processes(proc.pid).items():
                    kib = peak_kib(pid)
                    if kib:
                        peaks[pid] = (name, max(kib, peaks.get(pid, (name, 0))[1]))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        out, err = proc.communicate()
        sampler.join()
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            print(err.decode(), file=sys.stderr)
            return 1
        size = sum(p.stat().st_size for p in Path(out.decode().strip()).glob("part-*"))
        print(
            f"input {args.size_mb} MiB, {args.partitions} partition(s), one worker: "
            f"{elapsed:.1f}s, output {size / 2**20:.0f} MiB"
        )
        print(f"{'process':<14}{'pid':>8}{'peak RSS (MiB)':>16}")
        for pid, (name, kib) in sorted(peaks.items()):
            print(f"{name:<14}{pid:>8}{kib / 1024:>16.1f}")
        worst = max(kib for _, kib in peaks.values()) / 1024
        print(f"max peak RSS of any kubemr process: {worst:.1f} MiB (target: <= 150 MiB)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
