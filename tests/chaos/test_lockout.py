"""No number of waiting or hanging calls starves the server.

A storm of 500 long-polling WaitJob calls (what 500 `dts-client submit --wait` do), plus 100
calls without a token that send their headers and never their request (to a method that needs
a token, and to the health service, which needs none): through it, `ping`, `status` and
`workers` answer, the worker's heartbeats get through, and a job that runs across the storm
is neither lost nor retried. Before the server served calls on an event loop, each of these
calls held one of its 32 threads: heartbeats timed out and workers killed healthy jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from dts.channel import ChannelSecurity, open_channel
from dts.client import Client
from dts.domain import JobSpec, JobStatus
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from tests.harness import (
    RedisProcess,
    ServerProcess,
    WorkerProcess,
    clean_env,
    run_cli,
    wait_until,
)

CLIENT = "client-token-" + "c" * 20
WORKER = "worker-token-" + "w" * 20
WAITERS = 500
HANGING = 100
LEASE = 4.0  # seconds: a worker whose heartbeats stall for 3.2 s kills its jobs
STORM = 12.0  # seconds the storm lasts (the job runs through all of it)


def _secret(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


class Storm:
    """Calls that wait or hang, opened against `address` and ended by close()."""

    def __init__(self, address: str, security: ChannelSecurity) -> None:
        self.address = address
        self.release = threading.Event()  # lets the hanging calls' request streams end
        self.waits: list[grpc.Future[pb.Job]] = []
        self.guarded: list[grpc.Future[object]] = []  # to a method that needs a token
        self.health: list[grpc.Future[object]] = []  # to the health service
        self.channels = [open_channel(address, security, []) for _ in range(WAITERS // 50)] + [
            grpc.insecure_channel(address) for _ in range(4)
        ]

    def wait_for(self, job_ids: list[int]) -> None:
        """WAITERS long polls, spread over the authenticated channels and the jobs."""
        stubs = [pb_grpc.SchedulerStub(ch) for ch in self.channels[: WAITERS // 50]]
        for i in range(WAITERS):
            req = pb.WaitRequest(id=job_ids[i % len(job_ids)], timeout=30)
            self.waits.append(stubs[i % len(stubs)].WaitJob.future(req, timeout=60))

    def hang(self) -> None:
        """HANGING calls without a token that never send their request."""

        def never() -> Iterator[bytes]:
            self.release.wait(STORM + 30)
            yield b""

        bare = self.channels[WAITERS // 50 :]
        for i in range(HANGING):
            to_health = i % 2 == 0
            method = "/grpc.health.v1.Health/Check" if to_health else "/dts.v1.Scheduler/GetJob"
            call = bare[i % len(bare)].stream_unary(method)
            (self.health if to_health else self.guarded).append(
                call.future(never(), timeout=STORM + 30)
            )

    def close(self) -> None:
        self.release.set()
        for f in [*self.waits, *self.guarded, *self.health]:
            f.cancel()
        for ch in self.channels:
            ch.close()


@pytest.fixture
def guarded_cluster(tmp_path: Path) -> Iterator[tuple[ServerProcess, WorkerProcess]]:
    """A server that requires tokens (plaintext on loopback) and one worker."""
    tokens = _secret(tmp_path / "tokens", f"client {CLIENT}\nworker {WORKER}\n")
    sec = ChannelSecurity(token=CLIENT, plaintext_token=True)
    r = RedisProcess(tmp_path)
    r.start()
    s = ServerProcess(
        tmp_path,
        r.url,
        "--tokens-file",
        tokens,
        "--plaintext-tokens",
        "--worker-timeout",
        str(LEASE),
        probe=sec,
    )
    s.start()
    w = WorkerProcess(
        tmp_path,
        s.address,
        r.url,
        "w1",
        "--token-file",
        _secret(tmp_path / "worker.token", WORKER),
        "--plaintext-token",
        "--concurrency",
        "2",
        probe=sec,
    )
    w.start()
    yield s, w
    w.stop(timeout=20)
    s.stop()
    r.kill()


@pytest.mark.parametrize("storm_of", ["waiting", "hanging", "both"])
def test_waiting_and_hanging_calls_starve_neither_clients_nor_workers(
    tmp_path: Path, guarded_cluster: tuple[ServerProcess, WorkerProcess], storm_of: str
) -> None:
    server, worker = guarded_cluster
    sec = ChannelSecurity(token=CLIENT, plaintext_token=True)
    env = clean_env(DTS_TOKEN=CLIENT, DTS_PLAINTEXT_TOKEN="true")
    with Client(server.address, security=sec) as c:
        # Given a job running across the storm, and jobs nobody runs for the waits to wait on
        runner = c.submit_one(JobSpec(argv=("sleep", str(STORM))))
        wait_until(lambda: c.get(runner.id).status is JobStatus.RUNNING, 20, what="job to run")
        parked = [j.id for j in c.submit([JobSpec(argv=("true",), queue="parked")] * 50)]
        storm = Storm(server.address, sec)
        try:
            # When 500 calls wait and 100 calls without a token hang, for the job's whole run
            if storm_of != "hanging":
                storm.wait_for(parked)
            if storm_of != "waiting":
                storm.hang()
            ends = time.monotonic() + STORM
            answered = 0
            while time.monotonic() < ends:
                # Then ping, status and workers answer (within the CLI's own 10 s timeout)
                for args in (("ping",), ("status", str(runner.id)), ("workers",)):
                    out = run_cli(server.address, *args, env=env, timeout=30)
                    assert out.returncode == 0, (args, out.stderr)
                    answered += 1
            # ...every long poll was still waiting, none refused or ended early
            assert len(storm.waits) == (0 if storm_of == "hanging" else WAITERS)
            assert not any(f.done() for f in storm.waits)
            # ...and the job ran once, to success, its worker never out of touch
            done = c.wait(runner.id, timeout=30)
            assert done.status is JobStatus.SUCCEEDED and done.attempts == 1, done
            assert [a.attempt for a in c.history(runner.id)] == [1]
            assert "no lease renewal" not in worker.output()
            assert worker.alive()
            # ...and the waits return as soon as what they wait for ends
            for job_id in parked:
                c.cancel(job_id)
            for f in storm.waits:
                assert f.result(timeout=30).status == pb.JOB_STATUS_CANCELLED
            # ...a call without a token was refused on its headers, and a health check was
            # answered without waiting for its request
            if storm_of != "waiting":
                assert {_code(f) for f in storm.guarded} == {grpc.StatusCode.UNAUTHENTICATED}
                assert {_code(f) for f in storm.health} == {None}
            assert answered >= 6, answered
        finally:
            storm.close()


def _code(f: grpc.Future[object]) -> grpc.StatusCode | None:
    e = f.exception(timeout=30)
    return e.code() if isinstance(e, grpc.Call) else None


MESSAGE = 48 << 20  # bytes in each request of the flood below


def _hwm(pid: int) -> int:
    """The peak resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_callers_without_a_token_cannot_make_the_server_hold_their_messages(
    guarded_cluster: tuple[ServerProcess, WorkerProcess],
) -> None:
    server, _ = guarded_cluster
    big = b"\xff" * MESSAGE
    channels = [grpc.insecure_channel(server.address) for _ in range(4)]
    try:
        before = _hwm(server.pid)
        # When 16 callers without a token send 48 MiB each to a method that needs one
        submit = [ch.unary_unary("/dts.v1.Scheduler/Submit") for ch in channels]
        calls = [submit[i % 4].future(big, timeout=60) for i in range(16)]
        # Then each is refused, and the server never took their messages in
        assert {_code(f) for f in calls} == {grpc.StatusCode.UNAUTHENTICATED}
        refused = _hwm(server.pid) - before
        assert refused < MESSAGE, f"server grew {refused >> 20} MiB"  # less than one of them
        # When 16 send 48 MiB health requests: each is answered, and none taken in
        check = [ch.unary_unary("/grpc.health.v1.Health/Check") for ch in channels]
        calls = [check[i % 4].future(big, timeout=60) for i in range(16)]
        assert {_code(f) for f in calls} == {None}
        grown = _hwm(server.pid) - before
        assert grown < MESSAGE, f"server grew {grown >> 20} MiB"
    finally:
        for ch in channels:
            ch.close()
