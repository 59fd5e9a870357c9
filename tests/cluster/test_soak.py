"""The cluster soak: random faults of every kind the tier knows (tests/cluster/faults.py), one
after another with a few seconds of quiet between them, while a client keeps submitting and the
workers run; then every job is judged by its ledger (tests/cluster/load.py). The plan begins
with one fault of each kind, in a random order, then draws them by weight.

DTS_CLUSTER_SOAK_SECONDS (default 120) bounds the faults; DTS_SOAK_SEED (default: a fresh one,
printed) replays the plan: which faults, on what, for how long (the timing of a run is the
machine's).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter

import pytest

from . import faults
from .cluster import Cluster
from .faults import Hit
from .load import Run, next_submit

SOAK_SECONDS = float(os.environ.get("DTS_CLUSTER_SOAK_SECONDS", "120"))
KINDS = {  # kind: weight
    "server-kill": 4,
    "link-cut": 2,
    "rolling-restart": 1,
    "redis-failover": 2,
    "redis-master-kill": 2,
    "postgres-restart": 2,
}
QUIET = (1.0, 4.0)  # seconds between a fault's end and the next one
MAX_FAULTS = 100


def _seed() -> int:
    raw = os.environ.get("DTS_SOAK_SEED", "")
    return int(raw) if raw else random.SystemRandom().randrange(1 << 32)


def inject(cl: Cluster, rng: random.Random, kind: str) -> Hit:
    servers = list(cl.server_hosts)
    if kind == "server-kill":
        hit = faults.kill_server(cl, rng.choice(servers))
        time.sleep(rng.uniform(0, 3))  # the fault itself: how long it stays down
        return faults.restart_server(cl, hit)
    if kind == "link-cut":
        return faults.cut_link(cl, rng.choice(servers), round(rng.uniform(5, 20), 1))
    if kind == "rolling-restart":
        return faults.rolling_restart(cl)
    if kind in ("redis-failover", "redis-master-kill"):
        return faults.redis_failover(cl, kill=kind == "redis-master-kill")
    assert kind == "postgres-restart", kind
    return faults.pg_restart(cl, rng.choice(["fast", "immediate"]), round(rng.uniform(1, 5), 1))


def measured(cl: Cluster, run: Run, hit: Hit, client_on: bool, workers: dict[str, str]) -> str:
    """From a server's kill to the next submit of the client and the next claim of each worker
    that talked to it, when they did."""
    out = []
    if client_on:
        took = next_submit(run.live(), hit.at)
        out.append(f"next submit {took:.2f}s" if took is not None else "no submit")
    for w, server in workers.items():
        if server == hit.target:
            claims = cl.claims_after(w, hit.at)
            out.append(f"{w}'s next claim {claims[0] - hit.at:.2f}s" if claims else f"{w}: none")
    return "; ".join(out) + (" after the kill" if out else "")


@pytest.mark.timeout(SOAK_SECONDS + 420)
def test_soak_of_random_faults_loses_and_repeats_nothing(cl: Cluster, run: Run) -> None:
    seed = _seed()
    rng = random.Random(seed)
    print(f"\ncluster soak: DTS_SOAK_SEED={seed} DTS_CLUSTER_SOAK_SECONDS={SOAK_SECONDS:g}")
    run.start(seed=seed)
    run.wait_going()
    hits: list[Hit] = []
    first = rng.sample(list(KINDS), len(KINDS))
    t0 = time.monotonic()
    while time.monotonic() - t0 < SOAK_SECONDS and len(hits) < MAX_FAULTS:
        kind = first.pop(0) if first else rng.choices(list(KINDS), list(KINDS.values()))[0]
        live = run.live()
        current = live[-1]["server"] if live else ""  # the server the client talks to
        workers = {w: cl.talks_to(p) for w, p in cl.workers.items()}
        hit = inject(cl, rng, kind)
        if kind == "server-kill":
            hit.note = measured(cl, run, hit, current == cl.address(hit.target), workers)
        hits.append(hit)
        print(f"  {time.monotonic() - t0:6.1f}s {hit}")
        cl.steady()
        time.sleep(rng.uniform(*QUIET))  # pacing of the plan, not a wait for anything
    counts = Counter(h.kind for h in hits)
    print(
        f"cluster soak: {len(hits)} faults in {time.monotonic() - t0:.0f}s: "
        + ", ".join(f"{k} {counts[k]}" for k in KINDS)
    )
    v = run.finish()
    print(
        f"cluster soak: seed {seed}; {v.submitted} jobs, {v.succeeded} succeeded,"
        f" {v.attempts} attempts, lost {v.lost}, duplicate completions"
        f" {v.duplicate_completions}, duplicate starts {v.duplicate_starts},"
        f" interrupted {dict(v.interrupted)}"
    )
    assert len(hits) >= 3, hits
