"""`make bench`'s several-servers figures: two servers, one PostgreSQL: throughput, failover."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from dts.client import Client
from dts.domain import Job, JobSpec
from dts.errors import DtsError
from tests import postgres
from tests.harness import RedisProcess, ServerProcess, WorkerProcess, wait_until

QUIET = ("--log-level", "warning")  # as tests/bench/run.py's servers and workers
# the failover's servers log at info: the takeover of the duties is an info line
LEADS = "this server now leads"
BATCH = 500  # jobs per submit of the throughput run
FEED_BATCH, FEED_EVERY = 5, 0.02  # the steady stream during a failover: 250 jobs/s at most,
# below what two servers run on a loaded 2-core machine, so that no backlog grows
HISTORY = 2000  # newest jobs read for a worker's starts (more than the stream adds meanwhile)
POLL = 0.01  # seconds between looks at a server's log


@dataclass
class Pair:
    """Two servers on one database, one Redis, a worker each: server i's worker names server i
    first and the other second."""

    redis: RedisProcess
    servers: list[ServerProcess]
    workers: list[WorkerProcess] = field(default_factory=list)

    def every(self, first: int) -> str:
        """Both servers' addresses, server `first`'s first."""
        order = [self.servers[first], self.servers[1 - first]]
        return ",".join(s.address for s in order)


@contextlib.contextmanager
def pair(root: Path, admin_url: str, server_log: tuple[str, ...] = QUIET) -> Iterator[Pair]:
    """A fresh database, a redis-server, two servers (the first leading: the second starts once
    the first says so, when it logs at info) and a worker of concurrency 2 each. Every process
    is stopped and the database dropped at the end, however it ends."""
    d = Path(tempfile.mkdtemp(dir=root))
    db = postgres.create_database(admin_url)
    redis = RedisProcess(d)
    p = Pair(redis, [ServerProcess(d, redis.url, *server_log, db=db) for _ in range(2)])
    try:
        redis.start()
        a, b = p.servers
        a.start()
        if "info" in server_log:
            wait_until(lambda: LEADS in a.output(), 15, POLL, "the first server to lead")
        b.start()
        for i in range(2):
            w = WorkerProcess(d, p.every(i), redis.url, f"w{i}", "--concurrency", "2", *QUIET)
            p.workers.append(w)
            w.start(wait=False)
        for w in p.workers:
            w.wait_registered()
        yield p
    finally:
        for w in p.workers:  # all drain at once
            w.signal(signal.SIGTERM)
        for w in p.workers:
            w.stop(timeout=30)
        for s in p.servers:
            s.stop(timeout=30)
        redis.kill()
        postgres.drop_database(admin_url, db)


def jobs_per_s(jobs: list[Job]) -> float:
    """Jobs per second from the first start to the last finish, as Bench.throughput counts."""
    first = min(j.started_at or 0 for j in jobs)
    end = max(j.finished_at or 0 for j in jobs)
    return len(jobs) / (end - first)


def finished(c: Client, n: int, timeout: float = 600) -> list[Job]:
    """The `n` newest jobs once every one of them has ended (read through `c`)."""

    def done() -> list[Job]:
        jobs = c.list_jobs(limit=n)
        return jobs if len(jobs) == n and all(j.status.final for j in jobs) else []

    return wait_until(done, timeout, 0.2, f"{n} jobs to end")


def throughput(root: Path, admin_url: str, n: int) -> float:
    """`n` `true` jobs, half submitted through each server in batches of BATCH taking turns,
    run by the two workers: jobs/s from the first start to the last finish."""
    with pair(root, admin_url) as p:
        clients = [Client(s.address, timeout=60) for s in p.servers]
        try:
            for k, i in enumerate(range(0, n, BATCH)):
                clients[k % 2].submit([JobSpec(argv=("true",))] * min(BATCH, n - i))
            return jobs_per_s(finished(clients[0], n))
        finally:
            for c in clients:
                c.close()


class Feed:
    """A steady stream of short jobs through a client naming both servers: FEED_BATCH `true`
    jobs every FEED_EVERY seconds, on a thread of its own, until stop()."""

    def __init__(self, addresses: str) -> None:
        self.client = Client(addresses, timeout=30)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        spec = JobSpec(argv=("true",))
        while not self._stop.wait(FEED_EVERY):  # pacing, not synchronisation
            try:
                self.client.submit([spec] * FEED_BATCH)
            except DtsError:
                self.errors += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self.client.close()


def started_by(c: Client, worker: str, after: float) -> float:
    """When `worker` first started a job after the wall-clock time `after`, by the history
    (the newest HISTORY jobs); 0 while it has started none."""
    starts = [
        j.started_at
        for j in c.list_jobs(limit=HISTORY)
        if j.worker == worker and j.started_at is not None and j.started_at > after
    ]
    return min(starts) if starts else 0.0


class LogTail:
    """Whether a process's log has said something since this was made (reads new bytes only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size
        self.tail = b""

    def said(self, text: str) -> bool:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            new = f.read()
        self.offset += len(new)
        self.tail = self.tail[-len(text) :] + new
        return text.encode() in self.tail


