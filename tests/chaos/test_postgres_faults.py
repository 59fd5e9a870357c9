"""PostgreSQL faults: the database stopped (fast, and as a crash) and started again while
workers run jobs and a client keeps submitting.

PostgreSQL is the truth here as SQLite is elsewhere: while it is away the server refuses what it
cannot store at once (UNAVAILABLE, one line) and keeps every job it acknowledged; when it is
back, the server serves again by itself within seconds, and every acknowledged job ends exactly
once. Each test stops a PostgreSQL cluster of its own (the `pg` fixture), never the machine's.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from dts.client import Client
from dts.errors import Unavailable
from tests.chaos.conftest import ChaosCluster, OwnPostgres
from tests.harness import wait_until

Chaos = Callable[..., ChaosCluster]

SERVE_AGAIN = 15.0  # seconds after PostgreSQL's return by which a submit must be acknowledged
ANSWER_WITHIN = 5.0  # seconds any submit may take to be answered, acknowledged or refused


@dataclass(frozen=True)
class Submit:
    """One submit call of the submitter and what came of it."""

    sent: float  # time.monotonic()
    answered: float
    ids: tuple[int, ...] = ()  # acknowledged: the jobs' ids
    error: BaseException | None = None  # refused: what the client raised

    @property
    def acknowledged(self) -> bool:
        return self.error is None


class Submitter:
    """A thread that submits `batch` ledger jobs every `every` seconds, over a client of its
    own, and records each call: acknowledged (with the ids) or refused (with the exception,
    whatever it is). It stops when told, or after `limit` seconds in any case."""

    def __init__(
        self, c: ChaosCluster, batch: int = 2, every: float = 0.25, limit: float = 180.0
    ) -> None:
        self.c = c
        self.batch = batch
        self.every = every
        self.limit = limit
        self.calls: list[Submit] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rng = random.Random(11)
        self._thread = threading.Thread(target=self._run, name="chaos-submitter", daemon=True)

    def start(self) -> Submitter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)  # a submit waits at most 60 s (Client.submit)
        assert not self._thread.is_alive(), "the submitter did not stop"

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        with Client(self.c.address, timeout=5) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                sleeps = [round(self._rng.uniform(0.3, 1.2), 2) for _ in range(self.batch)]
                specs = self.c.specs([self.c.ledger.sleeper(s) for s in sleeps])
                sent = time.monotonic()
                try:
                    ids = tuple(j.id for j in client.submit(specs))
                    call = Submit(sent, time.monotonic(), ids=ids)
                except Exception as e:  # recorded, whatever it is: the test judges it
                    call = Submit(sent, time.monotonic(), error=e)
                with self._lock:
                    self.calls.append(call)
                self._stop.wait(self.every)

    def snapshot(self) -> list[Submit]:
        with self._lock:
            return list(self.calls)

    def acknowledged(self, after: float = 0.0) -> list[Submit]:
        """Acknowledged submits answered at or after `after` (monotonic)."""
        return [s for s in self.snapshot() if s.acknowledged and s.answered >= after]

    def refused(self) -> list[Submit]:
        return [s for s in self.snapshot() if not s.acknowledged]


@pytest.mark.parametrize(
    ("mode", "hold"),
    [("fast", 2.0), ("immediate", 2.0), ("immediate", 11.0)],
    ids=["fast-2s", "immediate-2s", "immediate-11s"],
)
def test_postgres_restarted_under_load_loses_and_repeats_nothing(
    pg: OwnPostgres, chaos: Chaos, mode: str, hold: float
) -> None:
    """PostgreSQL stopped (`pg_ctl stop -m fast`, or `-m immediate`: a crash) and started again
    `hold` seconds later while two workers run jobs and a client submits two every 0.25 s: the
    submits it cannot store are refused at once, as UNAVAILABLE in one line; the server serves
    again within seconds of the database's return; and every acknowledged job ends exactly
    once. 11 s is longer than a call would wait for a connection from the pool (10 s).

    The lease is 5 s: workers self-fence after 0.8 x 5 = 4 s without a renewal, longer than
    the short outages, so those need not make them kill their jobs."""
    c = chaos(lease=5, db=pg.url)
    for name in ("w1", "w2"):
        c.add_worker(name, concurrency=4)
    submitter = Submitter(c).start()
    try:
        # Given jobs running and being submitted
        wait_until(
            lambda: len(c.ledger.starts()) >= 8 and len(submitter.acknowledged()) >= 8,
            30,
            what="8 jobs to start",
        )
        before = c.counts()
        # When PostgreSQL stops (fast or immediate) and starts again `hold` seconds later
        down_at = time.monotonic()
        pg.halt(mode)
        time.sleep(hold)  # the fault itself: a fixed duration
        pg.resume()
        back = time.monotonic()
        # Then a submit is acknowledged again within seconds of its return
        wait_until(
            lambda: submitter.acknowledged(after=back), SERVE_AGAIN + 5, what="a submit to succeed"
        )
        first = min(s.answered for s in submitter.acknowledged(after=back))
        # (the load goes on a while after the return: 8 more acknowledged submits)
        wait_until(lambda: len(submitter.acknowledged(after=back)) >= 8, 30, what="8 more submits")
    finally:
        submitter.stop()
    after = c.wait_drained(120)
    calls = submitter.snapshot()
    refused = submitter.refused()
    during = [s for s in refused if down_at <= s.sent <= back]
    slowest = max(calls, key=lambda s: s.answered - s.sent)
    acked = {i for s in calls for i in s.ids}
    known = {j.id for j in c.client.list_jobs(limit=10_000)}
    in_doubt = known - acked  # refused, yet stored: the commit was cut off mid-answer
    fenced = {n: w.output().count("no lease renewal") for n, w in c.workers.items()}
    print(
        f"\n{mode} {hold:g}s: before {before}; PostgreSQL down {back - down_at:.2f}s;"
        f" first acknowledged submit {first - back:.2f}s after its return"
        f"\nsubmits: {len(calls)}, acknowledged {len(calls) - len(refused)} ({len(acked)} jobs),"
        f" refused {len(refused)} ({len(during)} sent during the outage);"
        f" slowest answer {slowest.answered - slowest.sent:.2f}s;"
        f" stored though refused: {len(in_doubt)}; self-fences: {fenced}; after: {after}"
    )
    for kind in sorted({f"{type(s.error).__name__}: {s.error}" for s in refused})[:5]:
        print(f"  refused: {kind}")
    # Every refusal is a clean UNAVAILABLE in one line (no other exception), and prompt
    for s in refused:
        assert isinstance(s.error, Unavailable), repr(s.error)
        assert "\n" not in str(s.error), repr(s.error)
    assert slowest.answered - slowest.sent < ANSWER_WITHIN, slowest
    # And the outage was tested: submits were refused while PostgreSQL was away
    assert during, f"no submit was refused while PostgreSQL was down: {calls}"
    # And every job ends exactly once: those acknowledged, and any stored though refused
    assert acked <= known, sorted(acked - known)
    assert len(in_doubt) <= submitter.batch * len(refused), sorted(in_doubt)
    v = c.check(known)
    v.assert_safe()
    assert v.succeeded == len(known), v
    # And the server rode it out, and served again within seconds of the database's return
    assert c.server is not None and c.server.alive(), c.server_log()[-3000:]
    assert all(w.alive() for w in c.workers.values())
    assert "Traceback" not in c.server_log(), c.server_log()[-5000:]
    assert first - back < SERVE_AGAIN, f"first acknowledged submit {first - back:.2f}s after"
