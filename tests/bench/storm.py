"""`make bench`'s storm: how fast ping, status and a worker's heartbeat answer while many calls
wait (long-polling WaitJob, as `submit --wait` does) and many hang without sending their
request, against the same calls on an idle server. Run alone: `python -m tests.bench.storm`."""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dts.client import Client
from dts.domain import JobSpec
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from tests.harness import RedisProcess, ServerProcess

QUIET = ("--log-level", "warning")


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _timed(call: Callable[[], object], n: int) -> list[float]:
    """Milliseconds each of `n` calls took, one after the other."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


class Probe:
    """The three calls measured: a health check, a status read and a worker heartbeat."""

    def __init__(self, address: str, job_id: int) -> None:
        self.channel = grpc.insecure_channel(address)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.scheduler = pb_grpc.SchedulerStub(self.channel)
        self.workers = pb_grpc.WorkerServiceStub(self.channel)
        self.job_id = job_id
        reg = pb.RegisterRequest(name="bench-probe", host="bench", pid=os.getpid(),
                                 concurrency=1, queues=["probe"])  # fmt: skip
        self.session = self.workers.Register(reg, timeout=10).session

    def measure(self, n: int) -> dict[str, list[float]]:
        beat = pb.HeartbeatRequest(name="bench-probe", session=self.session)
        check = health_pb2.HealthCheckRequest()
        ref = pb.JobRef(id=self.job_id)
        return {
            "ping": _timed(lambda: self.health.Check(check, timeout=60), n),
            "status": _timed(lambda: self.scheduler.GetJob(ref, timeout=60), n),
            "heartbeat": _timed(lambda: self.workers.Heartbeat(beat, timeout=60), n),
        }

    def close(self) -> None:
        self.channel.close()


def storm(root: Path, waiters: int = 500, hanging: int = 100, n: int = 200) -> dict[str, float]:
    """p50/p99 (ms) of ping, status and heartbeat, idle and through a storm of `waiters`
    waiting calls and `hanging` calls that never send their request."""
    d = Path(tempfile.mkdtemp(dir=root))
    r = RedisProcess(d)
    r.start()
    s = ServerProcess(d, r.url, *QUIET)
    s.start()
    release = threading.Event()
    channels = [grpc.insecure_channel(s.address) for _ in range(max(1, waiters // 50))]
    calls: list[grpc.Future[object]] = []
    try:
        with Client(s.address) as c:
            parked = [j.id for j in c.submit([JobSpec(argv=("true",), queue="parked")] * 50)]
        probe = Probe(s.address, parked[0])
        probe.measure(20)  # warm-up
        idle = probe.measure(n)

        def never() -> Iterator[bytes]:
            release.wait(600)
            yield b""

        for i in range(waiters):
            stub = pb_grpc.SchedulerStub(channels[i % len(channels)])
            req = pb.WaitRequest(id=parked[i % len(parked)], timeout=30)
            calls.append(stub.WaitJob.future(req, timeout=600))
        for i in range(hanging):
            method = "/dts.v1.Scheduler/GetJob" if i % 2 else "/grpc.health.v1.Health/Check"
            call = channels[i % len(channels)].stream_unary(method)
            calls.append(call.future(never(), timeout=600))
        time.sleep(1.0)  # let them all reach the server (a storm, not a measurement)
        loaded = probe.measure(n)
        probe.close()
        out: dict[str, float] = {}
        for name, values in [*(("idle " + k, v) for k, v in idle.items()),
                             *(("storm " + k, v) for k, v in loaded.items())]:  # fmt: skip
            out[f"{name} p50 ms"] = round(statistics.median(values), 2)
            out[f"{name} p99 ms"] = round(_pct(values, 99), 2)
        out["waiters"] = waiters
        out["hanging"] = hanging
        out["storm still waiting"] = sum(not f.done() for f in calls[:waiters])
        return out
    finally:
        release.set()
        for f in calls:
            f.cancel()
        for ch in channels:
            ch.close()
        s.stop()
        r.kill()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for key, value in storm(Path(tmp)).items():
            print(f"{key}: {value}")
