"""The soak: random kills and restarts of workers, the server and Redis while another thread
keeps submitting jobs; afterwards the ledger shows nothing lost, no accepted result duplicated,
no two attempts of a job at once, and that the faults did hit running work.

DTS_SOAK_SECONDS (default 120, at least 30) bounds the chaos, DTS_SOAK_JOBS (default 1000)
the jobs, and DTS_SOAK_SEED (default: a fresh one, printed) replays the plan of jobs and
faults (the timing of a run is the machine's).
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from dts.client import Client
from dts.domain import Job, JobSpec, JobStatus
from dts.errors import DtsError
from tests.chaos.conftest import ChaosCluster

Chaos = Callable[..., ChaosCluster]

SOAK_SECONDS = float(os.environ.get("DTS_SOAK_SECONDS", "120"))
SOAK_JOBS = int(os.environ.get("DTS_SOAK_JOBS", "1000"))
WORKERS = ("s1", "s2", "s3")
DRAIN = 2.0  # the workers' --drain-timeout
SHORT = (0.05, 0.5)  # seconds a job sleeps, most jobs
LONG = (DRAIN + 1.5, DRAIN + 2.5)  # ... one in ten: they outlast a drain (released attempts)
SUBMIT_SHARE = 0.95  # of the chaos, during which the jobs are submitted at a steady pace
QUIET = (1.0, 2.5)  # seconds of recovery after a fault
KINDS = ("worker-kill", "worker-term", "server-kill", "redis-restart")
WEIGHTS = (4, 2, 2, 2)
MAX_LOST = 1000  # only a bug, never bad luck, may make a job fail in the soak


def _seed() -> int:
    raw = os.environ.get("DTS_SOAK_SEED", "")
    return int(raw) if raw else random.SystemRandom().randrange(1 << 32)


@dataclass
class Submitter:
    """Submits the planned jobs from its own thread at a steady pace, while faults happen.

    A call that fails may still have committed its jobs (the server died after the commit,
    before the answer): it is sent again, and the jobs' names (soak-<n>) find every copy
    afterwards."""

    address: str
    specs: list[JobSpec]
    window: float  # seconds over which to spread the submits
    in_fault: threading.Event  # set by the fault thread while it injects one
    accepted: dict[int, str] = field(default_factory=dict)  # id -> name, answered ids only
    unsure: set[str] = field(default_factory=set)  # names in calls that failed
    calls: int = 0
    failed_calls: int = 0
    calls_in_faults: int = 0
    crash: BaseException | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="soak-submitter", daemon=True)

    def _run(self) -> None:
        try:
            with Client(self.address, timeout=5) as client:
                self._submit_all(client)
        except BaseException as e:  # re-raised by the test's thread
            self.crash = e

    def _submit_all(self, client: Client) -> None:
        t0, sent = time.monotonic(), 0
        while sent < len(self.specs):
            share = (time.monotonic() - t0) / self.window
            due = min(len(self.specs), math.ceil(len(self.specs) * share))
            if due <= sent:
                time.sleep(0.05)  # pacing, not synchronization
                continue
            batch = self.specs[sent : min(due, sent + 20)]
            self.calls += 1
            self.calls_in_faults += self.in_fault.is_set()
            try:
                jobs = client.submit(batch)
            except DtsError:
                self.failed_calls += 1
                self.unsure.update(s.name for s in batch)
                time.sleep(0.1)  # the server is away: a fault; try the same batch again
                continue
            self.accepted.update((j.id, s.name) for j, s in zip(jobs, batch, strict=True))
            sent += len(batch)


def _running(c: ChaosCluster) -> list[Job]:
    return c.client.list_jobs(JobStatus.RUNNING, limit=1000)


def _pick_worker(c: ChaosCluster, plan: dict[str, float], left: float) -> tuple[str, str]:
    """A worker running a job that has `left` seconds or more still to run (waiting up to 10
    s for one), else the busiest worker; and a note of what it runs."""
    deadline = time.monotonic() + 10
    while True:
        jobs = [j for j in _running(c) if j.worker in WORKERS]
        now = time.time()
        ends = [((j.started_at or now) + plan[j.spec.name] - now, j.worker) for j in jobs]
        fit = sorted(e for e in ends if e[0] >= left)
        if fit:
            return fit[-1][1], f"running a job with {fit[-1][0]:.1f}s left"
        if time.monotonic() > deadline:
            busiest = Counter(j.worker for j in jobs).most_common(1)
            name = busiest[0][0] if busiest else WORKERS[0]
            return name, f"no job with {left:g}s left; {len(jobs)} running in all"
        time.sleep(0.05)


def _inject(
    c: ChaosCluster, rng: random.Random, kind: str, plan: dict[str, float], now: threading.Event
) -> str:
    """One fault (`now` is set while it lasts); returns what it hit. Whatever it kills is
    started again, and a worker's exit status is the one its signal calls for (SIGTERM:
    drained, exit 0)."""
    if kind in ("worker-kill", "worker-term"):
        name, note = _pick_worker(c, plan, 0.2 if kind == "worker-kill" else DRAIN + 0.5)
        w = c.workers[name]
        now.set()
        if kind == "worker-kill":
            w.signal(signal.SIGKILL)
            code = w.wait(30)
            assert code == -signal.SIGKILL, f"{name} exited {code} after SIGKILL"
            time.sleep(rng.uniform(0, 1.5))
        else:
            w.signal(signal.SIGTERM)
            code = w.wait(60)  # drain timeout 2 s, then kill grace; bounded anyway
            assert code == 0, f"{name} exited {code} after SIGTERM: {w.output()[-3000:]}"
        c.restart_worker(name)
        return f"{kind}:{name} ({note})"
    running = len(_running(c))
    now.set()
    if kind == "server-kill":
        c.kill_server()
        time.sleep(rng.uniform(0, 1))
        c.start_server()
    else:
        c.kill_redis()
        time.sleep(rng.uniform(0, 3))
        c.start_redis()
    return f"{kind} ({running} running)"


def _schedule(rng: random.Random, count: int) -> list[str]:
    """Every kind of fault twice among the first eight, in a random order; then at random."""
    first = [*KINDS, *KINDS]
    rng.shuffle(first)
    return first + rng.choices(KINDS, weights=WEIGHTS, k=max(0, count - len(first)))


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 420)
def test_soak_random_faults_lose_nothing(chaos: Chaos) -> None:
    """At-least-once under random faults, judged by the jobs' ledger: after SIGKILLs and
    SIGTERMs of busy workers, SIGKILLs of the server and Redis restarts (empty), all while
    another thread submits, every accepted job completed (lost == 0), no job has two accepted
    completions, no two attempts of a job ran at once, and the server's records agree; the
    faults interrupted running attempts (lost and released ones, in the ledger: started, never
    ended). Re-runs and completions of attempts the server gave up on are allowed, counted.

    The lease is 2 s, so server restarts may make workers self-fence (released attempts);
    --max-lost is very high so that only a bug, not a run of bad luck, fails a job.
    """
    assert SOAK_SECONDS >= 30, "DTS_SOAK_SECONDS: at least 30, to fit every kind of fault twice"
    seed = _seed()
    print(
        f"\nsoak seed {seed} (DTS_SOAK_SEED={seed} replays it): {SOAK_SECONDS:g}s, {SOAK_JOBS} jobs"
    )
    rng = random.Random(seed)
    c = chaos(lease=2, max_lost=MAX_LOST)
    for name in WORKERS:
        c.add_worker(name, "--drain-timeout", f"{DRAIN:g}", concurrency=4)
    plan = {
        f"soak-{n}": round(rng.uniform(*(LONG if rng.random() < 0.1 else SHORT)), 3)
        for n in range(SOAK_JOBS)
    }
    specs = [
        JobSpec(argv=(c.ledger.sleeper(t),), shell=True, name=name, env=c.ledger.env)
        for name, t in plan.items()
    ]
    in_fault = threading.Event()
    sub = Submitter(c.address, specs, SOAK_SECONDS * SUBMIT_SHARE, in_fault)
    schedule = _schedule(rng, int(SOAK_SECONDS))
    faults: Counter[str] = Counter()
    started = time.monotonic()
    deadline = started + SOAK_SECONDS
    sub.thread.start()
    # The chaos: this thread alone kills and restarts things, while the submitter submits
    while time.monotonic() < deadline and sub.crash is None:
        time.sleep(rng.uniform(*QUIET))
        kind = schedule.pop(0)
        try:
            hit = _inject(c, rng, kind, plan, in_fault)
        finally:
            in_fault.clear()
        faults[kind] += 1
        print(f"  +{time.monotonic() - started:6.1f}s {hit}")
    sub.thread.join(60)
    assert sub.crash is None, f"the submitter crashed: {sub.crash!r}"
    assert not sub.thread.is_alive(), "the submitter did not finish"
    # Then, with the chaos over and everything up, the queue drains
    counts = c.wait_drained(240)
    listed = {j.id: j.spec.name for j in c.client.list_jobs(limit=10_000)}
    on_server = Counter(listed.values())
    unanswered = {i: n for i, n in listed.items() if i not in sub.accepted}
    print(
        f"faults: {dict(faults)}; final counts: {counts}\n"
        f"submits: {sub.calls} calls, {sub.calls_in_faults} during a fault, "
        f"{sub.failed_calls} failed; {len(sub.accepted)} jobs accepted, "
        f"{len(unanswered)} committed without an answer"
    )
    # Every accepted id is kept, every planned job was accepted, and the only jobs nobody got
    # an id for are copies from calls that failed (committed, then the server died)
    assert set(sub.accepted) <= set(listed)
    assert set(on_server) == set(plan), set(plan) ^ set(on_server)
    assert set(unanswered.values()) <= sub.unsure, unanswered
    v = c.check(listed)
    for name in WORKERS:
        assert c.workers[name].alive(), c.workers[name].output()[-3000:]
    v.assert_safe()
    # The faults hit running work, and submits raced them
    assert v.interrupted["lost"] > 0, f"no running attempt was lost to a fault: {v}"
    assert v.interrupted["released"] > 0, f"no running attempt was released: {v}"
    assert v.duplicate_starts > 0, v
    assert sub.calls_in_faults > 0, "no submit happened while a fault was injected"
