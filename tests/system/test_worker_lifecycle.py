"""A worker's jobs never outlive it, and a dead worker's job runs again elsewhere."""

from __future__ import annotations

import signal
from pathlib import Path

from dts.client import Client
from dts.domain import JobSpec
from tests.conftest import Cluster
from tests.harness import (
    RedisProcess,
    ServerProcess,
    WorkerProcess,
    free_port,
    pid_alive,
    wait_until,
)


def _start_sleeper(cluster: Cluster, tmp_path: Path, *args: str) -> tuple[int, list[int]]:
    pidfile = tmp_path / "pids"
    r = cluster.cli("submit", *args, "--shell", "--", f"sleep 300 & echo $! $$ > {pidfile}; wait")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, what="job start")
    return int(r.stdout), [int(p) for p in pidfile.read_text().split()]


def test_sigkilled_worker_takes_its_jobs_with_it(fresh_cluster: Cluster, tmp_path: Path) -> None:
    # Given a worker running a job that has a child of its own
    w = fresh_cluster.add_worker("doomed", "--kill-grace", "1")
    job_id, pids = _start_sleeper(fresh_cluster, tmp_path, "--retries", "0")
    # When the worker is killed outright
    w.signal(signal.SIGKILL)
    w.wait()
    # Then the job's whole process group dies too (the guard sees the worker go)
    for pid in pids:
        wait_until(lambda pid=pid: not pid_alive(pid), 10, what=f"job process {pid} to die")
    # And once the lease runs out the job runs again on another worker
    fresh_cluster.add_worker("heir", "--kill-grace", "1")
    with fresh_cluster.client() as c:
        job = wait_until(
            lambda: (j := c.get(job_id)).attempts == 2 and j, 20, what="second attempt"
        )
        assert job.worker == "heir"
        first = c.history(job_id)[0]
        assert first.outcome.value == "lost" and "doomed" in first.error
        c.cancel(job_id)


def test_sigterm_drains_then_kills_and_releases(fresh_cluster: Cluster, tmp_path: Path) -> None:
    # Given a worker with a short drain timeout running a long job
    w = fresh_cluster.add_worker("drainer", "--drain-timeout", "0.5", "--kill-grace", "1")
    job_id, pids = _start_sleeper(fresh_cluster, tmp_path)
    # When it gets SIGTERM, then it exits 0 and its job's processes are gone
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    for pid in pids:
        assert not pid_alive(pid)
    # And the job went back to the queue without waiting for a lease, with no failure counted
    with fresh_cluster.client() as c:
        job = c.get(job_id)
        assert job.status.value == "queued"
        assert c.history(job_id)[0].outcome.value == "released"
        state = {x.name: x.state.value for x in c.workers()}["drainer"]
        assert state == "stopped"
        c.cancel(job_id)


def test_sigterm_lets_a_short_job_finish(fresh_cluster: Cluster) -> None:
    w = fresh_cluster.add_worker("patient", "--drain-timeout", "30")
    r = fresh_cluster.cli("submit", "--shell", "--", "sleep 1; echo finished")
    job_id = int(r.stdout)
    with fresh_cluster.client() as c:
        wait_until(lambda: c.get(job_id).status.value == "running", 20)
        w.signal(signal.SIGTERM)
        assert w.wait(30) == 0
        job = c.get(job_id)
        assert job.status.value == "succeeded"
        assert c.logs(job_id).stdout == b"finished\n"


def test_worker_started_before_server_and_redis_connects_when_they_appear(
    tmp_path: Path,
) -> None:
    redis_port, server_port = free_port(), free_port()
    w = WorkerProcess(
        tmp_path, f"127.0.0.1:{server_port}", f"redis://127.0.0.1:{redis_port}/0", "early"
    )
    w.start(wait=False)
    r = RedisProcess(tmp_path, port=redis_port)
    s = ServerProcess(tmp_path, r.url, port=server_port)
    try:
        wait_until(lambda: "server 127.0.0.1" in w.output(), 10, what="worker to log")
        assert w.alive()
        r.start()
        s.start()
        w.wait_registered(30)
        with Client(s.address) as c:
            job = c.submit_one(JobSpec(argv=("echo", "late but fine")))
            assert c.wait(job.id, 30).status.value == "succeeded"
        # one line per state change, not one per retry
        assert w.output().count("unavailable") <= 2
    finally:
        w.stop()
        s.stop()
        r.kill()


def test_a_second_live_worker_with_the_same_name_stops_the_first(fresh_cluster: Cluster) -> None:
    # Given a worker, when another process registers with the same name
    first = fresh_cluster.add_worker("same-name")
    fresh_cluster.add_worker("same-name")
    # Then the first one stops with a clear error instead of fighting over the name
    assert first.wait(30) == 1
    assert "was registered again" in first.output()
    with fresh_cluster.client() as c:
        job = c.submit_one(JobSpec(argv=("true",)))
        assert c.wait(job.id, 30).status.value == "succeeded"


def test_jobs_claimed_ahead_are_handed_back_when_jobs_turn_long(fresh_cluster: Cluster) -> None:
    # Given one worker racing through short jobs, so it claims many ahead, with long jobs
    # at the end of the queue
    fresh_cluster.add_worker("busy", "--concurrency", "1")
    with fresh_cluster.client() as c:
        jobs = c.submit([JobSpec(argv=("true",))] * 300 + [JobSpec(argv=("sleep", "2"))] * 6)
        long_ids = [j.id for j in jobs[300:]]
        wait_until(lambda: c.get(long_ids[0]).status.value == "running", 60, what="long job")
        held = [i for i in long_ids if c.get(i).worker == "busy"]
        assert len(held) >= 3, "precondition: the worker claimed several long jobs ahead"
        # When a second worker comes along while the first runs its first long job
        fresh_cluster.add_worker("idle", "--concurrency", "1")
        # Then after that job the first worker hands back what it had not started, and the
        # second one runs some of it; nothing fails or runs twice
        done = wait_until(lambda: all(c.get(i).status.final for i in long_ids) and long_ids, 60)
        ran_on = {i: c.get(i).worker for i in done}
        assert "idle" in ran_on.values(), ran_on
        assert all(c.get(i).status.value == "succeeded" for i in long_ids)
        for i in long_ids:
            outcomes = [a.outcome.value for a in c.history(i)]
            assert outcomes.count("succeeded") == 1, (i, outcomes)
            assert set(outcomes) <= {"succeeded", "released"}, (i, outcomes)


def test_a_stopping_worker_claims_nothing_new(fresh_cluster: Cluster, tmp_path: Path) -> None:
    # Given a worker with a long job in one slot and the other slot idle
    w = fresh_cluster.add_worker("leaving", "--concurrency", "2", "--drain-timeout", "20")
    long_id, _ = _start_sleeper(fresh_cluster, tmp_path)
    with fresh_cluster.client() as c:
        # When it is told to stop and a job arrives while its idle slot still waits
        w.signal(signal.SIGTERM)
        job = c.submit_one(JobSpec(argv=("true",)))
        # Then it hands the job back untouched, and a worker that stays runs it: one attempt
        fresh_cluster.add_worker("staying")
        done = c.wait(job.id, 30)
        assert (done.status.value, done.attempts, done.worker) == ("succeeded", 1, "staying")
        assert [a.worker for a in c.history(job.id)] == ["staying"]
        c.cancel(long_id)
    assert w.wait(30) == 0
