"""Queue controls on each store (a SQLite file, a PostgreSQL database): the stored settings, and
the claim gate through the coordinator with a real redis-server (no gRPC). The PostgreSQL
cases at the end run two coordinators on one database, as two servers would."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from dts.controls import Held, QueueSetting
from dts.domain import JobStatus
from dts.errors import InvalidArgument
from dts.queue.redis import Keys, RedisQueue
from dts.server.coordinator import Coordinator
from dts.server.settings import Settings
from dts.server.store import Store
from dts.server.store.postgres import PostgresStore
from tests.harness import RedisProcess
from tests.integration.test_coordinator import Clock, Env, coordinator_env, ok, spec


@pytest.fixture
def env(store: Store, redis_proc: RedisProcess) -> Iterator[Env]:
    yield coordinator_env(store, redis_proc)


PAUSED_Q = Held(paused=("q",))
FULL_Q = Held(full=("q",))


def submit(env: Env, n: int, queue: str = "q") -> list[int]:
    return [j.id for j in env.c.submit([spec("echo", str(i), queue=queue) for i in range(n)])]


# ---- the store ---------------------------------------------------------------------------------


def test_a_queue_setting_is_stored_read_and_dropped_when_nothing_is_set(store: Store) -> None:
    with store.transaction() as tx:
        tx.save_queue(QueueSetting("q", paused=True, updated_at=5.0))
        tx.save_queue(QueueSetting("r", limit=3, updated_at=6.0))
    assert store.queue_settings() == [
        QueueSetting("q", True, None, 5.0),
        QueueSetting("r", False, 3, 6.0),
    ]
    with store.transaction() as tx:
        assert tx.queue_settings(["r", "other"], lock=True) == {
            "r": QueueSetting("r", False, 3, 6.0)
        }
        tx.save_queue(QueueSetting("q", paused=False, updated_at=7.0))  # nothing set: dropped
        tx.save_queue(QueueSetting("r", paused=True, limit=3, updated_at=8.0))
    assert store.queue_settings() == [QueueSetting("r", True, 3, 8.0)]


def test_running_counts_and_queued_places_come_from_the_jobs(store: Store) -> None:
    with store.transaction() as tx:
        jobs = tx.insert_jobs([spec(queue="q", priority=3), spec(queue="q"), spec(queue="r")], 1.0)
        tx.claim_queued([jobs[0].id], "w", ["q"], 2.0, 30.0)
    with store.transaction() as tx:
        assert tx.running_counts(["q", "r", "none"]) == {"q": 1}
        assert tx.queued_places([j.id for j in jobs]) == {
            jobs[1].id: ("q", 0),
            jobs[2].id: ("r", 0),
        }


# ---- pause and resume --------------------------------------------------------------------------


def test_claims_of_a_paused_queue_are_refused_and_granted_again_after_resume(env: Env) -> None:
    # Given a worker of queues q and other, and a job queued in each
    session = env.worker("w1", ("q", "other"))
    (held_job,) = submit(env, 1)
    (free_job,) = submit(env, 1, "other")
    # When q is paused and the worker claims both
    info = env.c.controls.pause("q")
    assert (info.name, info.paused, info.queued) == ("q", True, 1)
    ids = env.q.pop(["q", "other"], 10, 30)
    _, assignments, held = env.c.exchange("w1", session, [], ids)
    env.q.ack(ids)
    # Then only the other queue's job is granted; q's goes back to its queue at once
    assert [a.job_id for a in assignments] == [free_job]
    assert held == PAUSED_Q
    assert env.c.get(held_job).status is JobStatus.QUEUED
    assert env.q.redis.zrange(env.q.keys.queue("q"), 0, -1) == [str(held_job).encode()]
    # And every heartbeat says q is paused, until it is resumed
    assert env.c.heartbeat("w1", session, [], False)[1] == PAUSED_Q
    env.c.controls.resume("q")
    assert env.c.heartbeat("w1", session, [], False)[1] == Held()
    assert env.take("w1", session, queues=("q",)) == [held_job]


def test_a_refused_id_goes_back_to_the_front_of_its_queue(env: Env) -> None:
    first, second, third = submit(env, 3)
    session = env.worker("w1", ("q",))
    env.c.controls.pause("q")
    ids = env.q.pop(["q"], 1, 30)
    assert ids == [first]
    assert env.c.exchange("w1", session, [], ids)[1] == []
    env.q.ack(ids)
    env.c.controls.resume("q")
    assert env.q.pop(["q"], 3, 30) == [first, second, third]


def test_a_pause_is_kept_in_the_store(env: Env) -> None:
    env.c.controls.pause("q")
    env.c.controls.set_limit("q", 4)
    again = Coordinator(env.c.store, env.q, env.c.settings, clock=env.clock)
    (info,) = again.controls.listing()
    assert (info.name, info.paused, info.limit) == ("q", True, 4)


# ---- limits ------------------------------------------------------------------------------------


def test_claims_beyond_a_limit_are_refused_and_granted_when_a_job_ends(env: Env) -> None:
    # Given a limit of 2 on q and four queued jobs
    jobs = submit(env, 4)
    env.c.controls.set_limit("q", 2)
    session = env.worker("w1", ("q",))
    # When the worker claims all four, then the first two are granted and q is full
    _, assignments, held = env.c.exchange("w1", session, [], env.q.pop(["q"], 4, 30))
    assert [a.job_id for a in assignments] == jobs[:2]
    assert held == FULL_Q
    assert env.c.heartbeat("w1", session, [], False)[1] == FULL_Q
    # And the other two are back in the queue, in order
    assert env.q.pop(["q"], 4, 30) == jobs[2:]
    # When one job ends, its result and the next claim in one exchange: one more is granted
    acks, assignments, held = env.c.exchange("w1", session, [ok(jobs[0])], jobs[2:])
    assert acks == [(True, "")]
    assert [a.job_id for a in assignments] == [jobs[2]]
    assert held == FULL_Q
    # And lifting the limit lets the last one run
    env.c.controls.set_limit("q", None)
    assert env.c.heartbeat("w1", session, [], False)[1] == Held()
    assert [a.job_id for a in env.c.exchange("w1", session, [], [jobs[3]])[1]] == [jobs[3]]


def test_a_lost_workers_slots_come_back_when_its_lease_is_reaped(env: Env) -> None:
    jobs = submit(env, 3)
    env.c.controls.set_limit("q", 2)
    dead = env.worker("dead", ("q",))
    assert len(env.c.exchange("dead", dead, [], jobs)[1]) == 2
    alive = env.worker("alive", ("q",))
    assert env.c.exchange("alive", alive, [], [jobs[2]])[1] == []
    # the dead worker's leases run out; until they are reaped its jobs hold the slots
    env.clock.now += 11
    env.c.heartbeat("alive", alive, [], False)
    assert env.c.exchange("alive", alive, [], [jobs[2]])[1] == []
    assert env.c.reap_leases() == 2
    assert [a.job_id for a in env.c.exchange("alive", alive, [], [jobs[2]])[1]] == [jobs[2]]


def test_bad_queue_names_and_limits_are_refused_and_nothing_is_stored(env: Env) -> None:
    for bad in ("", "a b", "x" * 65, "ü"):
        with pytest.raises(InvalidArgument, match="queue name"):
            env.c.controls.pause(bad)
    for limit in (0, -1, 1_000_001):
        with pytest.raises(InvalidArgument, match="limit must be between 1 and 1000000"):
            env.c.controls.set_limit("q", limit)
    assert env.c.store.queue_settings() == []


# ---- two servers on one PostgreSQL ---------------------------------------------------------


@pytest.fixture
def two(postgres_url: str, redis_proc: RedisProcess) -> Iterator[tuple[Env, Env]]:
    cfg = Settings(worker_timeout=10, default_retries=0, default_backoff=0, max_lost=3)
    envs = []
    stores = [PostgresStore(postgres_url), PostgresStore(postgres_url)]
    for store in stores:
        queue = RedisQueue(redis_proc.client(), Keys("test:"))
        envs.append(Env(Coordinator(store, queue, cfg), queue, Clock(), redis_proc))
    yield envs[0], envs[1]
    for store in stores:
        store.close()


def test_a_limit_holds_when_two_servers_grant_claims_at_once(two: tuple[Env, Env]) -> None:
    a, b = two
    jobs = submit(a, 16)
    a.c.controls.set_limit("q", 3)
    sessions = [(env, f"w{i}", env.worker(f"w{i}", ("q",))) for i, env in enumerate([a, b] * 4)]
    start = threading.Barrier(len(sessions))
    granted: list[int] = []

    def claim(i: int) -> None:
        env, name, session = sessions[i]
        start.wait(10)
        granted.extend(
            a.job_id for a in env.c.exchange(name, session, [], jobs[2 * i : 2 * i + 2])[1]
        )

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(granted) == 3
    assert len(a.c.list_jobs(JobStatus.RUNNING, "q", 100)) == 3


def test_a_pause_through_one_server_stops_claims_through_the_other(two: tuple[Env, Env]) -> None:
    a, b = two
    (job,) = submit(a, 1)
    session = b.worker("w1", ("q",))
    a.c.controls.pause("q")
    _, assignments, held = b.c.exchange("w1", session, [], [job])
    assert assignments == [] and held == PAUSED_Q
    a.c.controls.resume("q")
    assert [x.job_id for x in b.c.exchange("w1", session, [], [job])[1]] == [job]
