"""A worker whose slot or heartbeat thread dies of a bug exits non-zero (70, EX_SOFTWARE) for
its service manager to restart it, instead of heartbeating on without doing its work. The bug
is planted by tests/system/faulty_worker.py, which patches a real dts-worker before it starts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dts.domain import JobSpec
from dts.worker.ending import EXIT_SOFTWARE
from tests.conftest import Cluster, make_cluster
from tests.harness import WorkerProcess, clean_env, wait_until

ROOT = Path(__file__).resolve().parents[2]


def faulty_worker(cluster: Cluster, mode: str, name: str, *extra: str) -> WorkerProcess:
    env = clean_env(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    w = WorkerProcess(cluster.dir, cluster.server.address, cluster.redis.url, name, *extra, env=env)
    w.argv[:1] = [sys.executable, "-m", "tests.system.faulty_worker", mode]
    w.start()
    cluster.workers.append(w)
    return w


def test_a_slot_dying_of_a_bug_drains_the_others_and_exits_70(fresh_cluster: Cluster) -> None:
    # Given a worker of two slots, one of them running a job that takes a while
    w = faulty_worker(fresh_cluster, "slot", "buggy", "--concurrency", "2", "--drain-timeout", "60")
    with fresh_cluster.client() as c:
        (slow,) = c.submit([JobSpec(argv=("sh", "-c", "sleep 2; echo slow"))])
        wait_until(lambda: c.get(slow.id).status.value == "running", 20, what="slow job to run")
        # When the other slot dies of a bug right after running a job, before reporting it
        (crash,) = c.submit([JobSpec(argv=("echo", "CRASH"))])
        # Then the worker exits with EX_SOFTWARE once the running job has finished
        assert w.wait(60) == EXIT_SOFTWARE, w.output()
        # And no result is lost: the drained job and the dead slot's job both succeeded, once
        for job_id, out in ((slow.id, b"slow\n"), (crash.id, b"CRASH\n")):
            job = c.get(job_id)
            assert (job.status.value, job.attempts) == ("succeeded", 1), job
            assert c.logs(job_id).stdout == out
        assert {x.name: x.state.value for x in c.workers()}["buggy"] == "stopped"
    log = w.output()
    assert "slot thread dts-slot-" in log and "died of an unexpected error" in log, log
    assert "Traceback" in log and "PlantedBug: planted bug after job" in log, log


def test_a_heartbeat_dying_of_a_bug_releases_the_jobs_and_exits_70(tmp_path: Path) -> None:
    # A lease long enough that the job is released by the worker, not reaped by the server
    cluster = make_cluster(tmp_path, 0, "--worker-timeout", "15")
    try:
        # Given a worker whose heartbeat dies of a bug as soon as it holds a job
        w = faulty_worker(cluster, "heartbeat", "hb-buggy", "--kill-grace", "1")
        with cluster.client() as c:
            # When it takes a long job
            (job,) = c.submit([JobSpec(argv=("sleep", "300"), max_retries=0)])
            # Then it stops the job at once (nothing renews its lease any more) and exits 70
            assert w.wait(60) == EXIT_SOFTWARE, w.output()
            # And the job went back to the queue as released, not lost nor failed
            now = c.get(job.id)
            assert now.status.value == "queued", now
            (first,) = c.history(job.id)
            assert first.outcome.value == "released" and "heartbeat failed" in first.error
            c.cancel(job.id)
        log = w.output()
        assert "heartbeat thread dts-heartbeat died of an unexpected error" in log, log
        assert "PlantedBug: planted bug in the heartbeat" in log, log
    finally:
        cluster.stop()
