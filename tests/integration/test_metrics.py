"""The server's metrics fed by a real coordinator (each store, a real Redis), and the /metrics
endpoint read over HTTP and parsed as Prometheus parses it."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dts.domain import JobSpec, Outcome, Result
from dts.metrics import MetricsServer
from dts.schedule import Schedule
from dts.server.metrics import ServerMetrics
from dts.server.schedules import Schedules
from dts.server.store import Store
from tests.harness import RedisProcess
from tests.integration.test_coordinator import Env, coordinator_env


@pytest.fixture
def env(store: Store, redis_proc: RedisProcess) -> Iterator[tuple[Env, ServerMetrics]]:
    e = coordinator_env(store, redis_proc)
    metrics = ServerMetrics(store.live_stats, store.workers, cache=0)
    e.c.observer = metrics
    yield e, metrics


def value(m: ServerMetrics, name: str, **labels: str) -> float:
    found = m.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def result(job_id: int, outcome: Outcome, start: float, took: float) -> Result:
    code = 0 if outcome is Outcome.SUCCEEDED else 3
    return Result(job_id, 1, outcome, code, started_at=start, finished_at=start + took)


def test_a_jobs_life_is_counted_once_at_each_step(env: tuple[Env, ServerMetrics]) -> None:
    e, m = env
    # Given three jobs submitted to default and one to q2, claimed by a worker 2 s later
    jobs = e.c.submit([JobSpec(("true",)) for _ in range(3)])
    e.c.submit([JobSpec(("true",), queue="q2")])
    assert value(m, "dts_jobs_submitted_total", queue="default") == 3
    assert value(m, "dts_jobs_submitted_total", queue="q2") == 1
    session = e.worker()
    e.clock.now += 2
    assert sorted(e.take("w1", session)) == [j.id for j in jobs]
    # Then each first attempt waited 2 s in the queue
    assert value(m, "dts_job_queue_wait_seconds_count", queue="default") == 3
    assert value(m, "dts_job_queue_wait_seconds_sum", queue="default") == pytest.approx(6)
    # When two succeed (one in 1.5 s) and one fails (0.5 s)
    t = e.clock.now
    e.report(
        "w1",
        [
            result(jobs[0].id, Outcome.SUCCEEDED, t, 1.5),
            result(jobs[1].id, Outcome.SUCCEEDED, t, 0.0),
            result(jobs[2].id, Outcome.FAILED, t, 0.5),
        ],
    )
    # Then the ends are counted by status, and the run times by queue
    assert value(m, "dts_jobs_finished_total", queue="default", status="succeeded") == 2
    assert value(m, "dts_jobs_finished_total", queue="default", status="failed") == 1
    assert value(m, "dts_job_run_seconds_count", queue="default") == 3
    assert value(m, "dts_job_run_seconds_sum", queue="default") == pytest.approx(2.0)
    # And the gauges are the store's: q2's job still queued, default's backlog gone (0)
    assert value(m, "dts_jobs", queue="q2", status="queued") == 1
    assert m.registry.get_sample_value("dts_jobs", {"queue": "default", "status": "queued"}) == 0
    assert value(m, "dts_workers", state="idle") == 1
    assert value(m, "dts_queue_workers", queue="default") == 1
    assert m.registry.get_sample_value("dts_queue_workers", {"queue": "q2"}) == 0


def test_lost_attempts_and_a_cancel_are_counted(env: tuple[Env, ServerMetrics]) -> None:
    e, m = env
    # Given a running job whose worker goes silent, and a queued one
    running, waiting = e.c.submit([JobSpec(("true",)), JobSpec(("true",))])
    e.take("w1", e.worker(), count=1)
    # When its lease runs out and the other is cancelled
    e.clock.now += 11
    e.c.reap_leases()
    e.c.cancel(waiting.id)
    # Then one attempt is counted lost (the job queued again) and one job cancelled
    assert value(m, "dts_attempts_lost_total") == 1
    assert value(m, "dts_jobs_finished_total", queue="default", status="cancelled") == 1
    assert value(m, "dts_jobs", queue="default", status="queued") == 1
    assert value(m, "dts_workers", state="lost") == 1
    assert running.id != waiting.id


def test_redis_errors_are_counted(env: tuple[Env, ServerMetrics]) -> None:
    e, m = env
    # Given Redis gone, when a job is submitted (stored, but not queued in Redis)
    e.redis.kill()
    e.c.submit([JobSpec(("true",))])
    # Then the failed enqueue is counted
    assert value(m, "dts_redis_errors_total") >= 1
    assert value(m, "dts_jobs_submitted_total", queue="default") == 1


def test_metrics_endpoint_serves_its_own_registry_on_a_free_port() -> None:
    # Given a registry with one of the server's metrics in it, served on port 0
    metrics = ServerMetrics(lambda: [], lambda: [], cache=0)
    metrics.ended([("default", "succeeded")] * 2)
    server = MetricsServer("127.0.0.1:0", metrics.registry)
    server.start()
    try:
        # When it is scraped
        assert not server.address.endswith(":0")
        with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.stop()
    # Then the text parses, holds the server's metrics and nothing of the global registry
    families = {f.name: f for f in text_string_to_metric_families(text)}
    finished = families["dts_jobs_finished"]
    assert finished.type == "counter"
    assert [
        (s.labels, s.value) for s in finished.samples if s.name == "dts_jobs_finished_total"
    ] == [({"queue": "default", "status": "succeeded"}, 2.0)]
    assert families["dts_job_queue_wait_seconds"].type == "histogram"
    assert families["dts_jobs"].type == "gauge"
    assert {s.labels["state"] for s in families["dts_workers"].samples} >= {"idle", "lost"}
    assert not any(name.startswith(("python_", "process_")) for name in families)
    assert isinstance(metrics.registry, CollectorRegistry)


def test_jobs_a_schedule_makes_are_counted_as_submitted(env: tuple[Env, ServerMetrics]) -> None:
    e, m = env
    # Given a schedule every 10 s, when three due times pass and it is also run by hand
    rules = Schedules(e.c)
    rules.add(Schedule("s", JobSpec(("true",), queue="cron"), every=10))
    awake = e.clock.now
    for _ in range(3):
        e.clock.now += 10
        rules.tick(awake)
    rules.run("s")
    # Then its four jobs are counted in their queue
    assert value(m, "dts_jobs_submitted_total", queue="cron") == 4
