"""Infrastructure faults: Redis restarted empty or away for a while, the server SIGKILLed and
restarted under load, a worker started before Redis and the server exist."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

import pytest

from tests.chaos.conftest import STORES, ChaosCluster
from tests.harness import wait_until

Chaos = Callable[..., ChaosCluster]


def _unavailable_lines(log: str, what: str) -> int:
    return sum(1 for line in log.splitlines() if "unavailable" in line and what in line)


@pytest.mark.parametrize("store", STORES)
def test_redis_restarted_empty_loses_no_job(chaos: Chaos, store: str) -> None:
    """Redis carries only ids and the store (SQLite, or PostgreSQL) is the truth: when Redis
    restarts empty while jobs are queued and running, the running ones finish and report, the
    queued ones are re-sent by the server's reconciler, and every job completes exactly once."""
    c = chaos(store=store)
    # Given 4 running and 8 queued jobs
    for name in ("w1", "w2"):
        c.add_worker(name, concurrency=2)
    ids = c.submit([c.ledger.sleeper(2)] * 12)
    wait_until(lambda: len(c.ledger.starts()) >= 4, 20, what="4 jobs to start")
    counts = c.counts()
    assert counts.get("running") == 4 and counts.get("queued") == 8, counts
    # When Redis is killed and comes back empty on the same port
    c.kill_redis()
    c.start_redis()
    # Then everything completes, once
    print(f"\nafter the restart: {c.wait_drained(60)}")
    wait_until(lambda: "redis was missing" in c.server_log(), 5, what="the reconciler")
    v = c.check(ids)
    v.assert_safe(allow_duplicate_starts=False)
    assert v.succeeded == 12 and v.attempts == 12, v


def test_redis_outage_of_ten_seconds_under_load(chaos: Chaos) -> None:
    """Redis away for 10 s while workers are busy: running jobs finish and are reported (the
    server does not need Redis for that), workers retry with backoff and log the outage once
    (not once per retry), and after Redis returns (empty) every job completes exactly once."""
    c = chaos()
    workers = [c.add_worker(name, concurrency=2) for name in ("w1", "w2")]
    ids = c.submit([c.ledger.sleeper(3)] * 10)
    wait_until(lambda: len(c.ledger.starts()) >= 4, 20, what="4 jobs to start")
    # When Redis is down for 10 s (the fault itself: a fixed duration)
    c.kill_redis()
    time.sleep(10)
    during = c.counts()
    c.start_redis()
    # Then the jobs that were running finished and were reported while Redis was away
    assert during.get("succeeded", 0) >= 4, during
    print(f"\nduring the outage: {during}; after: {c.wait_drained(90)}")
    v = c.check(ids)
    v.assert_safe(allow_duplicate_starts=False)
    assert v.succeeded == 10 and v.attempts == 10, v
    # And each worker logged the outage once and the recovery once
    for w in workers:
        log = w.output()
        assert _unavailable_lines(log, "redis") == 1, log[-3000:]
        # the Redis link's recovery, once (a slow heartbeat may flap the server link apart)
        assert len(re.findall(r"redis \S+ available again", log)) == 1, log[-3000:]
    assert _unavailable_lines(c.server_log(), "redis") == 1


@pytest.mark.parametrize("store", STORES)
def test_server_sigkilled_under_load_loses_and_repeats_nothing(chaos: Chaos, store: str) -> None:
    """The server SIGKILLed and restarted (same port, same --db) while ~50 jobs run and ~200
    wait: the store (SQLite, or PostgreSQL) keeps every accepted job, workers buffer their
    results and deliver them once the server is back, running jobs keep their leases (the
    restarted server grants a fresh lease), so nothing is lost and no job runs twice.

    The lease is 5 s here: workers self-fence after 0.8 x 5 = 4 s without a renewal, and a
    server restart takes 1-2 s, so the restart does not make workers kill their jobs.
    """
    c = chaos(lease=5, store=store)
    rng = random.Random(6)
    for i in range(3):
        c.add_worker(f"w{i + 1}", concurrency=17)
    ids = c.submit([c.ledger.sleeper(round(rng.uniform(3, 5), 2)) for _ in range(250)])
    # Given ~50 running and ~200 queued
    wait_until(lambda: len(c.ledger.starts()) >= 45, 30, what="45 jobs to start")
    before = c.counts()
    # When the server is SIGKILLed and restarted
    t0 = time.monotonic()
    c.kill_server()
    took = c.start_server()
    print(f"\nat the kill: {before}; server back in {time.monotonic() - t0:.2f}s")
    assert before.get("running", 0) >= 45 and before.get("queued", 0) >= 190, before
    # Then everything completes, each job once
    print(f"after: {c.wait_drained(120)}")
    v = c.check(ids)
    for name, w in c.workers.items():
        assert "no lease renewal" not in w.output(), f"{name} self-fenced: restart took {took}s"
    v.assert_safe(allow_duplicate_starts=False)
    assert v.succeeded == 250, v


def test_worker_started_before_redis_and_server(chaos: Chaos) -> None:
    """A worker started before Redis and the server waits for them (with backoff, logging
    each outage once) and starts working within seconds once they appear 5 s later."""
    c = chaos(start=False)
    w = c.add_worker("early", concurrency=4, wait=False)
    started = time.monotonic()
    wait_until(lambda: "unavailable" in w.output(), 10, what="the worker to notice")
    # Both appear 5 s after the worker (the fault: a fixed duration)
    time.sleep(max(0.0, started + 5 - time.monotonic()))
    assert w.alive(), w.output()
    c.start_redis()
    c.start_server()
    serving_at = time.time()
    ids = c.submit([c.ledger.sleeper(0.2)] * 20)
    first = wait_until(lambda: c.ledger.starts(), 30, what="the first job to start")
    latency = min(e.at for e in first) - serving_at
    print(f"\nfirst job started {latency:.2f}s after the server began serving")
    c.wait_drained(60)
    v = c.check(ids)
    v.assert_safe(allow_duplicate_starts=False)
    assert latency < 10, latency
    assert {c.client.get(i).worker for i in ids} == {"early"}
    assert w.output().count("unavailable") <= 2, w.output()


def test_worker_reconnects_within_its_backoff_cap_after_a_long_outage(chaos: Chaos) -> None:
    """Reconnects use capped backoff (5 s, dts/worker/session.py): after a server outage of any
    length a waiting worker registers within about that cap of the server's return."""
    c = chaos(start=False)
    c.start_redis()
    w = c.add_worker("patient", wait=False)
    wait_until(lambda: "unavailable" in w.output(), 10, what="the worker to notice")
    time.sleep(30)  # the outage (the fault itself: a fixed duration)
    c.start_server()
    serving = time.monotonic()
    wait_until(lambda: "worker patient registered" in w.output(), 120, what="registration")
    lag = time.monotonic() - serving
    print(f"\nregistered {lag:.1f}s after the server came back from a 30s outage")
    assert lag < 5 + 2, f"registered {lag:.1f}s after the server came back"
