"""Whatever members and scores a Redis writer adds to dts's keys, pops and the server's recovery
never raise: job ids come out in score order, everything else is dropped from the queue and
from `inflight` (real redis-server, real SQLite, no gRPC)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dts.domain import JobSpec, JobStatus, Outcome, Result
from dts.queue import ID_BITS
from dts.queue.redis import Keys, RedisQueue
from dts.server.coordinator import Coordinator
from dts.server.settings import Settings
from dts.server.store.sqlite import SqliteStore

LEASE = 30.0
prefixes = (f"t{n}:" for n in itertools.count())


def job_id_of(member: bytes) -> int | None:
    """The test's own oracle: a member is a job id iff it is exactly what str(id) writes."""
    try:
        value = int(member.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if 0 < value < 2**ID_BITS and str(value).encode() == member else None


# the shapes a writer (or a buggy tool) is likely to leave, beside arbitrary bytes and text
tricky = st.sampled_from(
    [
        b"abc",
        b"1e5",
        b"",
        b"99999999999999999999999",
        b"0",
        b"-1",
        b"+5",
        b"007",
        b" 5",
        b"5 ",
        b"5\n",
        b"1_000",
        b"0x10",
        b"\xff",
        "\u0663".encode(),  # ARABIC-INDIC DIGIT THREE: int() would read it
        "\uff11\uff12".encode(),  # FULLWIDTH 12
        str(2**ID_BITS).encode(),
        str(2**ID_BITS - 1).encode(),
        b"9" * 5000,  # more digits than int() converts
    ]
)
members = st.one_of(
    tricky,
    st.binary(max_size=24),
    st.text(max_size=12).map(str.encode),
    st.integers(min_value=1, max_value=2**ID_BITS - 1).map(lambda i: str(i).encode()),
)
scores = st.one_of(
    st.floats(allow_nan=False),  # infinities, subnormals, -0.0, huge
    st.sampled_from([-math.inf, math.inf, 0.0, -1.0, 1e308]),
)
entries = st.dictionaries(members, scores, max_size=20)


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield c
    c.close()


@pytest.fixture(scope="module")
def coordinator(
    client: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Coordinator]:
    store = SqliteStore(str(tmp_path_factory.mktemp("members") / "dts.db"))
    cfg = Settings(worker_timeout=10, default_retries=0, default_backoff=0)
    yield Coordinator(store, RedisQueue(client, Keys("coord:")), cfg)
    store.close()


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(data=entries, counts=st.lists(st.integers(min_value=1, max_value=5), min_size=1))
def test_pops_return_the_job_ids_in_score_order_and_drop_the_rest(
    client: redis.Redis, data: dict[bytes, float], counts: list[int]
) -> None:
    # Given a queue holding anything at any score
    keys = Keys(next(prefixes))
    q = RedisQueue(client, keys)
    if data:
        client.zadd(keys.queue("default"), data)
    expected = [
        job_id_of(m) for m, _ in sorted(data.items(), key=lambda e: (e[1], e[0]))
    ]  # Redis's order: score, then the member's bytes
    # When workers pop it empty, the first pop waiting for a wake token, in batches of any size
    got = q.wait_and_pop(["default"], 0.01, counts[0], LEASE)
    for count in itertools.cycle(counts):
        if not client.zcard(keys.queue("default")):
            break
        got += q.pop(["default"], count, LEASE)
    # Then the job ids came out in score order, the rest is gone from the queue and inflight
    assert got == [i for i in expected if i is not None]
    parked = client.zrange(keys.inflight, 0, -1)
    assert sorted(parked) == sorted(str(i).encode() for i in got)
    q.ack(got)
    assert client.zcard(keys.inflight) == 0


@SETTINGS
@given(data=entries)
def test_recovery_of_inflight_never_raises_and_drops_what_is_no_job_id(
    client: redis.Redis, coordinator: Coordinator, data: dict[bytes, float]
) -> None:
    # Given `inflight` holding anything at any deadline, and a queued job among it
    keys = coordinator.queue.keys
    client.delete(keys.inflight, keys.queue("default"))
    (job,) = coordinator.submit([JobSpec(argv=("true",))])
    client.zrem(keys.queue("default"), str(job.id))
    client.zadd(keys.inflight, {**data, str(job.id).encode(): 0})
    secs, micros = client.time()
    now = secs + micros / 1e6
    # When the reaper recovers what expired (a few at a time), and the reconciler runs
    for _ in range(len(data) // 7 + 2):
        coordinator.recover_inflight(limit=7)
    coordinator.reconcile()
    # Then nothing expired is left in inflight, junk or not, and the job is queued again
    left = client.zrange(keys.inflight, 0, -1, withscores=True)
    assert all(sc > now for _, sc in left), left
    assert client.zscore(keys.queue("default"), str(job.id)) is not None
    coordinator.cancel(job.id)


def test_an_id_parked_forever_in_inflight_is_queued_again_by_the_reconciler(
    client: redis.Redis, coordinator: Coordinator
) -> None:
    # Given a queued job whose id a writer parked in inflight with an infinite deadline
    keys = coordinator.queue.keys
    (job,) = coordinator.submit([JobSpec(argv=("true",))])
    client.zrem(keys.queue("default"), str(job.id))
    client.zadd(keys.inflight, {str(job.id): math.inf})
    # When the reconciler runs, then the job is back in its queue
    assert coordinator.reconcile() >= 1
    assert client.zscore(keys.queue("default"), str(job.id)) is not None
    coordinator.cancel(job.id)


# int64 is all the wire carries; the coordinator takes Python ints from any caller
any_ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([-(2**63), -1, 0, 2**ID_BITS, 2**ID_BITS - 1, 2**63 - 1, 2**64]),
)


@SETTINGS
@given(claims=st.lists(any_ints, max_size=6), reported=st.lists(any_ints, max_size=4))
def test_exchange_of_any_ids_is_answered_without_an_error(
    coordinator: Coordinator, claims: list[int], reported: list[int]
) -> None:
    # Given a registered worker and a queued job
    session = coordinator.register("w-any", "host", 1, 2, ["default"])
    (job,) = coordinator.submit([JobSpec(argv=("true",))])
    # When it claims and reports ids of any value (a buggy or hostile worker)
    results = [Result(i, 1, Outcome.SUCCEEDED, 0, "") for i in reported]
    acks, assignments, _ = coordinator.exchange("w-any", session, results, [*claims, job.id])
    # Then the call is answered: the real job claimed, every other report refused with a reason
    assert [a.job_id for a in assignments] == [job.id]
    assert len(acks) == len(results)
    for r, (ok, why) in zip(results, acks, strict=True):
        assert ok or why, r
        if not 0 < r.job_id < 2**ID_BITS:
            assert not ok
    assert coordinator.get(job.id).status is JobStatus.RUNNING
    coordinator.exchange("w-any", session, [Result(job.id, 1, Outcome.SUCCEEDED, 0, "")], [])
    assert coordinator.get(job.id).status is JobStatus.SUCCEEDED


def test_an_epoch_of_any_bytes_does_not_stop_the_redis_check(
    client: redis.Redis, coordinator: Coordinator
) -> None:
    # Given an epoch key a writer set to bytes that are no text
    epoch = coordinator.queue.keys.epoch
    client.set(epoch, b"\xff\xfe")
    coordinator.reconcile_needed.clear()
    # When the reconciler checks Redis, then it goes on: the key is there, Redis did not restart
    coordinator.check_redis()
    assert client.get(epoch) == b"\xff\xfe"
    assert not coordinator.reconcile_needed.is_set()
