"""The schedules' rules on each store and a real redis-server, with a clock the test moves:
each due time one job (also with two servers' rules on one store), catch-up after a sleep,
overlap skip counted, pause and resume, apply."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dts.domain import JobSpec, JobStatus
from dts.errors import AlreadyExists, InvalidArgument, NotFound
from dts.queue.redis import Keys, RedisQueue
from dts.schedule import Catchup, Overlap, Schedule
from dts.server.coordinator import Coordinator
from dts.server.schedules import Schedules
from dts.server.settings import Settings
from dts.server.store import Store
from tests.harness import RedisProcess
from tests.integration.test_coordinator import Clock

SPEC = JobSpec(argv=("true",))


@dataclass
class Env:
    s: Schedules
    q: RedisQueue
    clock: Clock

    def dues(self, name: str) -> list[float]:
        return sorted(j.due_at for j in self.s.store.schedule_jobs(name, 1000) if j.due_at)


@pytest.fixture
def env(store: Store, redis_proc: RedisProcess) -> Iterator[Env]:
    cfg = Settings(worker_timeout=10, default_retries=0, default_backoff=0, max_lost=3)
    queue = RedisQueue(redis_proc.client(), Keys("test:"))
    clock = Clock()
    clock.now = 1_800_000_000.5
    yield Env(Schedules(Coordinator(store, queue, cfg, clock=clock)), queue, clock)


def every(name: str, seconds: float, **kw: object) -> Schedule:
    return Schedule(name, SPEC, every=seconds, **kw)  # type: ignore[arg-type]


def test_each_due_time_makes_one_job_queued_in_redis(env: Env) -> None:
    added = env.s.add(every("s", 10))
    assert added.next_due == 1_800_000_010.0
    awake = env.clock.now
    assert env.s.tick(awake) == added.next_due  # nothing due yet
    for _ in range(3):
        env.clock.now += 10
        env.s.tick(awake)
        env.s.tick(awake)  # a second tick at the same time makes nothing more
    assert env.dues("s") == [1_800_000_010.0, 1_800_000_020.0, 1_800_000_030.0]
    jobs = env.s.store.schedule_jobs("s", 10)
    assert all(j.status is JobStatus.QUEUED and j.schedule == "s" for j in jobs)
    assert sorted(env.q.pop(("default",), 10, 30)) == sorted(j.id for j in jobs)


def test_two_servers_rules_on_one_store_fire_a_due_time_once(env: Env) -> None:
    other = Schedules(env.s.c)  # a second server's rules over the same store
    env.s.add(every("s", 10))
    env.clock.now += 10
    env.s.tick(env.clock.now - 1)
    other.tick(env.clock.now - 1)
    assert env.dues("s") == [1_800_000_010.0]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(Catchup.NONE, 0), (Catchup.LAST, 1), (Catchup.ALL, 6)],
)
def test_due_times_missed_while_no_ticker_ran_follow_the_policy(
    env: Env, policy: Catchup, expected: int
) -> None:
    env.s.add(every("s", 10, catchup=policy))
    env.clock.now += 65  # down for six due times; the ticker wakes now
    env.s.tick(env.clock.now)
    assert len(env.dues("s")) == expected
    env.clock.now += 10  # then on time again: one job each
    env.s.tick(env.clock.now - 10)
    assert len(env.dues("s")) == expected + 1


def test_overlap_skip_makes_no_job_while_the_last_is_not_final_and_counts(env: Env) -> None:
    env.s.add(every("s", 10, overlap=Overlap.SKIP))
    awake = env.clock.now
    env.clock.now += 10
    env.s.tick(awake)
    env.clock.now += 10
    env.s.tick(awake)  # the first job is still queued: skipped
    assert len(env.dues("s")) == 1
    (s, _, _) = env.s.detail("s", 0, 0)
    assert s.skips == 1 and s.last_skip_at == env.clock.now
    (job,) = env.s.store.schedule_jobs("s", 1)
    env.s.c.cancel(job.id)
    env.clock.now += 10
    env.s.tick(awake)
    assert len(env.dues("s")) == 2


def test_a_paused_schedule_fires_nothing_and_resuming_catches_nothing_up(env: Env) -> None:
    env.s.add(every("s", 10, catchup=Catchup.ALL))
    env.s.pause("s")
    env.clock.now += 100
    env.s.tick(env.clock.now - 100)
    assert env.dues("s") == []
    resumed = env.s.resume("s")
    assert resumed.next_due > env.clock.now
    env.s.tick(env.clock.now - 100)
    assert env.dues("s") == []


def test_names_are_unique_and_unknown_ones_not_found(env: Env) -> None:
    env.s.add(every("s", 10))
    with pytest.raises(AlreadyExists, match="schedule s exists"):
        env.s.add(every("s", 20))
    for call in (env.s.pause, env.s.resume, env.s.remove, env.s.run):
        with pytest.raises(NotFound, match="no schedule named 'x'"):
            call("x")
    with pytest.raises(InvalidArgument, match="invalid cron"):
        env.s.add(Schedule("c", SPEC, cron="nope"))
    assert [s.name for s in env.s.all()] == ["s"]


def test_run_makes_a_job_now_without_a_due_time(env: Env) -> None:
    env.s.add(every("s", 3600))
    job = env.s.run("s")
    assert job.schedule == "s" and job.due_at is None and job.status is JobStatus.QUEUED
    assert env.s.detail("s", 0, 5)[2] == [env.s.c.get(job.id)]


def test_apply_adds_changes_and_prunes_and_dry_run_writes_nothing(env: Env) -> None:
    env.s.add(every("keep", 10))
    env.s.add(every("old", 10))
    wanted = [every("keep", 10), every("new", 60), every("old", 20)]
    dry = env.s.apply(wanted, prune=False, dry_run=True)
    assert dry == [("keep", "unchanged"), ("new", "added"), ("old", "changed")]
    assert [s.name for s in env.s.all()] == ["keep", "old"]
    done = env.s.apply([every("new", 60)], prune=True, dry_run=False)
    assert done == [("keep", "removed"), ("new", "added"), ("old", "removed")]
    assert [s.name for s in env.s.all()] == ["new"]
    with pytest.raises(InvalidArgument, match="defined twice"):
        env.s.apply([every("a", 10), every("a", 20)], prune=False, dry_run=False)