def failover(root: Path, admin_url: str) -> dict[str, float]:
    """Both workers busy with a steady stream of jobs from a client naming both servers; the
    first server (the client's, its worker's, and the one holding the duties) is killed with
    SIGKILL. Seconds from the kill until: a client's next submit is acknowledged through the
    other server; the killed server's worker starts a job again (its start in the history);
    the other server logs that it leads (seen by polling every POLL seconds)."""
    with pair(root, admin_url, ("--log-level", "info")) as p:
        dead, other = p.servers
        feed = Feed(p.every(0))
        probe = Client(p.every(0), timeout=30)
        survivor = Client(other.address, timeout=10)
        try:
            probe.submit([JobSpec(argv=("true",))])
            assert probe.channel.address == dead.address  # type: ignore[attr-defined]
            feed.start()
            since = time.time()
            for w in p.workers:  # both busy before the kill
                wait_until(partial(started_by, survivor, w.name, since), 30, 0.1, w.name)
            log = LogTail(other.log_path)
            killed_at, t0 = time.time(), time.monotonic()
            dead.kill()  # SIGKILL, and reaped: a start recorded after `dead_at` went through other
            dead_at = time.time()
            probe.submit([JobSpec(argv=("true",))])
            submit = time.monotonic() - t0
            assert probe.channel.address == other.address  # type: ignore[attr-defined]

            def took_the_lead() -> float:
                return time.monotonic() - t0 if log.said(LEADS) else 0.0

            leads = wait_until(took_the_lead, 30, POLL, LEADS)
            start = wait_until(  # the start's time is the history's: no need to poll often
                lambda: started_by(survivor, p.workers[0].name, dead_at), 30, 0.1, "a start"
            )
            return {"submit_s": submit, "worker_start_s": start - killed_at, "duties_s": leads}
        finally:
            feed.stop()
            probe.close()
            survivor.close()


def measure(
    root: Path, admin_url: str, n: int, reps: int, one_server: float | None = None
) -> dict[str, Any]:
    """The figures of the several-servers rows, each the median of `reps` runs, each run on
    a fresh database with processes of its own; with `one_server`, the jobs/s of one server
    on PostgreSQL in the same run, the two servers' throughput as a share of it."""
    runs = [failover(root, admin_url) for _ in range(reps)]
    rate = statistics.median(throughput(root, admin_url, n) for _ in range(reps))
    return {
        "throughput": rate,
        **({"throughput_ratio": rate / one_server} if one_server else {}),
        "failover": {k: statistics.median(r[k] for r in runs) for k in runs[0]},
        "feed_jobs_per_s": FEED_BATCH / FEED_EVERY,
    }


THROUGHPUT = "two servers on one PostgreSQL, a worker each (c2): throughput"
FAILOVER = (
    "failover after kill -9 of a server: next submit / worker's next start / duties taken over"
)


def rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The report's rows of these figures (none when the run had no PostgreSQL)."""
    if "servers" not in r:
        return []
    sv = r["servers"]
    ratio = sv.get("throughput_ratio")
    beside = f" ({ratio:.0%} of one server's on PostgreSQL)" if ratio else ""
    f = sv["failover"]
    times = f"{f['submit_s']:.2f} / {f['worker_start_s']:.2f} / {f['duties_s']:.2f} s"
    return [(THROUGHPUT, f"{sv['throughput']:,.0f} jobs/s{beside}"), (FAILOVER, times)]


def main() -> int:
    """These figures alone: `python -m tests.bench.servers [--n N] [--reps R]`."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=5000, help="jobs of the throughput run")
    ap.add_argument("--reps", type=int, default=3, help="runs of each measure")
    a = ap.parse_args()
    with postgres.server() as admin, tempfile.TemporaryDirectory(prefix="dts-bench-") as tmp:
        print(json.dumps(measure(Path(tmp), admin, a.n, a.reps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
