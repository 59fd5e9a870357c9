"""Live output and the feedback of waiting, as a user sees it: `logs --follow`, `logs` of a
running job, `wait`, and `submit --wait` (retry notices, why a job failed, Ctrl+C), with real
processes; and a follower on one server of a job run through another (PostgreSQL)."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from dts.client import Client
from dts.domain import JobSpec
from dts.queue.redis import Keys
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from tests.conftest import Cluster
from tests.harness import (
    BIN,
    RedisProcess,
    ServerProcess,
    WorkerProcess,
    clean_env,
    wait_until,
)

pytestmark = pytest.mark.single_store  # SQLite, and the several-servers test names PostgreSQL


class Running:
    """A dts-client run in the background, its stdout and stderr read as they come."""

    def __init__(self, server: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "dts-client"), "--server", server, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )
        self.out = bytearray()
        self.err = bytearray()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(pipe: object, into: bytearray) -> None:
        while chunk := pipe.read1(65536):  # type: ignore[attr-defined]
            into.extend(chunk)

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.finish()


def job(c: Cluster, script: str, **kw: object) -> int:
    with c.client() as client:
        spec = JobSpec(argv=(script,), shell=True, max_retries=0, **kw)  # type: ignore[arg-type]
        return client.submit([spec])[0].id


def test_follow_prints_output_as_written_then_exits_with_the_job(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given a job that prints a line on each stream, then waits for a flag before it ends
    flag = tmp_path / "go"
    script = f"echo first; echo oops >&2; while [ ! -e {flag} ]; do sleep 0.05; done; echo last"
    jid = job(cluster, script + "; exit 3")
    # When someone follows it
    follower = Running(cluster.server.address, "logs", str(jid), "--follow")
    try:
        # Then its first line shows while it runs
        wait_until(lambda: b"first\n" in follower.out, 10, what="the first line, live")
        wait_until(lambda: b"oops\n" in follower.err, 5, what="stderr, live")
        # and `logs` of the running job says so and prints what is captured so far
        now = cluster.cli("logs", str(jid))
        assert now.returncode == 0, now.stderr
        assert now.stdout == "first\n"
        assert "running" in now.stderr and "oops" in now.stderr
        flag.touch()
        # and the follow ends with the job: its exit code, every byte once
        assert follower.finish() == 3
    finally:
        follower.kill()
    assert bytes(follower.out) == b"first\nlast\n"
    assert bytes(follower.err).count(b"oops\n") == 1
    assert b"exited with code" not in follower.err  # the exit code says it already


def test_logs_polled_each_second_shows_a_running_job_grow(cluster: Cluster, tmp_path: Path) -> None:
    # Given a running job that nobody follows, which prints a line, then another on a flag
    flag = tmp_path / "go"
    script = f"echo one; until [ -e {flag} ]; do sleep 0.05; done; echo two; sleep 30"
    jid = job(cluster, script)
    with cluster.client() as client:
        wait_until(lambda: client.get(jid).status == "running", 10, what="the job to run")

        # When a dashboard asks for its logs every second or so
        def so_far() -> bytes:
            out, running = client.logs_now(jid)
            assert running
            return out.stdout

        # Then it sees what was printed so far, and what is printed next while it runs
        wait_until(lambda: so_far() == b"one\n", 10, interval=0.5, what="the first line")
        flag.touch()
        wait_until(lambda: so_far() == b"one\ntwo\n", 10, interval=0.5, what="the next one")
        client.cancel(jid)


def test_a_worker_may_send_output_only_for_its_own_attempts(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given a running job, followed, and another registered worker that does not hold it
    flag = tmp_path / "go"
    jid = job(cluster, f"echo real; until [ -e {flag} ]; do sleep 0.05; done")
    with cluster.client() as client, grpc.insecure_channel(cluster.server.address) as ch:
        wait_until(lambda: client.logs_now(jid)[0].stdout == b"real\n", 10, what="its output")
        work = pb_grpc.WorkerServiceStub(ch)
        session = work.Register(
            pb.RegisterRequest(name="intruder", host="h", pid=1, concurrency=1, queues=["none"])
        ).session
        forged = pb.OutputChunk(job_id=jid, attempt=1, stdout=b"forged\n", stdout_offset=5)
        # When that worker sends output for the job
        answer = work.SendOutput(
            pb.OutputRequest(name="intruder", session=session, chunks=[forged])
        )
        # Then it is told to stop, and nobody sees it
        assert [(x.job_id, x.attempt) for x in answer.unfollowed] == [(jid, 1)]
        assert client.logs_now(jid)[0].stdout == b"real\n"
        # and a session that is not the worker's is refused
        with pytest.raises(grpc.RpcError) as e:
            work.SendOutput(pb.OutputRequest(name="intruder", session="x", chunks=[forged]))
        assert e.value.code() is grpc.StatusCode.ALREADY_EXISTS
        flag.touch()
        wait_until(lambda: client.get(jid).status == "succeeded", 10, what="the job to end")
        assert client.logs(jid).stdout == b"real\n"


def test_submit_wait_streams_and_notes_retries(cluster: Cluster) -> None:
    # Given a job that fails its first attempt and succeeds its second
    script = 'echo "try $DTS_ATTEMPT"; [ "$DTS_ATTEMPT" = 2 ] || exit 7'
    # When it is submitted with --wait
    r = cluster.cli("submit", "--wait", "--retries", "1", "--backoff", "1", "--shell", script)
    # Then each attempt's output shows, and a line says the first will be retried
    assert r.returncode == 0, r.stderr
    assert r.stdout == "try 1\ntry 2\n"
    assert re.search(r"waiting for job \d+", r.stderr), r.stderr
    assert re.search(r"attempt 1 failed \(exit 7\); retry in [\d.]+s", r.stderr), r.stderr
    # and a follow of the first attempt alone prints it and ends with its exit code
    waited = re.search(r"waiting for job (\d+)", r.stderr)
    assert waited
    first = cluster.cli("logs", waited.group(1), "--follow", "--attempt", "1")
    assert (first.returncode, first.stdout) == (7, "try 1\n")


@pytest.mark.parametrize(
    ("args", "code", "reason"),
    [
        (("--", "/no/such/program"), 127, "cannot run /no/such/program: No such file or direct"),
        (("--timeout", "1", "--", "sleep", "20"), 124, "timed out after 1s"),
    ],
)
def test_submit_wait_says_why_a_job_failed(
    cluster: Cluster, args: tuple[str, ...], code: int, reason: str
) -> None:
    r = cluster.cli("submit", "--wait", "--retries", "0", *args)
    assert r.returncode == code, r.stderr
    assert reason in r.stderr
    assert r.stderr.count(reason) == 1


def test_wait_for_several_jobs_exits_with_the_first_failure(cluster: Cluster) -> None:
    ids = [job(cluster, f"echo job{n}; exit {n}") for n in (0, 5, 6)]
    r = cluster.cli("wait", *map(str, ids))
    assert r.returncode == 5, r.stderr
    assert r.stdout == "job0\njob5\njob6\n"
    ok = cluster.cli("wait", str(ids[0]))
    assert (ok.returncode, ok.stdout) == (0, "job0\n")


def test_ctrl_c_says_how_to_wait_again(cluster: Cluster) -> None:
    waiter = Running(
        cluster.server.address, "submit", "--wait", "--shell", "echo started; sleep 30"
    )
    try:
        wait_until(lambda: b"started\n" in waiter.out, 10, what="the job's output")
        jid = re.search(rb"waiting for job (\d+)", waiter.err)
        assert jid, waiter.err
        waiter.proc.send_signal(signal.SIGINT)
        assert waiter.finish() == 130
    finally:
        waiter.kill()
    assert f"dts-client wait {jid.group(1).decode()}".encode() in waiter.err
    assert b"Traceback" not in waiter.err
    cluster.cli("cancel", jid.group(1).decode())


@pytest.fixture
def two_servers(tmp_path: Path, postgres_url: str) -> Iterator[list[ServerProcess]]:
    redis = RedisProcess(tmp_path)
    redis.start()
    servers = [
        ServerProcess(tmp_path, redis.url, "--worker-timeout", "2", db=postgres_url)
        for _ in range(2)
    ]
    worker: WorkerProcess | None = None
    try:
        for s in servers:
            s.start()
        worker = WorkerProcess(tmp_path, servers[0].address, redis.url, "w1")
        worker.start()
        yield servers
    finally:
        if worker is not None:
            worker.stop(timeout=15)
        for s in servers:
            s.stop(timeout=15)
        redis.kill()
    for s in servers:
        assert "Traceback" not in s.output(), s.output()


def test_a_follower_on_another_server_sees_the_output_live(
    two_servers: list[ServerProcess], tmp_path: Path
) -> None:
    # Given a job run by a worker of server A
    a, b = two_servers
    flag = tmp_path / "go"
    with Client(a.address) as client:
        script = f"echo from-a; while [ ! -e {flag} ]; do sleep 0.05; done; echo done"
        jid = client.submit([JobSpec(argv=(script,), shell=True, max_retries=0)])[0].id
    # When someone follows it through server B
    follower = Running(b.address, "logs", str(jid), "--follow")
    try:
        # Then its output shows there while it runs, and the follow ends with it
        wait_until(lambda: b"from-a\n" in follower.out, 10, what="output through server B")
        flag.touch()
        assert follower.finish() == 0
    finally:
        follower.kill()
    assert bytes(follower.out) == b"from-a\ndone\n"


def test_a_follow_moves_to_another_server_without_printing_twice(
    two_servers: list[ServerProcess], tmp_path: Path
) -> None:
    # Given a follower of a running job through server B, which knows of server A too
    a, b = two_servers
    flag = tmp_path / "go"
    with Client(a.address) as client:
        script = f"echo before; until [ -e {flag} ]; do sleep 0.05; done; echo after"
        jid = client.submit([JobSpec(argv=(script,), shell=True, max_retries=0)])[0].id
    follower = Running(f"{b.address},{a.address}", "logs", str(jid), "--follow")
    try:
        wait_until(lambda: b"before\n" in follower.out, 10, what="output through server B")
        # When server B stops, and then the job ends
        b.stop(timeout=15)
        flag.touch()
        # Then the follow goes on through server A: every byte once, the job's exit code
        assert follower.finish() == 0
    finally:
        follower.kill()
    assert bytes(follower.out) == b"before\nafter\n"


def test_a_follower_that_goes_away_stops_the_workers_sending(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given a job that prints a line every 0.1 s until a flag appears (at most 60 s)
    flag = tmp_path / "go"
    script = f"for i in $(seq 600); do [ -e {flag} ] && exit 0; echo tick $i; sleep 0.1; done"
    jid = job(cluster, script)
    r = redis.Redis.from_url(cluster.redis.url)
    keys = Keys()
    with cluster.client() as client:
        wait_until(lambda: client.get(jid).status == "running", 10, what="the job to run")
    stream = keys.output(jid, 1)
    assert r.xlen(stream) == 0  # nobody follows: the worker sends nothing
    # When a follower sees its output live, then is killed without a word
    follower = Running(cluster.server.address, "logs", str(jid), "--follow")
    try:
        wait_until(lambda: b"tick" in follower.out, 10, what="live output")
        assert r.zscore(keys.followed, str(jid)) is not None
    finally:
        follower.proc.kill()
        follower.kill()
    # Then the interest expires by itself
    wait_until(
        lambda: (
            r.zscore(keys.followed, str(jid)) is None
            or float(r.zscore(keys.followed, str(jid)) or 0) < time.time()
        ),
        10,
        what="the follow interest to expire",
    )

    # and the worker stops sending: the stream stops growing while the job still prints
    def quiet() -> bool:
        before = r.xlen(stream)
        time.sleep(1.0)  # four sending periods of the worker's: a sender would have added
        return r.xlen(stream) == before

    wait_until(quiet, 15, interval=0, what="the worker to stop sending")
    with cluster.client() as client:
        assert client.get(jid).status == "running"  # it was the follower that went, not the job
    flag.touch()
    r.close()
