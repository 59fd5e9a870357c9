"""Worker faults: killed, killed between pop and claim, frozen, drained, poisoned; long jobs."""

from __future__ import annotations

import shlex
import signal
import time
from collections.abc import Callable

import redis

from dts.domain import JobStatus, Outcome
from dts.queue.redis import Keys, RedisQueue
from tests.chaos.conftest import ChaosCluster, group_alive
from tests.harness import wait_until

Chaos = Callable[..., ChaosCluster]


def _first_long(first: float, later: float = 0.5) -> str:
    """A job body: the first attempt sleeps `first` seconds, every later one `later`."""
    return f'if [ "$DTS_ATTEMPT" = 1 ]; then sleep {first:g}; else sleep {later:g}; fi'


def test_sigkilled_worker_mid_job_is_completed_by_another(chaos: Chaos) -> None:
    """A job whose worker is SIGKILLed mid-run is not lost: once the lease runs out its attempt
    is recorded as lost with the worker's name, and another worker runs it to success."""
    c = chaos()
    # Given a worker in the middle of a job, and an idle second worker
    victim = c.add_worker("victim")
    [job] = c.submit([c.ledger.sleeper(3)])
    first = c.wait_started(job)
    c.add_worker("heir")
    # When the first worker is SIGKILLed
    victim.signal(signal.SIGKILL)
    victim.wait()
    # Then its job's process group dies with it (the guard) ...
    wait_until(lambda: not group_alive(first.pid), 10, what="the orphaned job to die")
    # ... and the job completes on the other worker as attempt 2
    final = c.client.wait(job, 30)
    assert final.status is JobStatus.SUCCEEDED, final
    assert (final.attempts, final.worker) == (2, "heir")
    history = c.client.history(job)
    assert [a.outcome for a in history] == [Outcome.LOST, Outcome.SUCCEEDED]
    assert "worker victim lost" in history[0].error, history[0]
    assert [(e.attempt) for e in c.ledger.ends(job)] == [2]
    v = c.check([job])
    v.assert_safe()
    assert v.duplicate_starts == 1 and v.superseded == 0, v


def test_id_popped_but_never_claimed_is_put_back(chaos: Chaos) -> None:
    """An id taken from Redis by a worker that dies before claiming it is not lost: the server
    puts it back once its inflight deadline passes (not before), and it then runs once."""
    c = chaos()
    # Given a queued job and no worker
    [job] = c.submit([c.ledger.sleeper(0.2)])
    r = redis.Redis(port=c.redis_port, socket_timeout=5)
    try:
        q = RedisQueue(r, Keys("dts:"))
        # When something takes its id exactly as a worker does, then never claims it
        # (a worker SIGKILLed between the pop and the claim)
        assert q.pop(["default"], 1, c.lease) == [job]
        taken_at = time.monotonic()
        assert r.zcard(q.keys.queue("default")) == 0 and q.inflight([job]) == {job}
        # Then the server puts it back after the inflight deadline
        wait_until(
            lambda: r.zcard(q.keys.queue("default")) == 1 and not q.inflight([job]),
            c.lease * 5,
            what="the id back in its queue",
        )
        back_after = time.monotonic() - taken_at
    finally:
        r.close()
    print(f"\nid {job} back in the queue {back_after:.2f}s after it was taken (lease {c.lease}s)")
    assert back_after >= c.lease * 0.9, "put back while its taker could still claim it"
    assert f"job {job} taken from Redis but never claimed" in c.server_log()
    assert c.client.get(job).status is JobStatus.QUEUED
    # And a real worker runs it, once
    c.add_worker("w1")
    final = c.client.wait(job, 30)
    assert final.status is JobStatus.SUCCEEDED and final.attempts == 1, final
    c.check([job]).assert_safe(allow_duplicate_starts=False)


