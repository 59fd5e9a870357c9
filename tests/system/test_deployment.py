"""Worker slots and queue order, and two deployments sharing one Redis through key prefixes."""

from __future__ import annotations

from pathlib import Path

from dts.client import Client
from dts.domain import JobSpec
from tests.conftest import Cluster
from tests.harness import RedisProcess, ServerProcess, WorkerProcess, wait_until


def test_concurrency_runs_that_many_jobs_at_once(fresh_cluster: Cluster, tmp_path: Path) -> None:
    # Given a worker with 3 slots and 6 jobs that each wait for a shared barrier file
    fresh_cluster.add_worker("slots", "--concurrency", "3")
    barrier = tmp_path / "go"
    started = tmp_path / "started"
    started.mkdir()
    with fresh_cluster.client() as c:
        jobs = c.submit(
            [
                JobSpec(
                    argv=(
                        f"touch {started}/$DTS_JOB_ID; "
                        f"while [ ! -e {barrier} ]; do sleep 0.05; done",
                    ),
                    shell=True,
                )
                for _ in range(6)
            ]
        )
        # Then exactly 3 run at once, and the rest wait for a free slot
        wait_until(lambda: len(list(started.iterdir())) == 3, 20, what="3 jobs running")
        running = [j for j in c.list_jobs(limit=6) if j.status.value == "running"]
        assert len(running) == 3
        assert len(list(started.iterdir())) == 3
        barrier.touch()
        for j in jobs:
            assert c.wait(j.id, 30).status.value == "succeeded"


def test_queues_are_served_in_the_order_given(fresh_cluster: Cluster, tmp_path: Path) -> None:
    # Given jobs waiting in queues "low" and "high" before any worker exists, each noting its run
    ledger = tmp_path / "order"
    with fresh_cluster.client() as c:
        low = c.submit(
            [JobSpec(argv=(f"echo low >> {ledger}",), shell=True, queue="low") for _ in range(3)]
        )
        high = c.submit(
            [JobSpec(argv=(f"echo high >> {ledger}",), shell=True, queue="high") for _ in range(3)]
        )
        # When a single-slot worker serves "high,low"
        fresh_cluster.add_worker("ordered", "--queues", "high,low", "--concurrency", "1")
        for j in low + high:
            c.wait(j.id, 30)
    # Then every "high" job ran before any "low" job
    assert ledger.read_text().split() == ["high"] * 3 + ["low"] * 3


def test_two_deployments_share_one_redis_by_key_prefix(
    tmp_path: Path, redis_proc: RedisProcess
) -> None:
    # Given two servers with their own databases and prefixes on one Redis, a worker each
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a = ServerProcess(a_dir, redis_proc.url, prefix="alpha:")
    b = ServerProcess(b_dir, redis_proc.url, prefix="beta:")
    procs = [a, b]
    try:
        a.start()
        b.start()
        wa = WorkerProcess(a_dir, a.address, redis_proc.url, "wa")
        wb = WorkerProcess(b_dir, b.address, redis_proc.url, "wb")
        procs += [wa, wb]
        wa.start()
        wb.start()
        # When each gets jobs
        with Client(a.address) as ca, Client(b.address) as cb:
            ja = ca.submit([JobSpec(argv=("true",)) for _ in range(10)])
            jb = cb.submit([JobSpec(argv=("true",)) for _ in range(10)])
            # Then each deployment's jobs ran on its own worker only
            assert {ca.wait(j.id, 30).worker for j in ja} == {"wa"}
            assert {cb.wait(j.id, 30).worker for j in jb} == {"wb"}
        keys = {k.decode() for k in redis_proc.client().keys("*")}
        assert keys and all(k.startswith(("alpha:", "beta:")) for k in keys)
    finally:
        for p in reversed(procs):
            p.stop()


def test_jobs_a_submit_returns_are_the_jobs_the_server_stored(
    tmp_path: Path, redis_url: str
) -> None:
    # Given a server with defaults of its own (the client learns them from the lean answer)
    s = ServerProcess(
        tmp_path, redis_url, "--default-retries", "2", "--default-backoff", "3",
        "--default-timeout", "40", prefix="lean:",
    )  # fmt: skip
    s.start()
    try:
        from dts.limits import Limits

        specs = [
            JobSpec(argv=("true",), delay=3600),
            JobSpec(argv=("echo", "x"), env=(("Z", "1"), ("A", "2"), ("Z", "3")), queue=""),
            JobSpec(argv=("x",), shell=True, max_retries=0, backoff=0.5, timeout=0.0, delay=99),
            JobSpec(argv=("sleep", "1"), limits=Limits(cpu=5, output=10), name="n", cwd="/"),
        ]
        # When they are submitted, many at once
        with Client(s.address) as c:
            jobs = c.submit(specs * 3)
            # Then each returned job is exactly what the server reads back, defaults and all
            assert [c.get(job.id) for job in jobs] == jobs
            assert [j.id for j in jobs] == sorted(j.id for j in jobs)
            assert jobs[0].spec.max_retries == 2 and jobs[0].spec.timeout == 40
            assert jobs[1].spec.env == (("A", "2"), ("Z", "3")) and jobs[1].spec.queue == "default"
    finally:
        s.stop()
