"""The metrics without I/O: the option, which errors are the database's, the store gauges'
cache, and the worker's metrics read at scrape time."""

from __future__ import annotations

import sqlite3

import pytest
from prometheus_client import CollectorRegistry, Histogram

from dts.domain import JobStatus, Outcome, StatCount, WorkerInfo, WorkerState
from dts.errors import FailedPrecondition, Internal, InvalidArgument, QueueUnavailable, Unavailable
from dts.metrics import parse_metrics_listen
from dts.server.config import load_server_config
from dts.server.metrics import BUCKETS, STORE_SHARE, QueueHistogram, ServerMetrics, StoreGauges
from dts.server.observer import Observer, is_db_error
from dts.worker.config import load_worker_config
from dts.worker.link import Link
from dts.worker.metrics import WorkerMetrics


def test_metrics_listen_takes_host_port_and_port_zero() -> None:
    assert parse_metrics_listen("127.0.0.1:9470") == ("127.0.0.1", 9470)
    assert parse_metrics_listen("[::1]:0") == ("::1", 0)
    for bad in ("9470", ":9470", "host:", "host:http", "host:70000"):
        with pytest.raises(InvalidArgument, match="--metrics-listen"):
            parse_metrics_listen(bad)


def test_both_daemons_take_metrics_listen_off_by_default() -> None:
    assert load_server_config([], env={}).metrics_listen == ""
    assert load_server_config(["--metrics-listen", "127.0.0.1:0"], env={}).metrics_listen
    worker = load_worker_config(["--name", "n"], env={"DTS_METRICS_LISTEN": "0.0.0.0:9471"})
    assert worker.metrics_listen == "0.0.0.0:9471"
    with pytest.raises(InvalidArgument, match="--metrics-listen"):
        load_worker_config(["--name", "n", "--metrics-listen", "nowhere"], env={})


def cause(e: Exception, by: Exception) -> Exception:
    e.__cause__ = by
    return e


@pytest.mark.parametrize(
    ("error", "counted"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (cause(Unavailable("database unavailable"), sqlite3.OperationalError("x")), True),
        (cause(Internal("database error"), sqlite3.DatabaseError("x")), True),
        # a conflict the caller is told of is not the database failing
        (cause(FailedPrecondition("unique key taken"), sqlite3.IntegrityError("x")), False),
        (QueueUnavailable("redis away"), False),
        (InvalidArgument("bad"), False),
        (ValueError("a bug"), False),
    ],
)
def test_database_errors_are_told_by_their_origin(error: Exception, counted: bool) -> None:
    assert is_db_error(error) is counted
    m = ServerMetrics(lambda: [], lambda: [], cache=0)
    m.failed(error)
    assert m.registry.get_sample_value("dts_db_errors_total") == (1.0 if counted else 0.0)


def test_the_do_nothing_observer_is_inactive() -> None:
    o = Observer()
    assert not o.active
    o.exchanged([], {}, [], [], 0.0)  # nothing to do, nothing raised
    assert ServerMetrics.active


def worker(state: WorkerState) -> WorkerInfo:
    return WorkerInfo("w", "h", 1, "s", 1, ("default",), state, 0, 0.0, 0.0)


def test_store_gauges_are_read_once_per_cache_period_and_survive_a_store_error() -> None:
    reads: list[int] = []
    broken = False

    def stats() -> list[StatCount]:
        reads.append(1)
        if broken:
            raise Unavailable("database unavailable")
        return [StatCount("default", JobStatus.QUEUED, 4)]

    m = ServerMetrics(stats, lambda: [worker(WorkerState.BUSY)], cache=60)
    # Given two scrapes within the cache period: one read of the store
    for _ in range(2):
        assert (
            m.registry.get_sample_value("dts_jobs", {"queue": "default", "status": "queued"}) == 4
        )
    assert len(reads) == 1
    assert m.registry.get_sample_value("dts_workers", {"state": "busy"}) == 1
    assert m.registry.get_sample_value("dts_jobs", {"queue": "default", "status": "running"}) == 0
    # When the store fails at the next read, the scrape still answers with the last numbers
    m.gauges._hold = 0
    broken = True
    assert m.registry.get_sample_value("dts_jobs", {"queue": "default", "status": "queued"}) == 4
    assert m.registry.get_sample_value("dts_db_errors_total") == 1


def test_worker_gauges_are_read_at_scrape_time() -> None:
    running = [0]
    server, redis = Link("server"), Link("redis")
    m = WorkerMetrics(4, lambda: running[0], server, redis)
    sample = m.registry.get_sample_value
    assert sample("dts_worker_slots") == 4
    assert sample("dts_worker_connected", {"peer": "server"}) == 0  # not yet connected
    server.ok()
    redis.ok()
    running[0] = 3
    m.ended(Outcome.SUCCEEDED)
    m.ended(Outcome.TIMED_OUT)
    assert sample("dts_worker_jobs_running") == 3
    assert sample("dts_worker_connected", {"peer": "server"}) == 1
    assert sample("dts_worker_jobs_total", {"result": "succeeded"}) == 1
    assert sample("dts_worker_jobs_total", {"result": "timed_out"}) == 1
    assert sample("dts_worker_jobs_total", {"result": "failed"}) == 0  # there from the start
    redis.down("gone")
    assert sample("dts_worker_connected", {"peer": "redis"}) == 0


def test_a_slow_store_read_is_reused_for_longer() -> None:
    now = [1000.0]
    reads: list[float] = []

    def stats() -> list[StatCount]:
        reads.append(now[0])
        now[0] += 2.0  # a big backlog: the read takes 2 s
        return []

    gauges = StoreGauges(stats, lambda: [], 5.0, lambda: None, clock=lambda: now[0])
    list(gauges.collect())
    # Given a read that took 2 s, a scrape 10 s later (past the 5 s cache) reads nothing
    now[0] += 10
    list(gauges.collect())
    assert len(reads) == 1
    # When 2 s / STORE_SHARE have passed since, the store is read again
    now[0] += 2.0 / STORE_SHARE
    list(gauges.collect())
    assert len(reads) == 2


def test_the_batch_histogram_says_what_prometheus_clients_own_would() -> None:
    # Given the same observations in a QueueHistogram (in batches) and a Histogram (one by one)
    values = [("a", v) for v in (0.0, 0.01, 0.011, 1.0, 3.5, 99.0, 20_000.0, -2.0)]
    values += [("b", 0.3)] * 3
    ours = CollectorRegistry()
    mine = QueueHistogram("dts_h_seconds", "h")
    ours.register(mine)
    mine.observe(values[:4])
    mine.observe(values[4:])
    mine.observe([])
    theirs = CollectorRegistry()
    reference = Histogram("dts_h_seconds", "h", ["queue"], buckets=BUCKETS, registry=theirs)
    for queue, v in values:
        reference.labels(queue).observe(max(0.0, v))
    # Then both expose the same samples (buckets, count, sum)

    def samples(r: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (s.name, tuple(sorted(s.labels.items())), round(s.value, 9))
            for family in r.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    assert samples(ours) == samples(theirs)
    assert ours.get_sample_value("dts_h_seconds_count", {"queue": "a"}) == 8
