"""`make bench`'s floor: what each step on a job's way costs on this machine by itself (a gRPC
round trip, a Redis round trip, a durable SQLite commit, a pass between threads, spawning
`true` and reaping it), and the sum of the steps a submit→finished latency cannot avoid."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import RedisProcess, ServerProcess

QUIET = ("--log-level", "warning")
# On the way from submit to finished, one way each: the submit to the server, the worker's
# claim there and its answer back, the worker's report, and the answer to the waiting call.
# (The submit's answer and the waiting call's request travel while the job is on its way.)
GRPC_TRIPS = 2.5
COMMITS = 3  # the submit, the claim and the result are each durable before they are answered


def _median_ms(call: Callable[[], object], n: int) -> float:
    """The median milliseconds of `n` calls, one after the other (after a few not counted)."""
    for _ in range(min(20, n)):
        call()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _commit(directory: Path, n: int) -> float:
    """A one-row SQLite transaction in WAL mode with synchronous=full, as the store commits."""
    con = sqlite3.connect(directory / "floor.db", isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t (v INTEGER)")

        def one() -> None:
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO t VALUES (1)")
            con.execute("COMMIT")

        return _median_ms(one, n)
    finally:
        con.close()


def _hop(n: int) -> float:
    """An asyncio loop handing work to a pool thread and taking its answer back."""

    async def hops() -> float:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(2) as pool:
            times = []
            for _ in range(n):
                start = time.perf_counter()
                await loop.run_in_executor(pool, int)
                times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    return asyncio.run(hops())


def _spawn() -> None:
    pid = os.posix_spawnp("true", ["true"], dict(os.environ), setsid=True)
    os.waitpid(pid, 0)


def floor(root: Path, n: int) -> dict[str, float]:
    """Each step's median over `n` tries, in ms, and `path_ms`: the sum of the steps on a
    job's way from submit to finished (the passes between threads left out)."""
    d = Path(tempfile.mkdtemp(dir=root))
    r = RedisProcess(d)
    r.start()
    s = ServerProcess(d, r.url, *QUIET)
    try:
        s.start()
        with grpc.insecure_channel(s.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest()
            grpc_ms = _median_ms(lambda: health.Check(check, timeout=10), n)
        client = redis.Redis.from_url(r.url)
        redis_ms = _median_ms(client.ping, n)
        client.close()
    finally:
        s.stop(timeout=30)
        r.kill()
    out = {
        "grpc_ms": grpc_ms,
        "redis_ms": redis_ms,
        "commit_ms": _commit(d, n),
        "hop_ms": _hop(n),
        "spawn_ms": _median_ms(_spawn, n),
    }
    out["path_ms"] = (
        GRPC_TRIPS * out["grpc_ms"] + out["redis_ms"] + COMMITS * out["commit_ms"] + out["spawn_ms"]
    )
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(floor(Path(tmp), 500))
