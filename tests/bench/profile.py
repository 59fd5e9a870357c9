"""`make bench-profile`: where the CPU of dts-server and dts-worker goes (py-spy): profile.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dts.domain import JobSpec
from tests.bench.run import Bench
from tests.bench.servers import jobs_per_s
from tests.harness import BIN, WorkerProcess, wait_until

RATE = 250  # samples a second
# A sample's category is that of the innermost frame (leaf first) whose file matches one of
# these, in this order for a frame matching several; a sample matching none is "other".
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("logging/",)),
    ("store (SQLite, PostgreSQL)", ("sqlite3/", "psycopg", "dts/server/store/")),
    ("Redis", ("redis/",)),
    ("job processes: spawn, pipes, wait", ("subprocess.py", "dts/worker/runner.py")),
    ("gRPC, protobuf", ("grpc/", "grpc_", "google/protobuf/", "dts/v1/", "dts/wire")),
    ("threads, locks, event loop", ("threading.py", "queue.py", "asyncio/", "concurrent/")),
    ("dts's own code", ("dts/",)),
)
TOP = 15  # functions listed by self samples


@dataclass(frozen=True)
class Frame:
    function: str
    file: str


def parse_raw(text: str) -> Counter[tuple[Frame, ...]]:
    """py-spy's raw (collapsed) format: a line per stack, `frame;frame;... COUNT`, root first,
    each frame `function (file:line)`. Stacks, leaf first, with their sample counts."""
    stacks: Counter[tuple[Frame, ...]] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        stacks[tuple(reversed(frames))] += int(count)
    return stacks


def _frame(text: str) -> Frame:
    function, _, where = text.partition(" (")
    return Frame(function, where.rstrip(")").rsplit(":", 1)[0])


# A thread whose only Python frame is Thread.run runs a C function: in the dts-server, gRPC's
# poller thread (cygrpc's _poll_wrapper), the one such thread there (py-spy dump shows it).
C_THREAD = ("Thread.run", "Thread._bootstrap_inner", "Thread._bootstrap")
C_THREAD_CATEGORY = "gRPC, protobuf"


def category(stack: tuple[Frame, ...]) -> str:
    if tuple(f.function for f in stack) == C_THREAD:
        return C_THREAD_CATEGORY
    for frame in stack:
        for name, patterns in CATEGORIES:
            if any(p in frame.file for p in patterns):
                return name
    return "other"


def summarise(stacks: Counter[tuple[Frame, ...]]) -> dict[str, Any]:
    """Samples in all, each category's and the TOP functions' by self samples (leaf frame)."""
    total = sum(stacks.values())
    cats: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for stack, n in stacks.items():
        cats[category(stack)] += n
        if stack:
            own[_name(stack[0])] += n
    return {"samples": total, "categories": cats.most_common(), "functions": own.most_common(TOP)}


def _name(frame: Frame) -> str:
    """file:function, with the code dataclasses generate for __init__ said as such."""
    if frame.file == "<string>" and frame.function.endswith("__create_fn__.<locals>.__init__"):
        return "a dataclass's generated __init__"
    return f"{_short(frame.file)}:{frame.function}"


def _short(file: str) -> str:
    """A file from its package on (py-spy mostly prints them so already): .../site-packages/
    grpc/_channel.py is grpc/_channel.py, /usr/lib/python3.11/logging/x.py logging/x.py."""
    if "site-packages/" in file:
        return file.rpartition("site-packages/")[2]
    if "/lib/python3" in file:
        return file.partition("/lib/python3")[2].partition("/")[2]
    if "/dts/" in file:
        return "dts/" + file.rpartition("/dts/")[2]
    return file


class Spy:
    """`py-spy record` on one process, raw format, idle samples left out; stop() ends it,
    leaving its samples in `output` and the process's CPU seconds meanwhile in `cpu_s`."""

    def __init__(self, name: str, pid: int, output: Path) -> None:
        self.name, self.pid, self.output = name, pid, output
        self.log = output.with_suffix(".log")
        argv = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--rate", str(RATE)]
        argv += ["--format", "raw", "--output", str(output), "--nonblocking"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_until(
            lambda: "Sampling" in self.log.read_text() or self.proc.poll() is not None,
            30,
            0.05,
            f"py-spy to attach to {pid}",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"py-spy could not sample {pid}: {self.log.read_text()}")
        self._cpu0 = cpu_seconds(pid)
        self.cpu_s = 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.cpu_s = cpu_seconds(self.pid) - self._cpu0
            self.proc.send_signal(signal.SIGINT)  # as Ctrl+C: it writes its samples and exits
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process so far (/proc/PID/stat utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(b: Bench, n: int, out: Path | None = None, tag: str = "") -> tuple[float, list[Spy]]:
    """One throughput run (1 worker, concurrency 2, `n` `true` jobs): its jobs/s. With `out`,
    py-spy samples the server and the worker while the jobs run (profile-NAME{tag}.txt there);
    the spies, stopped, come back too."""
    procs, c, s = b.cluster(1, 2)
    spies: list[Spy] = []
    try:
        w = next(p for p in procs if isinstance(p, WorkerProcess))
        if out is not None:
            for name, pid in (("dts-server", s.pid), ("dts-worker", w.pid)):
                spies.append(Spy(name, pid, out / f"profile-{name}{tag}.txt"))
        jobs = c.submit([JobSpec(argv=("true",))] * n)
        last = jobs[-1].id
        wait_until(lambda: c.get(last).status.final and _succeeded(c) == n, 600, 0.2, f"{n} jobs")
        for spy in spies:
            spy.stop()
        return jobs_per_s(c.list_jobs(limit=n)), spies
    finally:
        for spy in spies:
            spy.stop()
        b.down(procs, c)


def _succeeded(c: Any) -> int:
    return sum(s.count for s in c.stats() if s.status.value == "succeeded")


def render(r: dict[str, Any]) -> str:
    """profile.md: the run, then per process its categories and top functions."""
    off, on = r["jobs_per_s_without"], r["jobs_per_s_with"]
    lines = [
        f"# Where the CPU goes: dts-server and dts-worker, {r['date']}",
        "",
        f"{r['machine']}. Throughput runs of {r['n']:,} `true` jobs, 1 worker of concurrency 2,"
        f" the SQLite store, server and worker at `--log-level warning`. py-spy {r['py_spy']}"
        f" sampled each process {RATE} times a second (`--nonblocking`, idle threads left"
        " out), so a share below is of the samples of a process's busy threads.",
        "",
        f"The profiler taxes the run: {on:,.0f} jobs/s with it attached, {off:,.0f} jobs/s"
        f" without ({on / off:.0%}; medians of {r['reps']} runs each, taken in turn; this"
        " machine's noise is large). The samples below are of every profiled run together.",
        "",
        "A sample's category is that of its innermost frame whose file matches a rule"
        " (tests/bench/profile.py CATEGORIES); the functions are counted by self samples"
        " (the frame on top of the stack; time in C code counts to the Python function"
        " that called it). Samples of a thread whose only frame is `Thread.run` (a C"
        " function's thread: gRPC's poller in the server) count as gRPC.",
    ]
    for name, p in r["processes"].items():
        total = p["samples"] or 1
        lines += ["", f"## {name}: {p['samples']:,} samples", ""]
        lines += [
            f"{p['samples'] / RATE:.1f} s of busy threads at {RATE} samples/s; the process used"
            f" {p['cpu_s']:.1f} s of CPU meanwhile (/proc). py-spy counts a thread waiting on"
            " the disk as busy (one looping on fsync is sampled throughout; one in epoll_wait"
            " is not), so the store's durable commits hold waiting time as well as CPU.",
            "",
        ]
        lines += ["| category | samples | share |", "|---|---:|---:|"]
        lines += [f"| {c} | {k:,} | {k / total:.1%} |" for c, k in p["categories"]]
        lines += ["", f"Top {TOP} functions by self samples:", ""]
        lines += ["| function | samples | share |", "|---|---:|---:|"]
        lines += [f"| `{f}` | {k:,} | {k / total:.1%} |" for f, k in p["functions"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=5000, help="jobs of each throughput run")
    ap.add_argument("--reps", type=int, default=2, help="runs without and with the profiler")
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(exist_ok=True)
    version = subprocess.run([str(BIN / "py-spy"), "--version"], capture_output=True, text=True)
    without, with_spy, spies = [], [], []
    with tempfile.TemporaryDirectory(prefix="dts-profile-") as tmp:
        b = Bench(Path(tmp))
        for rep in range(a.reps):  # in turn, so that the machine's drift touches both alike
            without.append(run(b, a.n)[0])
            rate, some = run(b, a.n, out, f"-{rep + 1}")
            with_spy.append(rate)
            spies += some
    r: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "n": a.n,
        "reps": a.reps,
        "py_spy": version.stdout.split()[-1] if version.stdout else "?",
        "jobs_per_s_without": statistics.median(without),
        "jobs_per_s_with": statistics.median(with_spy),
        "processes": {name: merged(spies, name) for name in ("dts-server", "dts-worker")},
    }
    (out / "profile.json").write_text(json.dumps(r, indent=2) + "\n")
    report = render(r)
    (out / "profile.md").write_text(report)
    print(report)
    return 0


def merged(spies: list[Spy], name: str) -> dict[str, Any]:
    """The summary of every profiled run's samples of process `name`, and its CPU seconds."""
    stacks: Counter[tuple[Frame, ...]] = Counter()
    for spy in spies:
        if spy.name == name:
            stacks.update(parse_raw(spy.output.read_text()))
    cpu = sum(spy.cpu_s for spy in spies if spy.name == name)
    return {**summarise(stacks), "cpu_s": cpu}


if __name__ == "__main__":
    sys.exit(main())
