"""Retention end to end: `dts-server --retain` deletes old final jobs on its own, and
`dts-client purge` deletes them now (the admin role when tokens are required), through the
real programs, on each store."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from dts.channel import ChannelSecurity
from dts.client import Client
from dts.domain import Job, JobSpec, JobStatus
from dts.errors import DtsError
from dts.server.store.url import parse_store_url
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from tests.conftest import Cluster
from tests.harness import BIN, RedisProcess, ServerProcess, clean_env, run_cli, wait_until

DAY = 86400.0
JOB_COLUMNS = (
    "id", "name", "queue", "priority", "argv", "shell", "env", "cwd", "timeout", "max_retries",
    "backoff", "delay", "status", "attempts", "worker", "exit_code", "created_at", "started_at",
    "finished_at",
)  # fmt: skip
ATTEMPT_COLUMNS = (
    "job_id", "attempt", "worker", "started_at", "finished_at", "exit_code", "outcome",
    "stdout", "stderr",
)  # fmt: skip


def open_db(db: Path | str) -> Any:
    url = parse_store_url(str(db))
    if url.kind == "postgres":
        from dts.server.store.postgres import PostgresStore

        return PostgresStore(url.target)
    from dts.server.store.sqlite import SqliteStore

    return SqliteStore(url.target)


def seed_old_jobs(db: Path | str, count: int, age: float, queue: str = "old") -> None:
    """`count` jobs that succeeded `age` seconds ago, each with an attempt and its output,
    written into the (stopped) server's store: jobs made old by their clock times."""
    store = open_db(db)
    try:
        done = time.time() - age
        for first in range(1, count + 1, 5000):
            ids = range(first, min(first + 5000, count + 1))
            store.put_rows(
                "jobs",
                JOB_COLUMNS,
                [
                    (i, f"old-{i}", queue, 0, '["true"]', 0, "[]", "", 0.0, 0, 1.0, 0.0,
                     "succeeded", 1, "w", 0, done - 2, done - 1, done)
                    for i in ids
                ],
            )  # fmt: skip
            store.put_rows(
                "attempts",
                ATTEMPT_COLUMNS,
                [(i, 1, "w", done - 1, done, 0, "succeeded", b"old output\n", b"") for i in ids],
            )
        store.ids_copied()
    finally:
        store.close()


def count(client: Client, queue: str) -> int:
    return sum(s.count for s in client.stats() if s.queue == queue)


def run_to_the_end(cluster: Cluster, *argv: str, queue: str = "default") -> int:
    """Submit a job, wait for its end (its exit code is the CLI's), and return its id."""
    r = cluster.cli("--json", "submit", "--queue", queue, "--wait", "--", *argv)
    answer = json.loads(r.stdout)
    assert answer["status"] in ("succeeded", "failed"), r
    return int(answer["id"])


def test_retain_deletes_old_final_jobs_and_keeps_the_rest(fresh_cluster: Cluster) -> None:
    # Given a server that keeps final jobs 3 s (and looks every 0.2 s), and a worker
    c = fresh_cluster
    c.restart_server("--worker-timeout", "2", "--retain", "3s", "--retain-interval", "0.2")
    c.add_worker("w1", "--queues", "default")
    # And a job that succeeded, one that failed, one cancelled, and one that stays queued
    ok = run_to_the_end(c, "echo", "done")
    failed = run_to_the_end(c, "sh", "-c", "echo oops >&2; exit 3")
    with c.client() as client:
        (cancelled,) = client.submit([JobSpec(argv=("true",), queue="nobody")])
        client.cancel(cancelled.id)
        (waiting,) = client.submit([JobSpec(argv=("true",), queue="nobody")])
        assert client.get(ok).status is JobStatus.SUCCEEDED
        assert client.get(failed).status is JobStatus.FAILED
        # When their retention has passed, then the three final ones are gone
        wait_until(lambda: _gone(client, ok, failed, cancelled.id), 20, what="retention")
        # And the queued one is kept, however old
        assert client.get(waiting.id).status is JobStatus.QUEUED
        # And a job that has just ended is kept
        young = run_to_the_end(c, "echo", "young")
        assert client.get(young).status is JobStatus.SUCCEEDED
    # A deleted job reads as not found: status, logs and history, exit 1, one line
    for command in ("status", "logs", "history"):
        r = c.cli(command, str(ok))
        assert r.returncode == 1, r
        assert r.stderr == f"dts-client: error: no job with id {ok}\n", r.stderr
    # The server said what it deleted in a line per run, not a line per job
    lines = [ln for ln in c.server.output().splitlines() if "retention: deleted" in ln]
    assert lines and all("final jobs that finished more than 3s ago" in ln for ln in lines)
    assert sum(int(ln.split("retention: deleted ")[1].split()[0]) for ln in lines) >= 3
    assert c.server.alive() and all(w.alive() for w in c.workers)


def _gone(client: Client, *ids: int) -> bool:
    for job_id in ids:
        try:
            client.get(job_id)
        except DtsError as e:
            if "no job with id" not in str(e):
                raise
            continue
        return False
    return True