def test_frozen_worker_is_replaced_and_its_late_reports_refused(chaos: Chaos) -> None:
    """A worker frozen (SIGSTOP) for 3 leases loses its jobs to another worker; after SIGCONT
    its late results are refused (the fencing token is stale), the attempts stay lost, the
    replacement attempts' results stand, and its job still running is killed.

    Note: a frozen worker cannot stop its jobs, which run in their own process groups: job 1's
    first attempt finishes during the freeze (a superseded completion). Side effects outside
    dts must be fenced with $DTS_ATTEMPT; dts guarantees that only one result is accepted.
    """
    c = chaos()
    # Given a worker running two jobs: one that ends during the freeze, one that would not
    frozen = c.add_worker("frozen", concurrency=2)
    ends_in_freeze, outlives_freeze = c.submit(
        [c.ledger.command(_first_long(3)), c.ledger.command(_first_long(60))]
    )
    c.wait_started(ends_in_freeze)
    long_first = c.wait_started(outlives_freeze)
    c.add_worker("heir", concurrency=2)
    # When the worker is frozen for 3 x the lease
    frozen.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        # Then both jobs run again on the other worker and succeed there
        for job in (ends_in_freeze, outlives_freeze):
            final = c.client.wait(job, 30)
            assert final.status is JobStatus.SUCCEEDED, final
            assert (final.attempts, final.worker) == (2, "heir"), final
        wait_until(lambda: c.ledger.ends(ends_in_freeze), 10, what="the frozen job to finish")
        time.sleep(max(0.0, frozen_at + 3 * c.lease - time.monotonic()))
    finally:
        frozen.signal(signal.SIGCONT)
    # And after SIGCONT the stale job still running is killed ...
    wait_until(
        lambda: not group_alive(long_first.pid), 3 * c.lease, what="the stale attempt to die"
    )
    # ... the stale results are refused ...
    for job in (ends_in_freeze, outlives_freeze):
        wait_until(
            lambda job=job: f"job {job} attempt 1: result refused" in frozen.output(),  # type: ignore[misc]
            15,
            what=f"the late report of job {job} to be refused",
        )
    # ... and the server's view is the replacement attempts'
    for job in (ends_in_freeze, outlives_freeze):
        assert [a.outcome for a in c.client.history(job)] == [Outcome.LOST, Outcome.SUCCEEDED]
        assert c.client.get(job).status is JobStatus.SUCCEEDED
    assert [e.attempt for e in c.ledger.ends(outlives_freeze)] == [2]
    assert frozen.alive()
    v = c.check([ends_in_freeze, outlives_freeze])
    # the one overlap dts cannot prevent: a frozen worker cannot stop its jobs, so attempt 2 on
    # the heir began while attempt 1 still ran (and the heir's job saw it alive)
    v.assert_safe(allow_concurrent=True)
    assert (outlives_freeze, 1, 2) in v.concurrent_pairs, v
    assert any(e.other == 1 for e in c.ledger.overlaps(outlives_freeze)), v
    assert v.superseded == 1 and v.duplicate_starts == 2, v


def test_frozen_sole_worker_does_not_run_two_attempts_of_a_job(chaos: Chaos) -> None:
    """A worker frozen past its lease while it is the only worker may get its own job back
    after SIGCONT (the server re-queued it): it must then stop the stale attempt, not run both
    at once, and the job ends as one succeeded attempt after one lost one.

    Attempt 2 itself looks for live processes of attempt 1 when it starts (the ledger's
    overlap witness): it must find none."""
    c = chaos()
    # Given the only worker, running a job whose first attempt is long
    frozen = c.add_worker("alone", concurrency=2)
    [job] = c.submit([c.ledger.command(_first_long(60, later=3 * c.lease))])
    first = c.wait_started(job)
    # When it is frozen until the server has given up on the attempt, then thawed
    frozen.signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: c.client.get(job).status is JobStatus.QUEUED,
            c.lease * 5,
            what="the server to give up on the frozen attempt",
        )
    finally:
        frozen.signal(signal.SIGCONT)
    # Then the stale attempt is killed promptly and the job succeeds as attempt 2
    wait_until(lambda: not group_alive(first.pid), 3 * c.lease, what="the stale attempt to die")
    final = c.client.wait(job, 30)
    history = c.client.history(job)
    print(f"\nfinal {final.status} attempts={final.attempts}: {[a.outcome for a in history]}")
    assert final.status is JobStatus.SUCCEEDED, final
    assert [a.outcome for a in history] == [Outcome.LOST, Outcome.SUCCEEDED], history
    second = c.ledger.start_of(job, 2)
    assert second is not None and second.at > first.at
    assert not c.ledger.overlaps(job), "attempt 2 began while attempt 1 was alive"
    v = c.check([job])
    v.assert_safe()
    assert v.duplicate_starts == 1 and v.concurrent_pairs == [], v


def test_job_ten_leases_long_runs_once(chaos: Chaos) -> None:
    """Heartbeats keep a healthy worker's lease: a job running 10 x the lease runs exactly
    once, as attempt 1."""
    c = chaos()
    c.add_worker("steady")
    [job] = c.submit([c.ledger.sleeper(10 * c.lease)])
    final = c.client.wait(job, 10 * c.lease + 30)
    assert final.status is JobStatus.SUCCEEDED and final.attempts == 1, final
    assert len(c.ledger.starts(job)) == 1
    assert [a.outcome for a in c.client.history(job)] == [Outcome.SUCCEEDED]
    c.check([job]).assert_safe(allow_duplicate_starts=False)


