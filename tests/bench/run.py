"""`make bench`: dts's throughput, submit rate, latency, scale and memory, from one run.

Every figure is the median of --reps repetitions, and the machine's process-spawn rate is
measured in the same run so ratios survive a change of machine speed. Results go to
bench-results/dts.json, a Markdown table on stdout and in bench-results/dts.md
(tests/bench/report.py), and the latency distribution in bench-results/latency.svg
(tests/bench/plot.py).

The store is SQLite unless a figure says otherwise; the measures that depend on the store
(throughput at concurrency 2, submit rates, latency, backlog, history reads) are also taken
with a PostgreSQL store, a fresh database of tests.postgres's server per measurement, in the
same run (the "postgres" section, the table's PostgreSQL column). Without a PostgreSQL the
report has the SQLite figures only and says so on stderr; under CI=true that is a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dts.client import Client
from dts.domain import Attempt, Job, JobSpec
from tests import postgres
from tests.bench import servers
from tests.bench.cpu import CpuMeter
from tests.bench.floor import floor
from tests.bench.plot import latency_svg
from tests.bench.report import PIPELINE_WINDOW, render
from tests.bench.stores import Database, describe, write_history
from tests.bench.storm import storm
from tests.harness import BIN, RedisProcess, ServerProcess, WorkerProcess, wait_until

QUIET = ("--log-level", "warning")
SERVER_ARGS = tuple(os.environ.get("DTS_BENCH_SERVER_ARGS", "").split())


def spawn_limit(n: int = 2000, threads: int = 2) -> float:
    """Jobs/s of `subprocess.run(["true"])` from `threads` threads: the physical ceiling."""

    def run(k: int) -> None:
        for _ in range(k):
            subprocess.run(["true"], check=True)

    start = time.perf_counter()
    ts = [threading.Thread(target=run, args=(n // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return n / (time.perf_counter() - start)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    n: int = 5000  # jobs per throughput run
    reps: int = 3
    history: int = 1_000_000  # rows for list/status
    queued: int = 100_000  # backlog for scale and memory
    latency_jobs: int = 300
    latency_warmup: int = 20  # jobs run before latency is measured
    spawns: int = 2000  # `true` processes of one spawn-limit sample
    submits: int = 10_000  # jobs of the batch and --from-file submit rates
    singles: int = 2000  # single submits, each waited for
    pipelined: int = 5000  # single submits kept on their way
    load_jobs: int = 2000  # jobs being worked while the memory under load is sampled
    storm_waiters: int = 500  # WaitJob calls long-polling through the storm
    storm_hanging: int = 100  # calls that never send their request, through the storm
    storm_calls: int = 300  # ping, status and heartbeat calls timed, idle and in the storm
    floor_tries: int = 1000  # tries of each step of the floor


FULL = Sizes()
QUICK = replace(FULL, n=200, reps=1, history=5000, queued=2000, latency_jobs=30)
# every measurement, as small as it goes and still measures something (tests/system)
SMOKE = Sizes(
    n=50,
    reps=1,
    history=1000,
    queued=200,
    latency_jobs=5,
    latency_warmup=3,
    spawns=200,
    submits=200,
    singles=50,
    pipelined=100,
    load_jobs=100,
    storm_waiters=50,
    storm_hanging=10,
    storm_calls=20,
    floor_tries=30,
)


class Bench:
    """One redis-server and dts-server per measurement, torn down afterwards. The server's
    store is SQLite, or with store="postgres" a fresh database on the PostgreSQL server of
    `postgres` (its admin URL), dropped after the measurement."""

    def __init__(
        self,
        root: Path,
        sizes: Sizes = FULL,
        store: str = "sqlite",
        postgres: str | None = None,
        server_args: tuple[str, ...] = (),
    ) -> None:
        if store not in ("sqlite", "postgres") or (store == "postgres" and not postgres):
            raise ValueError(f"store {store!r} (PostgreSQL admin URL {postgres!r})")
        self.root = root
        self.sizes = sizes
        self.store = store
        self.postgres = postgres
        self.server_args = server_args  # after the bench's own (DTS_BENCH_SERVER_ARGS)

    def on(self, store: str) -> Bench:
        """The same bench with another store."""
        return Bench(self.root, self.sizes, store, self.postgres, self.server_args)

    def relaxed(self) -> Bench:
        """The same bench with SQLite's commits not flushed to disk one by one (the server's
        --sqlite-synchronous normal: the README says what it risks)."""
        return Bench(self.root, self.sizes, "sqlite", None, ("--sqlite-synchronous", "normal"))

    def cluster(self, workers: int, concurrency: int) -> tuple[list[Any], Client, ServerProcess]:
        d = Path(tempfile.mkdtemp(dir=self.root))
        procs: list[Any] = []
        try:
            db = None
            if self.store == "postgres":
                assert self.postgres is not None
                procs.append(Database(self.postgres))  # first: dropped last, after the server
                db = procs[-1].url
            r = RedisProcess(d)
            r.start()
            procs.append(r)
            s = ServerProcess(d, r.url, *QUIET, *SERVER_ARGS, *self.server_args, db=db)
            procs.append(s)
            s.start()
            ws = [
                WorkerProcess(
                    d, s.address, r.url, f"bench{i}", "--concurrency", str(concurrency), *QUIET
                )
                for i in range(workers)
            ]
            procs += ws
            for w in ws:  # all at once: their start-up is not measured
                w.start(wait=False)
            for w in ws:
                w.wait_registered()
        except BaseException:
            self.down(procs, None)
            raise
        return procs, Client(s.address, timeout=60), s

    @staticmethod
    def down(procs: list[Any], client: Client | None) -> None:
        if client is not None:
            client.close()
        workers = [p for p in procs if isinstance(p, WorkerProcess)]
        for w in workers:  # all drain at once
            w.signal(signal.SIGTERM)
        for p in reversed(procs):
            p.stop(timeout=30) if not isinstance(p, RedisProcess) else p.kill()

    def throughput(
        self,
        n: int,
        workers: int = 1,
        concurrency: int = 2,
        backlog: int = 0,
        cpu: dict[str, float] | None = None,
    ) -> float:
        """Jobs/s of n `true` jobs (first start to last end, from the history). With `cpu` (one
        worker only), that dict gets the CPU per job, in microseconds, of the server, the
        worker, its job processes ("jobs") and redis-server, from submit to all finished (the
        server's includes answering the polls for the end, a few calls each 0.2 s; with
        PostgreSQL, the database's own processes are not counted)."""
        procs, c, s = self.cluster(workers, concurrency)
        try:
            if backlog:
                for i in range(0, backlog, 20_000):
                    c.submit([JobSpec(argv=("true",), queue="backlog")] * min(20_000, backlog - i))
            meter = _meter(procs, s) if cpu is not None else None
            if meter is not None:
                assert workers == 1, "CPU per job is of one worker's"
                meter.start()
            jobs = c.submit([JobSpec(argv=("true",))] * n)
            last = jobs[-1].id
            wait_until(
                lambda: (
                    all(c.get(j).status.final for j in (jobs[0].id, last))
                    and _count(c, "succeeded", "default") == n
                ),
                600,
                0.2,
            )
            if meter is not None and cpu is not None:
                cpu.update(meter.stop(n, children_of="worker", children="jobs"))
            done = c.list_jobs(limit=n, queue="default")
            first = min(j.started_at or 0 for j in done)
            end = max(j.finished_at or 0 for j in done)
            return n / (end - first)
        finally:
            self.down(procs, c)

    def throughput_cpu(self, n: int) -> tuple[float, dict[str, float]]:
        """throughput(n) at 1 worker, concurrency 2, and the CPU per job of that run."""
        cpu: dict[str, float] = {}
        return self.throughput(n, 1, 2, cpu=cpu), cpu

    def submit_rates(self, n: int) -> dict[str, float]:
        procs, c, s = self.cluster(0, 1)
        try:
            c.submit([JobSpec(argv=("true",), queue="warm")] * 100)  # not counted: warm-up
            start = time.perf_counter()
            c.submit([JobSpec(argv=("true",), queue="q1")] * n)
            batch = n / (time.perf_counter() - start)
            lines = Path(self.root / "lines.txt")
            lines.write_text("true\n" * n)
            start = time.perf_counter()
            subprocess.run(
                [
                    str(BIN / "dts-client"),
                    "--server",
                    s.address,
                    "submit",
                    "--queue",
                    "q2",
                    "--from-file",
                    str(lines),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            from_file = n / (time.perf_counter() - start)
            singles = self.sizes.singles
            start = time.perf_counter()
            for _ in range(singles):
                c.submit_one(JobSpec(argv=("true",), queue="q3"))
            single = singles / (time.perf_counter() - start)
            pipelined = _pipelined(c, self.sizes.pipelined, PIPELINE_WINDOW)
            return {
                "batch_per_s": batch,
                "from_file_per_s": from_file,
                "single_per_s": single,
                "pipelined_per_s": pipelined,
            }
        finally:
            self.down(procs, c)

    def latency(self, n: int) -> dict[str, float]:
        return self.latency_run(n)[0]

    def latency_run(self, n: int) -> tuple[dict[str, float], dict[str, list[float]]]:
        """p50 and p99 of n jobs' latency, one at a time, and the samples (ms): submit ->
        started_at ("start"), submit -> finished_at ("ended": the job's end as the server
        recorded it, on the worker's report), submit -> Client.wait returned ("finish")."""
        procs, c, _ = self.cluster(1, 2)
        try:
            for _ in range(self.sizes.latency_warmup):  # not counted: first calls, first spawns
                c.wait(c.submit_one(JobSpec(argv=("true",))).id, 30)
            samples: dict[str, list[float]] = {"start": [], "ended": [], "finish": []}
            steps: list[tuple[float, ...]] = []
            for _ in range(n):
                t0 = time.time()
                job = c.submit_one(JobSpec(argv=("true",)))
                done = c.wait(job.id, 30)
                t1 = time.time()
                ran = c.history(job.id)[-1]  # the worker's own times of the command
                samples["start"].append(((done.started_at or t0) - job.created_at) * 1000)
                samples["ended"].append(((ran.ran_until or t1) - t0) * 1000)
                samples["finish"].append((t1 - t0) * 1000)
                steps.append(_steps(t0, done, ran, t1))
            figures = {f"{k}_p{p}_ms": pct(v, p) for k, v in samples.items() for p in (50, 99)}
            figures.update(
                {f"step {name} p50 ms": pct([s[i] for s in steps], 50) for i, name in STEPS}
            )
            return figures, {k: [round(x, 2) for x in v] for k, v in samples.items()}
        finally:
            self.down(procs, c)

    def memory(self, queued: int) -> dict[str, float]:
        procs, c, s = self.cluster(1, 2)
        try:
            server, worker = s.pid, procs[2].pid
            idle = {"server_idle_mb": rss_mb(server), "worker_idle_mb": rss_mb(worker)}
            load = self.sizes.load_jobs
            jobs = c.submit([JobSpec(argv=("true",))] * load)
            time.sleep(0.5)  # sample while the jobs are being worked
            under_load = {"server_load_mb": rss_mb(server), "worker_load_mb": rss_mb(worker)}
            wait_until(lambda: c.get(jobs[-1].id).status.final, 300, 0.2)
            for i in range(0, queued, 20_000):
                c.submit([JobSpec(argv=("true",), queue="parked")] * min(20_000, queued - i))
            db = Path(s.db)
            size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
            return {
                **idle,
                **under_load,
                "server_queued_mb": rss_mb(server),
                "sqlite_bytes_per_job": size / (queued + load),
            }
        finally:
            self.down(procs, c)

    def history_reads(self, rows: int) -> dict[str, float]:
        """list/status latency with `rows` jobs in history (rows written straight to the
        store's jobs table, the server stopped)."""
        procs, c, s = self.cluster(0, 1)
        try:
            c.submit([JobSpec(argv=("true",))])  # creates the schema
            s.stop()
            write_history(self.store, s.db, rows, time.time())
            s.start()
            ids = [rows // 2 + k for k in range(200)]
            status = _timed(lambda: [c.get(i) for i in ids]) / len(ids)
            listing = _timed(lambda: [c.list_jobs(limit=50) for _ in range(50)]) / 50
            filtered = _timed(lambda: [c.list_jobs(limit=50, queue="default") for _ in range(50)])
            return {
                "status_ms": status * 1000,
                "list_ms": listing * 1000,
                "list_queue_ms": filtered / 50 * 1000,
            }
        finally:
            self.down(procs, c)


def _pipelined(c: Client, n: int, window: int) -> float:
    """Single submits per second from one client that keeps `window` of them on their way
    (Client.submit_async over one SubmitStream), each waited for in turn."""
    spec = JobSpec(argv=("true",), queue="q4")
    on_the_way: list[Any] = []
    start = time.perf_counter()
    for _ in range(n):
        on_the_way.append(c.submit_async([spec]))
        if len(on_the_way) >= window:
            on_the_way.pop(0).result(60)
    for pending in on_the_way:
        pending.result(60)
    return n / (time.perf_counter() - start)


def _meter(procs: list[Any], s: ServerProcess) -> CpuMeter:
    """A CpuMeter of the cluster's server, (first) worker and redis-server."""
    worker = next(p for p in procs if isinstance(p, WorkerProcess))
    redis = next(p for p in procs if isinstance(p, RedisProcess))
    return CpuMeter({"server": s.pid, "worker": worker.pid, "redis": redis.pid})


def _count(c: Client, status: str, queue: str) -> int:
    return sum(s.count for s in c.stats() if s.status.value == status and s.queue == queue)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_of(reps: int, fn: Callable[[], Any]) -> Any:
    results = [fn() for _ in range(reps)]
    if isinstance(results[0], dict):
        return medians(results)
    return statistics.median(results)


def medians(results: list[dict[str, float]]) -> dict[str, float]:
    """The median of each key over results (of one shape)."""
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, help=f"jobs per throughput run ({FULL.n})")
    ap.add_argument("--reps", type=int, help=f"repetitions ({FULL.reps})")
    ap.add_argument("--history", type=int, help=f"rows for list/status ({FULL.history})")
    ap.add_argument("--queued", type=int, help=f"backlog for scale and memory ({FULL.queued})")
    ap.add_argument("--latency-jobs", type=int, help=f"({FULL.latency_jobs})")
    ap.add_argument("--out", default="bench-results")
    preset = ap.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    preset.add_argument(
        "--smoke", action="store_true", help="every measurement, tiny (seconds; for tests)"
    )
    a = ap.parse_args()
    sizes = QUICK if a.quick else SMOKE if a.smoke else FULL
    given = {
        k: v for k in ("n", "reps", "history", "queued", "latency_jobs") if (v := getattr(a, k))
    }
    sizes = replace(sizes, **given)
    out = Path(a.out)
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dts-bench-") as tmp, contextlib.ExitStack() as pg:
        r = measure(Bench(Path(tmp), sizes, postgres=_postgres_server(pg)))
    (out / "dts.json").write_text(json.dumps(r, indent=2) + "\n")
    table = render(r)
    (out / "dts.md").write_text(table)
    (out / "latency.svg").write_text(latency_svg(r))
    print(table)
    return 0


def measure(b: Bench) -> dict[str, Any]:
    """Every figure of the report, each the median of `reps` runs."""
    z = b.sizes
    r: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "n": z.n,
        "reps": z.reps,
        "queued": z.queued,
    }
    step = _progress()
    r["spawn_limit_per_s"] = median_of(z.reps, lambda: spawn_limit(z.spawns))
    step("spawn limit", r["spawn_limit_per_s"])
    pg = b.on("postgres") if b.postgres else None
    pairs, pg_cpu = measure_c2(b, pg, r, z.reps, step)
    r["throughput_c4"] = median_of(z.reps, lambda: b.throughput(z.n, 1, 4))
    step("throughput c4", r["throughput_c4"])
    r["spawn_fraction_c2"] = r["throughput_c2"] / r["spawn_limit_per_s"]
    r["submit"] = median_of(z.reps, lambda: b.submit_rates(max(z.n, z.submits)))
    step("submit", r["submit"])
    r["latency"], r["latency_samples"] = latency_of(b, z.reps)
    step("latency", r["latency"])
    r["floor"] = floor(b.root, z.floor_tries)
    step("floor", r["floor"])
    r["relaxed"] = measure_relaxed(b.relaxed())
    step("relaxed", r["relaxed"])
    r["workers"] = {
        str(k): median_of(z.reps, lambda k=k: b.throughput(z.n, k, 2)) for k in (1, 2, 4)
    }
    step("workers", r["workers"])
    r["backlog"] = {
        str(k): median_of(z.reps, lambda k=k: b.throughput(z.n, 1, 2, k))
        for k in (0, z.queued // 10, z.queued)
    }
    step("backlog", r["backlog"])
    r["history"] = b.history_reads(z.history)
    step("history", r["history"])
    r["memory"] = b.memory(z.queued)
    step("memory", r["memory"])
    r["storm"] = median_of(
        z.reps, lambda: storm(b.root, z.storm_waiters, z.storm_hanging, z.storm_calls)
    )
    step("storm", r["storm"])
    if pg is not None:
        r["postgres"] = measure_postgres(pg, r, pairs, pg_cpu, step)
        one = r["postgres"]["throughput_c2"]
        r["servers"] = servers.measure(b.root, pg.postgres or "", z.n, z.reps, one)
        step("two servers", r["servers"])
    return r


def measure_c2(
    b: Bench, pg: Bench | None, r: dict[str, Any], reps: int, step: Callable[[str, Any], None]
) -> tuple[list[tuple[float, float]], dict[str, float]]:
    """Throughput and CPU per job at 1 worker, concurrency 2, SQLite's into r. With
    PostgreSQL, the two stores take turns, so that their ratio is of runs minutes apart at
    most: returned are the (SQLite, PostgreSQL) throughput pairs and PostgreSQL's CPU."""
    runs = [(b.throughput_cpu(b.sizes.n), pg.throughput_cpu(b.sizes.n) if pg else None)
            for _ in range(reps)]  # fmt: skip
    r["throughput_c2"] = statistics.median(sq[0] for sq, _ in runs)
    r["cpu_us_per_job"] = medians([sq[1] for sq, _ in runs])
    step("throughput c2", r["throughput_c2"])
    step("CPU per job, us", r["cpu_us_per_job"])
    if pg is None:
        return [], {}
    cpu = medians([q[1] for _, q in runs if q])
    step("throughput c2, PostgreSQL", statistics.median(q[0] for _, q in runs if q))
    step("CPU per job, us, PostgreSQL", cpu)
    return [(sq[0], q[0]) for sq, q in runs if q], cpu


# A job's way from submit to the waiting client's answer, step by step (ms, by the clocks of
# one machine): client and server times, the worker's own times of the command.
STEPS = tuple(enumerate(("submit", "claim", "to the command", "command", "report", "answer")))


def _steps(t0: float, job: Job, ran: Attempt, t1: float) -> tuple[float, ...]:
    """Into the server's transaction; to the claim's commit (queued in Redis, a worker woken,
    its claim); to the command's start (the claim's answer, the spawn); the command; to the
    result's commit (the report); to the waiting client's answer."""
    marks = (t0, job.created_at, job.started_at, ran.ran_from, ran.ran_until, job.finished_at, t1)
    if any(m is None for m in marks):
        raise RuntimeError(f"job {job.id} lacks a time of its way: {marks}")
    return tuple((b - a) * 1000 for a, b in itertools.pairwise(marks))  # type: ignore[operator]


def measure_relaxed(b: Bench) -> dict[str, float]:
    """Latency and waited-for single submits with SQLite's commits not flushed one by one."""
    z = b.sizes
    latency = medians([b.latency(z.latency_jobs) for _ in range(z.reps)])
    singles = median_of(z.reps, lambda: b.submit_rates(max(z.n, z.submits))["single_per_s"])
    return {**latency, "single_per_s": singles}


def latency_of(b: Bench, reps: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Each latency figure the median of `reps` runs, and the samples of one real run: the
    one whose submit->finished p50 is the median (of an even count, the lower middle one)."""
    runs = [b.latency_run(b.sizes.latency_jobs) for _ in range(reps)]
    middle = sorted(runs, key=lambda run: run[0]["finish_p50_ms"])[(len(runs) - 1) // 2]
    return medians([figures for figures, _ in runs]), middle[1]


def measure_postgres(
    pg: Bench,
    r: dict[str, Any],
    pairs: list[tuple[float, float]],
    cpu: dict[str, float],
    step: Callable[[str, Any], None],
) -> dict[str, Any]:
    """The store-bound figures with the PostgreSQL store: throughput at concurrency 2 (from
    `pairs`, runs of SQLite and PostgreSQL taken in turn, and its CPU per job), submit
    rates, latency, backlog and history reads; each the median of `reps` runs, history reads
    once as SQLite's."""
    assert pg.postgres is not None
    z = pg.sizes
    p: dict[str, Any] = {"server": describe(pg.postgres), "cpu_us_per_job": cpu}
    p["throughput_c2"] = statistics.median(q for _, q in pairs)
    p["spawn_fraction_c2"] = p["throughput_c2"] / r["spawn_limit_per_s"]
    p["throughput_ratio"] = statistics.median(q / sq for sq, q in pairs)  # of SQLite's
    p["submit"] = median_of(z.reps, lambda: pg.submit_rates(max(z.n, z.submits)))
    step("submit, PostgreSQL", p["submit"])
    p["latency"], p["latency_samples"] = latency_of(pg, z.reps)
    step("latency, PostgreSQL", p["latency"])
    p["backlog"] = {
        str(k): median_of(z.reps, lambda k=k: pg.throughput(z.n, 1, 2, k))
        for k in (0, z.queued // 10, z.queued)
    }
    step("backlog, PostgreSQL", p["backlog"])
    p["history"] = pg.history_reads(z.history)
    step("history, PostgreSQL", p["history"])
    return p


def _postgres_server(stack: contextlib.ExitStack) -> str | None:
    """The admin URL of tests.postgres's server, kept for the run by `stack`; None, said on
    stderr, when there is none (under CI=true that fails the run)."""
    try:
        return stack.enter_context(postgres.server())
    except RuntimeError as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise RuntimeError(f"CI must benchmark the PostgreSQL store: {e}") from e
        print(
            f"bench: no PostgreSQL ({e}); the report has the SQLite figures only",
            file=sys.stderr,
            flush=True,
        )
        return None


def _progress() -> Callable[[str, Any], None]:
    start = time.monotonic()

    def step(name: str, value: Any) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {name}: {value}", file=sys.stderr, flush=True)

    return step


if __name__ == "__main__":
    sys.exit(main())
