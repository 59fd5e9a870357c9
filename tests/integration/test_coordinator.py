"""The coordinator's rules on each store (a SQLite file, a PostgreSQL database) and a real
redis-server (no gRPC)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from dts.domain import Assignment, JobSpec, JobStatus, Lease, Outcome, Result
from dts.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SessionSuperseded,
    UnknownSession,
)
from dts.queue.redis import Keys, RedisQueue
from dts.server.coordinator import Coordinator
from dts.server.settings import Settings
from dts.server.store import Store
from tests.harness import RedisProcess, wait_until


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    c: Coordinator
    q: RedisQueue
    clock: Clock
    redis: RedisProcess

    sessions: dict[str, str] = field(default_factory=dict)

    def worker(self, name: str = "w1", queues: tuple[str, ...] = ("default",)) -> str:
        self.sessions[name] = self.c.register(name, "host", 1, 2, queues)
        return self.sessions[name]

    def claim(self, name: str, session: str, ids: list[int]) -> list[Assignment]:
        return self.c.exchange(name, session, [], ids)[1]

    def report(self, name: str, results: list[Result]) -> list[tuple[bool, str]]:
        return self.c.exchange(name, self.sessions[name], results, [])[0]

    def take(
        self,
        name: str,
        session: str,
        count: int = 10,
        queues: tuple[str, ...] = ("default",),
    ) -> list[int]:
        ids = self.q.pop(queues, count, 30)
        assignments = self.claim(name, session, ids)
        self.q.ack(ids)
        return [a.job_id for a in assignments]


def coordinator_env(store: Store, redis_proc: RedisProcess, max_lost: int = 3) -> Env:
    """A coordinator on `store` with a real Redis, a test clock and no retries by default."""
    cfg = Settings(worker_timeout=10, default_retries=0, default_backoff=0, max_lost=max_lost)
    queue = RedisQueue(redis_proc.client(), Keys("test:"))
    clock = Clock()
    return Env(
        Coordinator(store, queue, cfg, clock=clock, rand=lambda: 0.5), queue, clock, redis_proc
    )


@pytest.fixture
def env(store: Store, redis_proc: RedisProcess) -> Iterator[Env]:
    """The coordinator on each store in turn (the `store` fixture), and a real Redis."""
    yield coordinator_env(store, redis_proc)


def spec(*argv: str, **kw: object) -> JobSpec:
    return JobSpec(argv=argv or ("true",), **kw)  # type: ignore[arg-type]


def ok(job_id: int, attempt: int = 1) -> Result:
    return Result(job_id, attempt, Outcome.SUCCEEDED, 0)


def test_submit_stores_and_enqueues(env: Env) -> None:
    # Given two submitted jobs, when a worker pops, then it gets them in FIFO order
    jobs = env.c.submit([spec("echo", "1"), spec("echo", "2")])
    assert [j.status for j in jobs] == [JobStatus.QUEUED, JobStatus.QUEUED]
    assert env.q.pop(["default"], 10, 30) == [jobs[0].id, jobs[1].id]


def test_a_submit_retried_with_its_key_is_not_stored_twice(env: Env) -> None:
    # Given a submit of three jobs with a key, one of which has run since
    jobs = env.c.submit([spec("echo", "1"), spec("echo", "2"), spec("echo", "3")], key="k-1")
    session = env.worker()
    assert env.take("w1", session, 1) == [jobs[0].id]
    # When the same submit comes again with the same key
    again = env.c.submit([spec("echo", "1"), spec("echo", "2"), spec("echo", "3")], key="k-1")
    # Then it gets the same jobs, as they are now, and nothing new is stored or queued
    assert [j.id for j in again] == [j.id for j in jobs]
    assert again[0].status is JobStatus.RUNNING
    assert len(env.c.list_jobs(None, None, 100)) == 3
    assert sorted(env.q.pop(["default"], 10, 30)) == [jobs[1].id, jobs[2].id]
    # And a different key, or none, stores anew
    assert env.c.submit([spec()], key="k-2")[0].id > jobs[-1].id
    assert env.c.submit([spec()])[0].id > jobs[-1].id


def test_a_key_given_to_a_different_submit_is_refused(env: Env) -> None:
    env.c.submit([spec(), spec()], key="k")
    with pytest.raises(InvalidArgument, match="submit key 'k' was given to another submit"):
        env.c.submit([spec()], key="k")
    with pytest.raises(InvalidArgument, match="a submit key is at most 128 printable ASCII"):
        env.c.submit([spec()], key="x" * 129)
    # two submits of one commit (a stream's group) with the same key: one job, answered twice
    first, second = env.c.store_submits([[spec()], [spec()]], ["same", "same"])
    assert isinstance(first, list) and isinstance(second, list)
    assert [j.id for j in first] == [j.id for j in second]


def test_submit_keys_are_forgotten_after_a_day(env: Env) -> None:
    first = env.c.submit([spec()], key="k")
    env.clock.now += 86400 + 1
    assert env.c.forget_submit_keys() == 1
    assert env.c.submit([spec()], key="k")[0].id != first[0].id


def test_submit_validates_every_job(env: Env) -> None:
    with pytest.raises(InvalidArgument, match="job 2: priority must be between 0 and 9"):
        env.c.submit([spec(), spec(priority=12)])
    assert env.c.list_jobs(None, None, 10) == []  # nothing of a refused batch is stored


def test_claim_is_a_compare_and_set(env: Env) -> None:
    # Given a job delivered twice (duplicate id in Redis)
    job = env.c.submit([spec()])[0]
    s1, s2 = env.worker("w1"), env.worker("w2")
    # When both workers claim it, then only the first gets it
    assert [a.job_id for a in env.claim("w1", s1, [job.id])] == [job.id]
    assert env.claim("w2", s2, [job.id]) == []
    assert env.c.get(job.id).worker == "w1"


def test_claim_with_an_unknown_session_is_refused(env: Env) -> None:
    job = env.c.submit([spec()])[0]
    with pytest.raises(UnknownSession):
        env.claim("ghost", "nope", [job.id])


def test_a_claim_of_a_job_of_a_queue_the_worker_does_not_serve_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a job of queue secretq, and a worker registered for fq alone
    job = env.c.submit([spec("deploy", queue="secretq", env=(("SECRET", "s3cr3t"),))])[0]
    s = env.worker("fq-worker", ("fq",))
    # When that worker claims the job's id (a misrouted id, or a hostile worker)
    with caplog.at_level(logging.WARNING, "dts.coordinator"):
        assert env.claim("fq-worker", s, [job.id, 10**9]) == []
    # Then it gets nothing, the server says why, and the job is untouched
    assert f"claimed job(s) of other queues: {job.id} (secretq)" in caplog.text
    untouched = env.c.get(job.id)
    assert (untouched.status, untouched.attempts, untouched.worker) == (JobStatus.QUEUED, 0, "")
    assert env.c.history(job.id) == []
    # And a made-up success for it is refused
    assert env.report("fq-worker", [ok(job.id)])[0][0] is False
    # While a worker of secretq claims it as usual
    s2 = env.worker("secret-worker", ("fq", "secretq"))
    assert [a.job_id for a in env.claim("secret-worker", s2, [job.id])] == [job.id]


def test_report_success_makes_the_job_final_with_output(env: Env) -> None:
    job = env.c.submit([spec()])[0]
    s = env.worker()
    env.take("w1", s)
    r = Result(job.id, 1, Outcome.SUCCEEDED, 0, "", b"out\xff", b"err")
    assert env.report("w1", [r]) == [(True, "")]
    done = env.c.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.exit_code == 0
    out = env.c.logs(job.id, 0)
    assert (out.stdout, out.stderr) == (b"out\xff", b"err")


def test_a_stale_fencing_token_is_rejected(env: Env) -> None:
    # Given a job whose first attempt was lost and that now runs as attempt 2 elsewhere
    job = env.c.submit([spec()])[0]
    s1, s2 = env.worker("w1"), env.worker("w2")
    env.take("w1", s1)
    env.clock.now += 11
    env.c.reap_leases()
    assert env.c.get(job.id).status is JobStatus.QUEUED
    assert env.take("w2", s2) == [job.id]
    # When the first worker comes back with its result
    acks = env.report("w1", [Result(job.id, 1, Outcome.FAILED, 1, "boom")])
    # Then it is refused and the job keeps running as attempt 2
    assert acks[0][0] is False and "stale attempt 1" in acks[0][1]
    current = env.c.get(job.id)
    assert (current.status, current.attempts, current.worker) == (JobStatus.RUNNING, 2, "w2")
    assert env.report("w2", [ok(job.id, 2)]) == [(True, "")]
    hist = env.c.history(job.id)
    assert [(a.attempt, a.outcome) for a in hist] == [(1, Outcome.LOST), (2, Outcome.SUCCEEDED)]
    assert "lost" in hist[0].error


def test_heartbeat_renews_leases_and_returns_stale_ones(env: Env) -> None:
    job = env.c.submit([spec()])[0]
    s = env.worker()
    env.take("w1", s)
    for _ in range(5):  # 5 x 8 s > the 10 s lease: only heartbeats keep it alive
        env.clock.now += 8
        assert env.c.heartbeat("w1", s, [Lease(job.id, 1)], False)[0] == []
        env.c.reap_leases()
    assert env.c.get(job.id).status is JobStatus.RUNNING
    # a lease the worker no longer holds comes back as "stop it"
    env.c.cancel(job.id)
    assert env.c.heartbeat("w1", s, [Lease(job.id, 1)], False)[0] == [Lease(job.id, 1)]


def test_lost_too_often_ends_failed(env: Env) -> None:
    job = env.c.submit([spec()])[0]
    s = env.worker()
    for _ in range(3):
        assert env.take("w1", s) == [job.id]
        env.clock.now += 11
        env.c.heartbeat("w1", s, [], False)
        env.c.reap_leases()
    final = env.c.get(job.id)
    assert final.status is JobStatus.FAILED and "gave up after 3 lost attempts" in final.error


def test_failure_retries_with_backoff_then_fails(env: Env) -> None:
    job = env.c.submit([spec(max_retries=1, backoff=4.0)])[0]
    s = env.worker()
    env.take("w1", s)
    env.report("w1", [Result(job.id, 1, Outcome.FAILED, 2, "exited with code 2")])
    waiting = env.c.get(job.id)
    assert waiting.status is JobStatus.SCHEDULED
    assert waiting.run_at == pytest.approx(env.clock.now + 4.0)  # rand 0.5 = no jitter
    assert env.c.promote_due() == 0
    env.clock.now += 4.0
    assert env.c.promote_due() == 1
    assert env.take("w1", s) == [job.id]
    env.report("w1", [Result(job.id, 2, Outcome.TIMED_OUT, 124, "timed out after 1s")])
    final = env.c.get(job.id)
    assert (final.status, final.exit_code, final.error) == (
        JobStatus.FAILED,
        124,
        "timed out after 1s",
    )


def test_released_jobs_run_again_without_counting_a_failure(env: Env) -> None:
    job = env.c.submit([spec()])[0]
    s = env.worker()
    env.take("w1", s)
    env.report("w1", [Result(job.id, 1, Outcome.RELEASED, None, "worker stopped")])
    again = env.c.get(job.id)
    assert again.status is JobStatus.QUEUED and again.failures == 0
    assert env.take("w1", s) == [job.id]


def test_cancel_and_retry(env: Env) -> None:
    job = env.c.submit([spec()])[0]
    assert env.c.cancel(job.id).status is JobStatus.CANCELLED
    with pytest.raises(FailedPrecondition, match="already cancelled"):
        env.c.cancel(job.id)
    assert env.c.retry(job.id).status is JobStatus.QUEUED
    with pytest.raises(FailedPrecondition):
        env.c.retry(job.id)
    with pytest.raises(NotFound):
        env.c.cancel(424242)


def test_output_of_a_cancelled_running_attempt_is_kept(env: Env) -> None:
    job = env.c.submit([spec()])[0]
    s = env.worker()
    env.take("w1", s)
    env.c.cancel(job.id)
    env.report("w1", [Result(job.id, 1, Outcome.CANCELLED, 143, "cancelled", b"partial")])
    assert env.c.logs(job.id, 1).stdout == b"partial"
    assert env.c.get(job.id).status is JobStatus.CANCELLED


def test_a_restarted_worker_gets_its_old_jobs_recovered_at_once(env: Env) -> None:
    job = env.c.submit([spec()])[0]
    s = env.worker("w1")
    env.take("w1", s)
    env.worker("w1")  # the same name registers again: its previous life is gone
    again = env.c.get(job.id)
    assert again.status is JobStatus.QUEUED and "restarted" in again.error


def test_redis_flushed_is_refilled_from_the_store(env: Env) -> None:
    # Given queued jobs, and Redis restarted empty
    jobs = env.c.submit([spec() for _ in range(5)])
    env.c.check_redis()
    env.redis.client().flushall()
    # When the reconciler notices the missing epoch
    env.c.check_redis()
    assert env.c.reconcile_needed.is_set()
    assert env.c.reconcile() == 5
    # Then every queued job is back
    assert sorted(env.q.pop(["default"], 10, 30)) == [j.id for j in jobs]


def test_an_id_taken_but_never_claimed_is_put_back(env: Env) -> None:
    job = env.c.submit([spec()])[0]
    assert env.q.pop(["default"], 1, 0.05) == [job.id]  # a worker took it, then died
    wait_until(lambda: env.c.recover_inflight() == 1, 5, what="inflight recovery")
    assert env.q.pop(["default"], 1, 30) == [job.id]


def test_reconcile_skips_ids_held_by_a_worker(env: Env) -> None:
    env.c.submit([spec()])
    env.q.pop(["default"], 1, 30)
    assert env.c.reconcile() == 0


def test_wait_returns_when_the_job_ends(env: Env) -> None:
    job = env.c.submit([spec()])[0]
    s = env.worker()
    env.take("w1", s)
    t = threading.Timer(0.2, lambda: env.report("w1", [ok(job.id)]))
    t.start()
    assert env.c.wait(job.id, 10).status is JobStatus.SUCCEEDED
    t.join()


def test_a_second_registration_supersedes_the_first_session(env: Env) -> None:
    # Given a worker registered twice under one name (a restart, or a misconfigured twin)
    old = env.worker("twin")
    new = env.worker("twin")
    # Then the old session is told it was superseded, and the new one works
    with pytest.raises(SessionSuperseded, match="registered again"):
        env.c.heartbeat("twin", old, [], False)
    assert env.c.heartbeat("twin", new, [], False)[0] == []
    # and an unknown name is only asked to register
    with pytest.raises(UnknownSession):
        env.c.heartbeat("nobody", new, [], False)


def test_a_live_worker_keeps_its_name_against_another_credential(env: Env) -> None:
    def register(credential: str) -> str:
        return env.c.register("w1", "host", 1, 2, ("default",), credential)

    # Given a live worker registered with token A, running a job
    job = env.c.submit([spec()])[0]
    first = register("sha256:aaaaaaaaaaaaaaaa")
    assert env.take("w1", first) == [job.id]
    # When a registration under its name comes with token B
    with pytest.raises(PermissionDenied, match="w1 is in use by a live worker"):
        register("sha256:bbbbbbbbbbbbbbbb")
    # Then it is refused, and the worker keeps its session and its job
    assert env.c.heartbeat("w1", first, [Lease(job.id, 1)], False)[0] == []
    assert env.c.get(job.id).status is JobStatus.RUNNING
    # A restart with token A replaces the old session at once (its job runs again)
    register("sha256:aaaaaaaaaaaaaaaa")
    with pytest.raises(SessionSuperseded):
        env.c.heartbeat("w1", first, [], False)
    assert env.c.get(job.id).status is JobStatus.QUEUED
    # Once that session has gone silent past the worker timeout, token B may take the name
    env.clock.now += 11
    third = register("sha256:bbbbbbbbbbbbbbbb")
    assert env.c.workers()[0].credential == "sha256:bbbbbbbbbbbbbbbb"
    # and anyone may after a clean stop
    env.c.unregister("w1", third)
    register("sha256:cccccccccccccccc")
    assert env.c.workers()[0].credential == "sha256:cccccccccccccccc"


def test_silent_workers_are_lost_then_forgotten_after_a_day(env: Env) -> None:
    env.worker("quiet")
    env.worker("leaver")
    env.c.unregister("leaver", env.sessions["leaver"])
    env.clock.now += 11  # past the 10 s worker timeout
    env.c.reap_leases()
    states = {w.name: w.state.value for w in env.c.workers()}
    assert states == {"quiet": "lost", "leaver": "stopped"}
    env.clock.now += 86400
    env.c.reap_leases()
    assert env.c.workers() == []


def test_successes_in_bulk_are_fenced_like_any_report(env: Env) -> None:
    # Given three jobs: one w1 runs, one w2 runs, one w1 lost and w2 now runs as attempt 2
    a, b, c = (j.id for j in env.c.submit([spec(), spec(), spec()]))
    s1, s2 = env.worker("w1"), env.worker("w2")
    assert [x.job_id for x in env.claim("w1", s1, [a, c])] == [a, c]
    env.clock.now += 11
    env.c.reap_leases()  # both of w1's leases expire; a and c are queued again
    assert [x.job_id for x in env.claim("w2", s2, [c, b])] == [c, b]  # order kept
    assert [x.job_id for x in env.claim("w1", s1, [a, b])] == [a]  # b is w2's: skipped
    # When w1 reports success for a (its attempt 2), for c (stale attempt 1) and for b
    # (not its job), and w2 reports a failure of b in the same breath as a success of c
    acks = env.report("w1", [ok(a, 2), ok(c, 1), ok(b, 1)])
    # Then only a's success is recorded; the others are refused and change nothing
    assert [ok_ for ok_, _ in acks] == [True, False, False]
    assert env.c.get(a).status is JobStatus.SUCCEEDED
    assert (env.c.get(c).status, env.c.get(c).attempts) == (JobStatus.RUNNING, 2)
    assert (env.c.get(b).status, env.c.get(b).worker) == (JobStatus.RUNNING, "w2")
    acks = env.report("w2", [Result(b, 1, Outcome.FAILED, 3, "exit 3"), ok(c, 2)])
    assert acks == [(True, ""), (True, "")]
    assert (env.c.get(b).status, env.c.get(b).exit_code) == (JobStatus.FAILED, 3)
    assert env.c.get(c).status is JobStatus.SUCCEEDED
    assert [(h.attempt, h.outcome) for h in env.c.history(c)] == [
        (1, Outcome.LOST),
        (2, Outcome.SUCCEEDED),
    ]