def test_sigterm_drain_finishes_short_job_and_releases_long_one(chaos: Chaos) -> None:
    """SIGTERM drains: a job that ends within --drain-timeout finishes and is reported; one
    that does not is stopped when the drain times out and goes back to the queue at once as a
    released attempt (no lease wait, no failure counted), then completes on another worker.

    The lease is 30 s here so that 'at once' is measurable: waiting for a lease would take
    30 s, the release takes the drain timeout (5 s) plus the kill grace.
    """
    c = chaos(lease=30)
    marker = c.root / "long-job-resumed"
    m = shlex.quote(str(marker))
    # Given a worker running a 2 s job and a 60 s one (whose rerun sees the marker: quick)
    drainer = c.add_worker("drainer", "--drain-timeout", "5", concurrency=2)
    short, long = c.submit(
        [
            c.ledger.sleeper(2),
            c.ledger.command(f"if [ -e {m} ]; then sleep 0.2; else touch {m}; sleep 60; fi"),
        ]
    )
    c.wait_started(short)
    long_first = c.wait_started(long)
    # When it gets SIGTERM
    t0 = time.monotonic()
    drainer.signal(signal.SIGTERM)
    assert drainer.wait(30) == 0
    took = time.monotonic() - t0
    print(f"\ndrainer exited {took:.1f}s after SIGTERM")
    # Then it waited out the drain timeout, not the long job
    assert 4.5 <= took < 15, took
    # And the short job finished and was reported before the worker exited
    done = c.client.get(short)
    assert done.status is JobStatus.SUCCEEDED and done.attempts == 1, done
    # And the long job was stopped and is queued again already, as a released attempt
    assert not group_alive(long_first.pid)
    back = c.client.get(long)
    assert back.status is JobStatus.QUEUED, back
    row = c.db_job(long)
    assert (row["failures"], row["lost"], row["lease_expires_at"]) == (0, 0, None), row
    [released] = c.client.history(long)
    assert released.outcome is Outcome.RELEASED, released
    # And another worker completes it
    c.add_worker("heir")
    final = c.client.wait(long, 30)
    assert final.status is JobStatus.SUCCEEDED, final
    assert (final.attempts, final.worker) == (2, "heir"), final
    assert time.monotonic() - t0 < c.lease, "the released job waited for a lease"
    v = c.check([short, long])
    v.assert_safe()
    assert v.duplicate_starts == 1 and v.superseded == 0, v


def test_job_that_kills_its_worker_fails_after_max_lost(chaos: Chaos) -> None:
    """A poison job that SIGKILLs the worker running it ends failed after --max-lost (3) lost
    attempts, with the reason; it does not take the cluster down for good."""
    c = chaos(max_lost=3)
    c.add_worker("poisoned")
    # The job kills its parent only if that parent is this test's worker.
    me = f"--redis-url {c.redis_url} --name poisoned "
    body = (
        f'case "$(tr "\\000" " " < /proc/$PPID/cmdline)" in *{shlex.quote(me)}*) '
        "kill -9 $PPID;; esac; sleep 5"
    )
    [job] = c.submit([c.ledger.command(body)])
    # Restart the worker under the same name each time it dies, until the job is final
    deadline = time.monotonic() + 90
    kills = 0
    while not c.client.get(job).status.final:
        assert time.monotonic() < deadline and kills < 6, f"job still {c.client.get(job)}"
        w = c.workers["poisoned"]
        wait_until(
            lambda w=w: not w.alive() or c.client.get(job).status.final,  # type: ignore[misc]
            30,
            what="the poison job to strike",
        )
        if not w.alive():
            kills += 1
            c.restart_worker("poisoned")
    final = c.client.get(job)
    print(f"\nworker killed {kills} times; job {final.status}: {final.error}")
    assert final.status is JobStatus.FAILED, final
    assert final.attempts == 3, final
    assert c.db_job(job)["lost"] == 3
    assert "gave up after 3 lost attempts" in final.error, final.error
    assert [a.outcome for a in c.client.history(job)] == [Outcome.LOST] * 3
    assert kills == 3
    assert len(c.ledger.starts(job)) == 3 and not c.ledger.ends(job)
    # and the worker is fine afterwards
    [ok] = c.submit([c.ledger.sleeper(0.1)])
    assert c.client.wait(ok, 30).status is JobStatus.SUCCEEDED
    c.check([job, ok], expect_failed=[job]).assert_safe()


def test_job_that_always_fails_fails_after_its_retries(chaos: Chaos) -> None:
    """A job that always exits non-zero runs 1 + retries times and ends failed with its exit
    code and the reason."""
    c = chaos()
    c.add_worker("w1")
    [job] = c.submit([c.ledger.command("exit 3")], max_retries=2, backoff=0.1)
    final = c.client.wait(job, 30)
    assert final.status is JobStatus.FAILED, final
    assert (final.attempts, final.exit_code) == (3, 3), final
    assert c.db_job(job)["failures"] == 3
    assert "exited with code 3" in final.error, final.error
    history = c.client.history(job)
    assert [(a.outcome, a.exit_code) for a in history] == [(Outcome.FAILED, 3)] * 3
    assert len(c.ledger.starts(job)) == 3 and not c.ledger.ends(job)
    c.check([job], expect_failed=[job]).assert_safe()