def test_retention_never_stalls_submits(fresh_cluster: Cluster) -> None:
    # Given a store with 20,000 jobs that succeeded two days ago
    c = fresh_cluster
    c.server.stop()
    seed_old_jobs(c.server.db, 20_000, 2 * DAY)
    c.restart_server("--worker-timeout", "2", "--retain", "1d")
    # When 1,000 jobs are submitted while the retention deletes the old ones
    latencies: list[float] = []
    errors: list[DtsError] = []
    remaining_at_start: list[int] = []
    with c.client() as client:
        remaining_at_start.append(count(client, "old"))

        def submit(n: int) -> None:
            with c.client() as own:
                for i in range(n):
                    started = time.monotonic()
                    try:
                        own.submit([JobSpec(argv=("echo", str(i)), queue="fresh")])
                    except DtsError as e:  # the test fails on any, below
                        errors.append(e)
                    latencies.append(time.monotonic() - started)

        threads = [threading.Thread(target=submit, args=(250,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # Then every submit succeeded, promptly, and all 1,000 are stored
        assert errors == [] and len(latencies) == 1000
        assert max(latencies) < 2.0, max(latencies)
        assert count(client, "fresh") == 1000
        # And the retention was deleting while they came in, and deleted every old job
        assert remaining_at_start[0] > 0
        wait_until(lambda: count(client, "old") == 0, 60, what="the old jobs to go")
        assert count(client, "fresh") == 1000
        old = client.list_jobs(queue="old", limit=10)
        assert old == []
    lines = [ln for ln in c.server.output().splitlines() if "retention: deleted" in ln]
    assert len(lines) == 1 and "retention: deleted 20000 final jobs" in lines[0], lines


def test_purge_deletes_what_its_filters_say(fresh_cluster: Cluster) -> None:
    # Given final jobs of two queues and statuses, and a queued one, all over a second old
    c = fresh_cluster
    c.add_worker("w1", "--queues", "a,b")
    a_ok = run_to_the_end(c, "echo", "a", queue="a")
    a_failed = run_to_the_end(c, "false", queue="a")
    b_ok = run_to_the_end(c, "echo", "b", queue="b")
    b_failed = run_to_the_end(c, "false", queue="b")
    with c.client() as client:
        (queued,) = client.submit([JobSpec(argv=("true",), queue="nobody")])
        ended = max(_finished(client.get(i)) for i in (a_ok, a_failed, b_ok, b_failed))
    wait_until(lambda: time.time() > ended + 1.5, 10, what="the jobs to be over a second old")
    # When nothing is old enough, nothing goes
    r = c.cli("purge", "--older-than", "1h")
    assert (r.returncode, r.stdout) == (0, "purged 0 jobs\n"), r
    # When the failed jobs of queue a are purged, then only that one goes
    r = c.cli("purge", "--older-than", "1s", "--status", "failed", "--queue", "a")
    assert (r.returncode, r.stdout, r.stderr) == (0, "purged 1 jobs\n", ""), r
    assert c.cli("status", str(a_failed)).returncode == 1
    for kept in (a_ok, b_ok, b_failed):
        assert c.cli("status", str(kept)).returncode == 0
    # When every final job over a second old is purged (JSON), the other three go
    r = c.cli("--json", "purge", "--older-than", "1s")
    assert r.returncode == 0 and json.loads(r.stdout) == {"purged": 3}, r
    for gone in (a_ok, b_ok, b_failed):
        r = c.cli("logs", str(gone))
        assert r.returncode == 1 and f"no job with id {gone}" in r.stderr, r
    # And the queued job stays, whatever --status says
    assert c.cli("status", str(queued.id)).returncode == 0


def _finished(job: Job) -> float:
    assert job.finished_at is not None
    return job.finished_at


def test_purge_refuses_bad_input_and_deletes_nothing(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    with c.client() as client:
        (job,) = client.submit([JobSpec(argv=("true",), queue="nobody")])
        client.cancel(job.id)
    cases = {
        ("--older-than", "5x"): "not a duration",
        ("--older-than", "0"): "more than 0",
        ("--older-than", "1s", "--status", "running"): "only final jobs are purged",
        ("--older-than", "1s", "--status", "done"): "--status must be one of",
        (): "--older-than",
    }
    for args, message in cases.items():
        r = c.cli("purge", *args)
        assert r.returncode == 2, r
        assert message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    with c.client() as client:
        assert client.get(job.id).status is JobStatus.CANCELLED  # nothing deleted
    # The server refuses a bad --retain with one line and exit 2
    r = _server_with(c, "--retain", "forever")
    assert r[0] == 2 and "--retain: not a duration" in r[1], r


def test_the_purge_call_refuses_bad_requests(fresh_cluster: Cluster) -> None:
    # Given a cancelled job, and the Admin service called as a program would
    c = fresh_cluster
    with c.client() as client:
        (job,) = client.submit([JobSpec(argv=("true",), queue="nobody")])
        client.cancel(job.id)
    bad = [
        pb.PurgeRequest(older_than=0),
        pb.PurgeRequest(older_than=-5),
        pb.PurgeRequest(older_than=math.nan),
        pb.PurgeRequest(older_than=math.inf),
        pb.PurgeRequest(older_than=1e-3, statuses=[pb.JOB_STATUS_RUNNING]),
        pb.PurgeRequest(older_than=1e-3, statuses=[pb.JOB_STATUS_CANCELLED, 99]),
        pb.PurgeRequest(older_than=1e-3, statuses=[pb.JOB_STATUS_UNSPECIFIED]),
    ]
    wait_until(lambda: time.time() > (job.created_at or 0) + 0.1, 5)
    with grpc.insecure_channel(c.server.address) as channel:
        stub = pb_grpc.AdminStub(channel)
        for request in bad:
            try:
                stub.Purge(request, timeout=10)
            except grpc.RpcError as e:
                assert e.code() is grpc.StatusCode.INVALID_ARGUMENT, (request, e)
            else:
                raise AssertionError(f"accepted {request}")
        # Then nothing was deleted, and a good request deletes the job
        with c.client() as client:
            assert client.get(job.id).status is JobStatus.CANCELLED
        assert stub.Purge(pb.PurgeRequest(older_than=1e-3), timeout=10).purged == 1
    assert "Traceback" not in c.server.output()


def _server_with(c: Cluster, *args: str) -> tuple[int, str]:
    import subprocess

    p = subprocess.run(
        [str(BIN / "dts-server"), "--redis-url", c.redis.url, "--db", str(c.dir / "x.db"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    return p.returncode, p.stderr


ADMIN = "admin-token-" + "a" * 20
CLIENT = "client-token-" + "c" * 20


def test_purge_needs_the_admin_role(tmp_path: Path) -> None:
    # Given a server that requires tokens, with a final job in it
    redis = RedisProcess(tmp_path)
    redis.start()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"client {CLIENT}\nadmin {ADMIN}\n")
    tokens.chmod(0o600)
    admin = ChannelSecurity(token=ADMIN, plaintext_token=True)
    s = ServerProcess(
        tmp_path, redis.url, "--tokens-file", str(tokens), "--plaintext-tokens", probe=admin
    )
    s.start()
    try:
        with Client(s.address, security=admin) as client:
            (job,) = client.submit([JobSpec(argv=("true",), queue="nobody")])
            client.cancel(job.id)
        files = {}
        for name, token in (("client", CLIENT), ("admin", ADMIN)):
            files[name] = tmp_path / f"{name}.token"
            files[name].write_text(token + "\n")
            files[name].chmod(0o600)

        def purge(name: str) -> Any:
            return run_cli(
                s.address, "--token-file", str(files[name]), "--plaintext-token",
                "purge", "--older-than", "0.001s",
            )  # fmt: skip

        wait_until(lambda: time.time() > (job.created_at or 0) + 0.5, 5)
        # When a client token asks for a purge: refused, one line, exit 1, nothing deleted
        r = purge("client")
        assert r.returncode == 1, r
        assert r.stderr == (
            f"dts-client: error: dts-server at {s.address} does not allow it: "
            "a client token may not call Purge\n"
        ), r.stderr
        with Client(s.address, security=admin) as client:
            assert client.get(job.id).status is JobStatus.CANCELLED
        # When an admin token asks: the job is purged
        r = purge("admin")
        assert (r.returncode, r.stdout) == (0, "purged 1 jobs\n"), r
    finally:
        s.stop()
        redis.kill()


@pytest.mark.single_store  # PostgreSQL only: several servers share no SQLite file
def test_with_several_servers_only_the_lead_runs_retention(
    tmp_path: Path, postgres_url: str
) -> None:
    # Given two servers on one PostgreSQL database, both told to keep final jobs 2 s
    redis = RedisProcess(tmp_path)
    redis.start()
    args = ("--worker-timeout", "2", "--retain", "2s", "--retain-interval", "0.2")
    servers = [ServerProcess(tmp_path, redis.url, *args, db=postgres_url) for _ in range(2)]
    try:
        for s in servers:
            s.start()
        leads = "this server now leads"
        wait_until(lambda: any(leads in s.output() for s in servers), 10, what="a lead")
        # When jobs end through each server
        ids = []
        for s in servers:
            with Client(s.address) as client:
                for _ in range(3):
                    (job,) = client.submit([JobSpec(argv=("true",), queue="nobody")])
                    client.cancel(job.id)
                    ids.append(job.id)
        # Then they are deleted once their retention has passed
        with Client(servers[1].address) as client:
            wait_until(lambda: _gone(client, *ids), 20, what="retention")
        # And only the server holding the lead deleted them
        deleting = [s for s in servers if "retention: deleted" in s.output()]
        (lead,) = [s for s in servers if leads in s.output()]
        assert deleting == [lead]
    finally:
        for s in servers:
            s.stop(timeout=15)
        redis.kill()
    for s in servers:
        assert "Traceback" not in s.output()
