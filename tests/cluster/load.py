"""A test's load on the cluster and its judgement: a submitter on the client host (the agent's
Load) submitting small batches of ledger jobs all along, then, once the fault is over and the
load stopped, the queue drained and every job judged by its ledger (tests/chaos/ledger.py):

* every batch was acknowledged in the end (a batch sent again goes with its key);
* the jobs stored under the test's tag are exactly the acknowledged ones, each name once: none
  stored twice by a submit sent again, none stored that nobody acknowledged;
* lost = 0, duplicate completions = 0, and the rest of the checker's safety verdict;
* every job succeeded.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.ledger import Ledger, Verdict

from .cluster import Cluster, wait_for

NOT_FINAL = ("scheduled", "queued", "running")
Record = dict[str, Any]


def acknowledged(records: list[Record], after: float = 0.0) -> list[Record]:
    """The batches acknowledged at or after `after` (time.time())."""
    return [r for r in records if r["answered"] is not None and r["answered"] >= after]


def next_submit(records: list[Record], at: float) -> float | None:
    """Seconds from `at` to the first acknowledgement after it."""
    times = [r["answered"] for r in acknowledged(records, at)]
    return min(times) - at if times else None


def to_verdict(raw: dict[str, Any]) -> Verdict:
    v = Verdict(**{k: v for k, v in raw.items() if k not in ("outcomes", "interrupted")})
    v.outcomes = Counter(raw["outcomes"])
    v.interrupted = Counter(raw["interrupted"])
    v.concurrent_pairs = [tuple(p) for p in raw["concurrent_pairs"]]
    return v


@dataclass
class Run:
    """One test's load: its tag (jobs are named TAG-N), its ledger, what the submitters did."""

    cl: Cluster
    tag: str
    records: list[Record] = field(default_factory=list)  # of the stopped submitters
    running: list[str] = field(default_factory=list)  # names of the running submitters

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.cl.root / f"ledger-{self.tag}.txt")

    @property
    def ledger_path(self) -> Path:
        return self.ledger.path

    def start(
        self, batch: int = 2, every: float = 0.25, seed: int = 0, order: list[str] | None = None
    ) -> None:
        """A submitter naming every server (in `order`, s1 first by default)."""
        name = f"{self.tag}#{len(self.running) + len(self.records)}"
        self.cl.agent.call(
            "load_start",
            name=name,
            servers=order or self.cl.addresses,
            ledger=str(self.ledger.path),
            tag=self.tag if not self.running else f"{self.tag}x{len(self.running)}",
            batch=batch,
            every=every,
            seed=seed,
        )
        self.running.append(name)

    def live(self) -> list[Record]:
        """The records of the running submitters so far."""
        out: list[Record] = []
        for name in self.running:
            out += self.cl.agent.call("load_records", name=name)
        return out

    def wait_going(self, acks: int = 6, starts: int = 6, after: float = 0.0) -> None:
        """Until `acks` batches were acknowledged after `after` and `starts` jobs started."""
        wait_for(
            lambda: (
                len(acknowledged(self.live(), after)) >= acks
                and len(self.ledger.starts()) >= starts
            ),
            60,
            f"{acks} acknowledged submits and {starts} started jobs",
            0.25,
        )

    def stop(self) -> list[Record]:
        for name in self.running:
            out = self.cl.agent.call("load_stop", timeout=150, name=name)
            assert not out["crash"] and not out["stuck"], out
            self.records += out["records"]
        self.running.clear()
        return self.records

    def tags(self) -> list[str]:
        return sorted({r["names"][0].rsplit("-", 1)[0] for r in self.records if r["names"]})

    def finish(self, drain: float = 180) -> Verdict:
        """Stop the load, wait for every job to end, and judge them (module doc)."""
        self.stop()
        self.cl.steady()  # whatever the fault left down is back: the jobs can all run
        t0 = time.monotonic()
        wait_for(self._drained, drain, "the queue to drain", 0.5)
        drained = time.monotonic() - t0
        stored: list[tuple[int, str, str]] = []
        for tag in self.tags():
            stored += self.cl.agent.call("jobs", timeout=60, url=self.cl.pg.url, tag=tag)
        acked = {i for r in acknowledged(self.records) for i in r["ids"]}
        given_up = [r for r in self.records if r["answered"] is None]
        names = Counter(name for _, name, _ in stored)
        twice = sorted(n for n, k in names.items() if k > 1)
        ids = {i for i, _, _ in stored}
        raw = self.cl.agent.call(
            "check", timeout=180, servers=self.cl.addresses, ledger=str(self.ledger.path),
            ids=sorted(ids | acked),
        )  # fmt: skip
        v = to_verdict(raw)
        tries = sum(r.get("tries", 1) for r in self.records)
        print(
            f"\n[{self.tag}] submits: {len(self.records)} batches ({tries} tries),"
            f" {len(acked)} jobs acknowledged, {len(given_up)} given up;"
            f" stored: {len(ids)} ({len(twice)} names twice, {len(ids - acked)} unacknowledged,"
            f" {len(acked - ids)} acknowledged but missing); drained in {drained:.1f}s"
            f"\n[{self.tag}] {v.summary()}"
        )
        assert not given_up, f"batches never acknowledged: {given_up[:5]}"
        assert not twice, f"jobs stored twice: {twice[:20]}"
        assert acked == ids, (sorted(acked - ids)[:20], sorted(ids - acked)[:20])
        v.assert_safe()
        assert v.succeeded == len(ids), v
        return v

    def _drained(self) -> dict[str, int] | None:
        counts: dict[str, int] = self.cl.agent.call("stats", servers=self.cl.addresses)
        return None if any(counts.get(s) for s in NOT_FINAL) else (counts or {"none": 0})
