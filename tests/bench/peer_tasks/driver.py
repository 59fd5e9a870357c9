"""The client side for tests/bench/peers.py: enqueue a backlog, or time jobs one at a time.

Run with .venv-peers' python, PYTHONPATH=tests/bench and the PEERS_BENCH_* variables set:
  python -m peer_tasks.driver versions
  python -m peer_tasks.driver KIND enqueue N
  python -m peer_tasks.driver KIND latency K
KIND is celery, rq, dramatiq, huey or arq. The answer is one JSON object on stdout.

Latency is uniform across peers: one long-lived client enqueues a job with the peer's own
call and polls the size of the lines file every 0.2 ms until the job's line is there.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from peer_tasks.common import LINES, REDIS_URL

PACKAGES = ("celery", "kombu", "rq", "dramatiq", "huey", "arq", "redis", "hiredis")
WARMUP = 2  # jobs not counted: the client's first connection, a worker leaving idle backoff
POLL = 0.0002
JOB_TIMEOUT = 30.0


class Enqueuer:
    """Enqueue one job, or n in bulk, with the peer's documented calls."""

    def __init__(self, kind: str) -> None:
        self.one: Callable[[], object]
        self.many: Callable[[int], object]
        getattr(self, f"_{kind}")()

    def _celery(self) -> None:
        from peer_tasks.celery_app import app, run

        def many(n: int) -> None:
            with app.producer_or_acquire() as producer:
                for _ in range(n):
                    run.apply_async(producer=producer)

        self.one, self.many = run.delay, many

    def _rq(self) -> None:
        from peer_tasks.rq_tasks import run
        from redis import Redis
        from rq import Queue

        q = Queue(connection=Redis.from_url(REDIS_URL))

        def many(n: int) -> None:
            for i in range(0, n, 1000):
                q.enqueue_many(
                    [Queue.prepare_data(run, result_ttl=0) for _ in range(min(1000, n - i))]
                )

        self.one, self.many = lambda: q.enqueue(run, result_ttl=0), many

    def _dramatiq(self) -> None:
        from peer_tasks.dramatiq_tasks import run

        def many(n: int) -> None:
            for _ in range(n):
                run.send()

        self.one, self.many = run.send, many

    def _huey(self) -> None:
        from peer_tasks.huey_tasks import run

        def many(n: int) -> None:
            for _ in range(n):
                run()

        self.one, self.many = run, many

    def _arq(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        loop = asyncio.new_event_loop()
        pool = loop.run_until_complete(create_pool(RedisSettings.from_dsn(REDIS_URL)))

        async def enqueue(n: int) -> None:
            for _ in range(n):
                await pool.enqueue_job("run")

        self.one = lambda: loop.run_until_complete(enqueue(1))
        self.many = lambda n: loop.run_until_complete(enqueue(n))


def size() -> int:
    try:
        return os.stat(LINES).st_size
    except FileNotFoundError:
        return 0


def latency(one: Callable[[], object], k: int) -> dict[str, list[float]]:
    finish: list[float] = []
    start: list[float] = []
    seen = size()
    for i in range(WARMUP + k):
        wall = time.time()
        t0 = time.perf_counter()
        one()
        deadline = t0 + JOB_TIMEOUT
        while (now := size()) <= seen:
            if time.perf_counter() > deadline:
                raise SystemExit(f"job {i} not done after {JOB_TIMEOUT:.0f}s")
            time.sleep(POLL)
        t1 = time.perf_counter()
        with open(LINES, "rb") as f:
            f.seek(seen)
            line = f.read(now - seen)
        seen = now
        if i >= WARMUP:
            finish.append((t1 - t0) * 1000)
            start.append((float(line.split()[0]) - wall) * 1000)
    return {"finish_ms": finish, "start_ms": start}


def versions() -> dict[str, str]:
    found = {}
    for p in PACKAGES:
        try:
            found[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            found[p] = ""
    return found


def main(argv: list[str]) -> int:
    out: dict[str, Any]
    if argv == ["versions"]:
        out = versions()
    elif len(argv) == 3 and argv[1] in ("enqueue", "latency"):
        kind, what, count = argv[0], argv[1], int(argv[2])
        if kind not in ("celery", "rq", "dramatiq", "huey", "arq"):
            raise SystemExit(f"unknown peer kind {kind!r}")
        e = Enqueuer(kind)
        if what == "enqueue":
            t0 = time.perf_counter()
            e.many(count)
            out = {"enqueued": count, "seconds": time.perf_counter() - t0}
        else:
            out = latency(e.one, count)
    else:
        raise SystemExit(__doc__)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
