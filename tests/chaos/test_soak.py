"""The soak: random kills and restarts of workers, the server and Redis under a steady stream
of short jobs; afterwards nothing is lost and no accepted result is duplicated.

DTS_SOAK_SECONDS (default 120) bounds the chaos, DTS_SOAK_JOBS (default 1000) the jobs, and
DTS_SOAK_SEED (default: a fresh one, printed) replays a schedule.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.chaos.conftest import ChaosCluster

Chaos = Callable[..., ChaosCluster]

SOAK_SECONDS = float(os.environ.get("DTS_SOAK_SECONDS", "120"))
SOAK_JOBS = int(os.environ.get("DTS_SOAK_JOBS", "1000"))
WORKERS = ("s1", "s2", "s3")
HIT = (0.0, 0.5)  # seconds from submitting a burst of jobs to the fault that hits it
QUIET = (1.0, 2.5)  # seconds of recovery after a fault
MAX_LOST = 1000  # only a bug, never bad luck, may make a job fail in the soak


def _seed() -> int:
    raw = os.environ.get("DTS_SOAK_SEED", "")
    return int(raw) if raw else random.SystemRandom().randrange(1 << 32)


def _inject(c: ChaosCluster, rng: random.Random) -> str:
    """One fault, chosen by `rng`; returns its name. Whatever it kills is started again."""
    kind = rng.choices(
        ["worker-kill", "worker-term", "server-kill", "redis-restart"], weights=[4, 2, 2, 2]
    )[0]
    if kind in ("worker-kill", "worker-term"):
        name = rng.choice(WORKERS)
        w = c.workers[name]
        if kind == "worker-kill":
            w.signal(signal.SIGKILL)
            w.wait(30)
            time.sleep(rng.uniform(0, 1.5))
        else:
            w.signal(signal.SIGTERM)
            w.wait(60)  # drain timeout 2 s, then kill grace; bounded anyway
        c.restart_worker(name)
        return f"{kind}:{name}"
    if kind == "server-kill":
        c.kill_server()
        time.sleep(rng.uniform(0, 1))
        c.start_server()
        return kind
    c.kill_redis()
    time.sleep(rng.uniform(0, 3))
    c.start_redis()
    return kind


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 420)
def test_soak_random_faults_lose_nothing(chaos: Chaos) -> None:
    """At-least-once under random faults: after SIGKILLs and SIGTERMs of workers, SIGKILLs of
    the server and Redis restarts (empty), every accepted job succeeds (lost == 0) and no job
    has two accepted completions; re-runs (duplicate starts) and completions of attempts the
    server had given up on (superseded) are allowed and counted.

    The lease is 2 s, so server restarts may make workers self-fence (released attempts);
    --max-lost is very high so that only a bug, not a run of bad luck, fails a job.
    """
    seed = _seed()
    print(
        f"\nsoak seed {seed} (DTS_SOAK_SEED={seed} replays it): {SOAK_SECONDS:g}s, {SOAK_JOBS} jobs"
    )
    rng = random.Random(seed)
    c = chaos(lease=2, max_lost=MAX_LOST)
    for name in WORKERS:
        c.add_worker(name, "--drain-timeout", "2", concurrency=4)
    commands = [c.ledger.sleeper(round(rng.uniform(0, 0.3), 3)) for _ in range(SOAK_JOBS)]
    steps = max(1, int(SOAK_SECONDS / (sum(HIT) / 2 + sum(QUIET) / 2 + 1.0)))
    batch = math.ceil(SOAK_JOBS / steps)
    submitted: list[int] = []
    faults: Counter[str] = Counter()
    started = time.monotonic()
    deadline = started + SOAK_SECONDS
    # The chaos: submit a burst of jobs, hit the cluster while it runs them, let it recover.
    # This thread also restarts the server, so the server is up whenever it submits, and
    # every accepted id is known.
    while time.monotonic() < deadline:
        if len(submitted) < len(commands):
            submitted += c.submit(commands[len(submitted) : len(submitted) + batch])
        time.sleep(rng.uniform(*HIT))
        running = c.counts().get("running", 0)
        fault = _inject(c, rng)
        faults[fault.split(":")[0]] += 1
        print(f"  +{time.monotonic() - started:6.1f}s {fault} ({running} running)")
        time.sleep(rng.uniform(*QUIET))
    if len(submitted) < len(commands):
        submitted += c.submit(commands[len(submitted) :])
    # Then, with the chaos over and everything up, the queue drains
    counts = c.wait_drained(240)
    print(f"faults: {dict(faults)}; final counts: {counts}")
    v = c.check(submitted)
    assert v.submitted == SOAK_JOBS
    for name in WORKERS:
        assert c.workers[name].alive(), c.workers[name].output()[-3000:]
    v.assert_safe()
