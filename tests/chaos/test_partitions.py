"""Network faults between a worker and the server, through tests/tcpproxy.py: a cut that
leaves sockets half-open (blackhole), a cut that closes them (drop), and a slow link (delay)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from dts.domain import JobStatus, Outcome
from tests.chaos.conftest import ChaosCluster, group_alive
from tests.harness import wait_until

Chaos = Callable[..., ChaosCluster]


class FenceViolation(AssertionError):
    """The cut-off worker's job was still alive when the server's lease on it ran out."""


@dataclass
class FenceTimes:
    """Wall-clock times seen while a worker is cut off (time.time(), like the server's)."""

    lease_expires_at: float | None = None  # the last lease deadline of attempt 1 in SQLite
    died_at: float | None = None  # when attempt 1's process group was first seen gone
    requeued_at: float | None = None  # when the server was first seen past attempt 1


class FenceWatch:
    """Polls (every 10 ms) attempt 1's process group and the job's row in the server's db."""

    def __init__(self, c: ChaosCluster, job: int, pgid: int) -> None:
        self.c, self.job, self.pgid = c, job, pgid
        self.times = FenceTimes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fence-watch", daemon=True)

    def __enter__(self) -> FenceWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def done(self) -> bool:
        return self.times.died_at is not None and self.times.requeued_at is not None

    def _run(self) -> None:
        t = self.times
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and not self.done() and time.monotonic() < deadline:
            now = time.time()
            if t.died_at is None and not group_alive(self.pgid):
                t.died_at = now
            if t.requeued_at is None:
                row = self.c.db_job(self.job)
                if row["status"] == "running" and row["attempts"] == 1:
                    t.lease_expires_at = row["lease_expires_at"]  # type: ignore[assignment]
                else:
                    t.requeued_at = now
            self._stop.wait(0.01)


def _first_long(first: float, later: float = 0.5) -> str:
    return f'if [ "$DTS_ATTEMPT" = 1 ]; then sleep {first:g}; else sleep {later:g}; fi'


@pytest.mark.parametrize("cut", ["blackhole", "drop"])
def test_cut_off_worker_fences_its_job_and_recovers(chaos: Chaos, cut: str) -> None:
    """A worker cut off from the server (sockets left half-open, or closed and refused) kills
    its job before the server's lease on it runs out (self-fencing), so two attempts never
    run at once; the server re-runs the job on another worker after the lease; when the
    network heals the cut-off worker's stale result is refused and it takes new jobs again.

    Everything but the timing of the kill is asserted first; a job that outlives the lease
    raises FenceViolation at the end.
    """
    c = chaos()
    proxy = c.proxy()
    # Given a worker that talks to the server through the proxy, running a long job, and a
    # healthy worker with a direct connection
    cutoff = c.add_worker("cutoff", server=proxy.address)
    [job] = c.submit([c.ledger.command(_first_long(60))])
    first = c.wait_started(job)
    healthy = c.add_worker("healthy")
    # When the network between the first worker and the server is cut
    with FenceWatch(c, job, first.pid) as watch:
        proxy.blackhole() if cut == "blackhole" else proxy.drop()
        cut_at = time.time()
        # Then the cut-off worker kills its job (self-fencing) ...
        wait_until(watch.done, 5 * c.lease, what="the job to die and to be re-queued")
    wait_until(lambda: "no lease renewal" in cutoff.output(), 10, what="the fencing log line")
    # ... and the job runs again on the healthy worker after the lease, and succeeds
    final = c.client.wait(job, 30)
    assert final.status is JobStatus.SUCCEEDED, final
    assert (final.attempts, final.worker) == (2, "healthy"), final
    history = c.client.history(job)
    assert [a.outcome for a in history] == [Outcome.LOST, Outcome.SUCCEEDED], history
    # When the network heals
    proxy.pass_through()
    # Then the cut-off worker's late result is refused and the lost attempt stays lost
    wait_until(
        lambda: f"job {job} attempt 1: result refused" in cutoff.output(),
        30,
        what="the stale result to be refused",
    )
    assert c.client.history(job)[0].outcome is Outcome.LOST
    # And it takes new jobs again (the healthy worker leaves, so only it can)
    healthy.stop(timeout=30)
    more = c.submit([c.ledger.sleeper(0.2)] * 3)
    for j in more:
        done = c.client.wait(j, 30)
        assert (done.status, done.worker) == (JobStatus.SUCCEEDED, "cutoff"), done
    assert cutoff.alive()
    v = c.check([job, *more])
    v.assert_safe()
    assert v.superseded == 0 and v.duplicate_starts == 1, v
    # Finally, the fencing deadline: the job died before the server's lease ran out
    t = watch.times
    assert t.lease_expires_at is not None and t.died_at is not None and t.requeued_at is not None
    second = c.ledger.start_of(job, 2)
    assert second is not None
    report = (
        f"cut at 0; attempt 1 died at +{t.died_at - cut_at:.3f}s; its lease expired at "
        f"+{t.lease_expires_at - cut_at:.3f}s; re-queued at +{t.requeued_at - cut_at:.3f}s; "
        f"attempt 2 started at +{second.at - cut_at:.3f}s (lease {c.lease:g}s)"
    )
    print(f"\n{cut}: {report}")
    if not t.died_at < t.lease_expires_at:
        raise FenceViolation(f"the fenced job outlived its lease: {report}")


def test_slow_link_completes_everything_once(chaos: Chaos) -> None:
    """200 ms of added latency each way between workers and the server (400 ms round trips,
    a fifth of the 2 s lease) slows things down but changes no outcome: leases are renewed,
    nothing self-fences, every job completes exactly once."""
    c = chaos()
    proxy = c.proxy()
    proxy.add_delay(0.2)
    workers = [c.add_worker(n, server=proxy.address, concurrency=2) for n in ("s1", "s2")]
    # jobs longer than the lease, so it must be renewed across the slow link
    ids = c.submit([c.ledger.sleeper(3)] * 8)
    print(f"\nafter: {c.wait_drained(90)}")
    v = c.check(ids)
    for w in workers:
        assert "no lease renewal" not in w.output(), w.output()[-3000:]
    v.assert_safe(allow_duplicate_starts=False)
    assert v.succeeded == 8 and v.attempts == 8, v
