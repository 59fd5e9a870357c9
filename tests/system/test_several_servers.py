"""Several dts-servers on one PostgreSQL database and one Redis, all serving at once: one runs
the duties that must run once, another takes them over when it dies, and a wait, a cancel or
a report through one server sees what happened through another."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dts.client import Client
from dts.domain import JobSpec, JobStatus
from tests.harness import RedisProcess, ServerProcess, WorkerProcess, run_cli, wait_until

pytestmark = pytest.mark.single_store  # PostgreSQL only: SQLite is one server's own

LEADS = "this server now leads"


@dataclass
class Servers:
    dir: Path
    redis: RedisProcess
    servers: list[ServerProcess]
    workers: list[WorkerProcess]

    def leaders(self) -> list[ServerProcess]:
        return [s for s in self.servers if s.alive() and LEADS in s.output()]

    def add_worker(self, name: str, server: ServerProcess, *extra: str) -> WorkerProcess:
        w = WorkerProcess(self.dir, server.address, self.redis.url, name, *extra)
        w.start()
        self.workers.append(w)
        return w


@pytest.fixture
def three(tmp_path: Path, postgres_url: str) -> Iterator[Servers]:
    redis = RedisProcess(tmp_path)
    redis.start()
    servers = [
        ServerProcess(tmp_path, redis.url, "--worker-timeout", "2", db=postgres_url)
        for _ in range(3)
    ]
    group = Servers(tmp_path, redis, servers, [])
    try:
        for s in servers:
            s.start()
        yield group
    finally:
        for w in group.workers:
            w.stop(timeout=15)
        for s in servers:
            s.stop(timeout=15)
        redis.kill()
    for s in servers:
        assert "Traceback" not in s.output(), s.output()


def test_one_server_leads_and_another_takes_over_when_it_dies(three: Servers) -> None:
    # Given three servers, exactly one of which runs the once-only duties
    wait_until(lambda: three.leaders(), 10, what="a server to take the lead")
    always_one_leader(three, 2.5)  # the others try each second: none may take it too
    (leader,) = three.leaders()
    followers = [s for s in three.servers if s is not leader]
    # and a worker of a follower running a job whose worker will die
    w1 = three.add_worker("w1", followers[0])
    with Client(followers[1].address) as c:
        flag = three.dir / "started"
        job = c.submit([JobSpec(argv=("sh", "-c", f"touch {flag}; sleep 60"), max_retries=0)])[0]
        wait_until(flag.exists, 15, what="the job to start")
        # When the leader is killed, and so is the job's worker
        leader.kill()
        w1.kill()
        # Then another server takes the lead within seconds
        took = wait_until(lambda: three.leaders(), 10, what="another server to take the lead")
        assert len(took) == 1 and took[0] is not leader
        # and its reaper recovers the lost worker's job, which a new worker runs again
        three.add_worker("w2", followers[1])
        flag.unlink()
        wait_until(flag.exists, 20, what="the job to run again")
        again = c.get(job.id)
        assert again.status is JobStatus.RUNNING and again.attempts == 2, again


def test_a_wait_on_one_server_ends_with_a_job_reported_through_another(three: Servers) -> None:
    a, b, _ = three.servers
    three.add_worker("wa", a, "--concurrency", "2")
    with Client(b.address) as c:
        # Given jobs submitted and waited for through B, run by a worker that reports to A
        jobs = c.submit([JobSpec(argv=("sh", "-c", f"sleep 0.3; echo {i}")) for i in range(4)])
        # Then each wait through B ends with the job's end, soon after it
        for job in jobs:
            done = c.wait(job.id, timeout=20)
            assert done.status is JobStatus.SUCCEEDED, done
            assert done.finished_at is not None and time.time() - done.finished_at < 5


def test_a_cancel_through_one_server_stops_the_job_on_a_worker_of_another(
    three: Servers,
) -> None:
    a, b, _ = three.servers
    three.add_worker("wa", a)
    flag = three.dir / "running"
    with Client(b.address) as c:
        job = c.submit([JobSpec(argv=("sh", "-c", f"touch {flag}; sleep 60"))])[0]
        wait_until(flag.exists, 15, what="the job to start")
        # When it is cancelled through B
        c.cancel(job.id)
    # Then the worker, which heartbeats to A, stops it: the slot is free for the next job
    with Client(a.address) as c:
        after = c.submit([JobSpec(argv=("true",))])[0]
        assert c.wait(after.id, timeout=20).status is JobStatus.SUCCEEDED
        history = c.history(job.id)
        assert [h.outcome.value for h in history] == ["cancelled"], history


def always_one_leader(three: Servers, seconds: float) -> None:
    """Exactly one server says it leads, all along `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        said = [len(re.findall(LEADS, s.output())) for s in three.servers]
        assert sorted(said) == [0, 0, 1], said
        time.sleep(0.1)


def every(three: Servers) -> str:
    return ",".join(s.address for s in three.servers)


def test_a_client_naming_every_server_carries_on_when_one_dies(three: Servers) -> None:
    with Client(every(three)) as c:
        # Given a client that talks to the first server
        first = c.submit([JobSpec(argv=("true",))])[0]
        assert c.channel.address == three.servers[0].address  # type: ignore[attr-defined]
        # When that server is killed
        three.servers[0].kill()
        t0 = time.monotonic()
        # Then the next submit goes through another, and reads see every job
        second = c.submit([JobSpec(argv=("true",))])[0]
        took = time.monotonic() - t0
        print(f"\nfrom the kill to the next submit: {took:.2f}s")
        assert took < 5, took
        assert [j.id for j in c.list_jobs(limit=10)] == [second.id, first.id]
    # And so does the CLI given every server
    r = run_cli(every(three), "submit", "--", "true")
    assert r.returncode == 0, r.stderr
    listed = run_cli(every(three), "--json", "list")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 3


def test_a_worker_naming_every_server_carries_on_when_its_server_dies(three: Servers) -> None:
    w = WorkerProcess(three.dir, every(three), three.redis.url, "wall")
    w.start()
    three.workers.append(w)
    with Client(three.servers[2].address) as c:
        assert c.wait(c.submit([JobSpec(argv=("true",))])[0].id, 20).status is JobStatus.SUCCEEDED
        # When the server the worker talks to (the first) is killed
        three.servers[0].kill()
        t0 = time.monotonic()
        # Then the worker goes on with another: it claims, runs and reports the next jobs
        job = c.submit([JobSpec(argv=("true",))])[0]
        done = c.wait(job.id, 30)
        print(f"\nfrom the kill to the next job done: {time.monotonic() - t0:.2f}s")
        assert done.status is JobStatus.SUCCEEDED and done.attempts == 1, done
    assert w.alive()


def test_workers_and_stats_say_which_server_each_worker_talks_to(three: Servers) -> None:
    a, b, c = three.servers
    three.add_worker("on-a", a)
    three.add_worker("on-b", b)
    with Client(c.address) as client:
        servers = {w.name: w.server for w in client.workers()}
    assert servers == {"on-a": a.address, "on-b": b.address}
    stats = json.loads(run_cli(c.address, "--json", "stats").stdout)
    assert stats["workers_by_server"] == {a.address: 1, b.address: 1}


def test_ping_says_how_each_server_is(three: Servers) -> None:
    three.servers[1].kill()
    r = run_cli(every(three), "ping")
    lines = r.stdout.splitlines()
    assert r.returncode == 1, r
    assert lines[0] == f"{three.servers[0].address} SERVING"
    assert lines[1].startswith(f"{three.servers[1].address} UNAVAILABLE cannot reach dts-server")
    assert lines[2] == f"{three.servers[2].address} SERVING"
    one = run_cli(three.servers[0].address, "ping")
    assert (one.returncode, one.stdout) == (0, "SERVING\n")


def test_submits_made_while_their_server_is_killed_are_stored_once(three: Servers) -> None:
    """A stream of submits through a client naming every server; the server is killed in the
    middle: every submit acknowledged is stored, and none twice (a submit whose answer was
    lost goes again with its key)."""
    names = [f"m{i}" for i in range(600)]
    acknowledged: list[str] = []
    with Client(every(three), timeout=20) as c:
        pending = []
        for i, name in enumerate(names):
            pending.append((name, c.submit_async([JobSpec(argv=("true",), name=name)])))
            if i == 300:
                three.servers[0].kill()
        for name, p in pending:
            p.result(30)  # each is stored, through one server or another
            acknowledged.append(name)
        stored = [j.spec.name for j in c.list_jobs(limit=10_000)]
    assert sorted(stored) == sorted(acknowledged) == sorted(names)
