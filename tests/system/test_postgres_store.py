"""dts-server keeping its history in PostgreSQL, as a user runs it: `--db postgresql://...`,
jobs run by a real worker, the history kept across a restart, the password never shown."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dts.client import Client
from dts.domain import JobSpec, JobStatus
from tests.harness import (
    BIN,
    RedisProcess,
    ServerProcess,
    WorkerProcess,
    clean_env,
    free_port,
    run_cli,
    wait_until,
)
from tests.postgres import Cluster

pytestmark = pytest.mark.single_store  # names its store itself: runs once

PASSWORD = "pg-s3cret-word"  # trust auth ignores it; it must show nowhere


def with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


def test_a_server_on_postgresql_runs_jobs_and_keeps_their_history(
    tmp_path: Path, postgres_url: str
) -> None:
    redis = RedisProcess(tmp_path)
    redis.start()
    url = with_password(postgres_url) + "?application_name=dts-test&connect_timeout=5"
    server = ServerProcess(tmp_path, redis.url, db=url)
    worker = WorkerProcess(tmp_path, server.address, redis.url, "pgw", "--concurrency", "2")
    try:
        server.start()
        worker.start()
        with Client(server.address) as c:
            # Given jobs that succeed, fail for good, and fail once then succeed
            flag = tmp_path / "flag"
            jobs = c.submit(
                [JobSpec(argv=("sh", "-c", f"echo out-{i}")) for i in range(20)]
                + [JobSpec(argv=("sh", "-c", "echo bad >&2; exit 3"))]
                + [
                    JobSpec(
                        argv=("sh", "-c", f"test -e {flag} || {{ touch {flag}; exit 1; }}"),
                        max_retries=1,
                        backoff=0.1,
                    )
                ]
            )
            wait_until(lambda: all(c.get(j.id).status.final for j in jobs), 60, what="jobs to end")
            before = {j.id: c.get(j.id) for j in jobs}
        statuses = [before[j.id].status for j in jobs]
        assert statuses == [JobStatus.SUCCEEDED] * 20 + [JobStatus.FAILED, JobStatus.SUCCEEDED]
        # When the server restarts on the same database
        server.stop()
        server.start()
        with Client(server.address) as c:
            # Then the history is all there: jobs, attempts and their output
            assert {j.id: c.get(j.id) for j in jobs} == before
            assert c.logs(jobs[0].id).stdout == b"out-0\n"
            assert c.logs(jobs[20].id).stderr == b"bad\n"
            assert [a.outcome.value for a in c.history(jobs[21].id)] == ["failed", "succeeded"]
            # And new jobs get new ids
            [more] = c.submit([JobSpec(argv=("true",))])
            assert more.id > max(before)
    finally:
        worker.stop()
        server.stop()
        redis.kill()
    log = server.log_path.read_text()
    assert "postgres:***@" in log
    assert PASSWORD not in log


def dts_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dts-server"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )


def test_a_bad_db_url_is_one_line_and_exit_2() -> None:
    for db, says in [
        ("mysql://u@h/db", "--db: unknown store mysql://"),
        ("postgresql://u:pw@h:notaport/db", "--db postgresql://u:***@h:notaport/db"),
        ("sqlite://relative.db", "sqlite:///ABSOLUTE/PATH"),
    ]:
        r = dts_server("--db", db)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
        assert "pw@" not in r.stderr


def test_an_unreachable_database_fails_the_start_without_showing_the_password() -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/dts?connect_timeout=2"
    listen = f"127.0.0.1:{free_port()}"
    r = dts_server("--db", url, "--listen", listen, "--redis-url", "redis://127.0.0.1:1")
    assert r.returncode == 1
    assert "cannot start: database unavailable (connecting): connection failed" in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert PASSWORD not in r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def own_postgres() -> Iterator[Cluster]:
    """A PostgreSQL cluster of this test's own, which it may stop and start."""
    cluster = Cluster()
    try:
        cluster.start()
    except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
        cluster.stop()
        pytest.skip(f"cannot start a PostgreSQL cluster: {getattr(e, 'stderr', '') or e}")
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_the_server_rides_out_a_database_restart(
    tmp_path: Path, own_postgres: Cluster, mode: str
) -> None:
    redis = RedisProcess(tmp_path)
    redis.start()
    url = f"postgresql://postgres@127.0.0.1:{own_postgres.port}/postgres"
    server = ServerProcess(tmp_path, redis.url, db=url)
    worker = WorkerProcess(tmp_path, server.address, redis.url, "pgw")
    try:
        server.start()
        worker.start()
        done = server_submit(server, "--wait")
        assert done.returncode == 0, done.stderr
        # When the database goes away
        own_postgres.halt(mode)
        # Then a submit is refused in one line, as unavailable (exit 3), with nothing stored
        refused = server_submit(server)
        assert refused.returncode == 3, refused.stderr
        assert "database unavailable" in refused.stderr
        # (the server was reached: the message says the server answered, not that it is away)
        assert f"dts-server at {server.address}: database unavailable" in refused.stderr
        assert "cannot reach" not in refused.stderr
        assert refused.stderr.count("\n") == 1
        # And when it is back, the server serves again by itself, within seconds
        own_postgres.resume()
        wait_until(
            lambda: server_submit(server, "--wait").returncode == 0,
            20,
            what="a submit to succeed after the database came back",
        )
        assert server.alive() and worker.alive()
        with Client(server.address) as c:
            # (the refused submit stored nothing: two jobs, both run)
            assert [j.status for j in c.list_jobs(limit=10)] == [JobStatus.SUCCEEDED] * 2
    finally:
        worker.stop()
        server.stop()
        redis.kill()
    assert "Traceback" not in server.log_path.read_text()


def server_submit(server: ServerProcess, *opts: str) -> subprocess.CompletedProcess[str]:
    return run_cli(server.address, "submit", *opts, "--", "true")
