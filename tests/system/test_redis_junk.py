"""Members of dts's Redis keys that are not job ids, written by anyone who can reach Redis:
a worker drops them and goes on, the server's reaper drops those parked in `inflight`, and
nothing stalls or fills the logs."""

from __future__ import annotations

import json
import math

import grpc

from dts.domain import JobSpec
from dts.queue import ID_BITS
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from tests.conftest import Cluster
from tests.harness import wait_until

# the four members of the report: a word, an exponent, empty, beyond every integer type
JUNK = [b"abc", b"1e5", b"", b"99999999999999999999999"]


def test_junk_in_a_queue_and_in_inflight_stalls_nothing(fresh_cluster: Cluster) -> None:
    # Given an idle worker serving `default`, and junk at the head of that queue (scores
    # that sort before any real id, infinities included) and expired junk in `inflight`
    w = fresh_cluster.add_worker("steady", "--concurrency", "2")
    r = fresh_cluster.redis.client()
    r.zadd("dts:queue:default", dict(zip(JUNK, [0, -math.inf, 5, 1], strict=True)))
    r.zadd("dts:inflight", {b"abc": 0, b"-7": -math.inf, b"007": 1, b"\xff\xfe": 2})
    # When jobs are submitted after it
    with fresh_cluster.client() as c:
        jobs = c.submit([JobSpec(argv=("echo", str(i))) for i in range(6)])
        # Then every one of them succeeds, on the worker that popped the junk
        for job in jobs:
            done = c.wait(job.id, 30)
            assert done.status.value == "succeeded", done
            assert done.worker == "steady"
            assert c.logs(job.id).stdout == f"{jobs.index(job)}\n".encode()
    # And the worker is alive and shown idle (not `busy` with slots that died)
    assert w.alive(), w.output()

    def state() -> str:
        out = fresh_cluster.cli("--json", "workers")
        assert out.returncode == 0, out.stderr
        return str({x["name"]: x["state"] for x in json.loads(out.stdout)}["steady"])

    wait_until(lambda: state() == "idle", 15, what="the worker to be idle")
    # And the junk is gone from Redis: from the queue, and from `inflight` where pops park
    # what they take (the expired junk there is dropped by the server's reaper)
    wait_until(
        lambda: r.zcard("dts:queue:default") == 0 and r.zcard("dts:inflight") == 0,
        15,
        what=f"junk to go: queue {r.zrange('dts:queue:default', 0, -1)}, "
        f"inflight {r.zrange('dts:inflight', 0, -1)}",
    )
    # And each side said so in a few lines, with no traceback; the reaper keeps working
    worker_log, server_log = w.output(), fresh_cluster.server.output()
    assert "Traceback" not in worker_log, worker_log
    assert "Traceback" not in server_log, server_log
    assert 1 <= worker_log.count("not a job id") <= len(JUNK), worker_log
    assert 1 <= server_log.count("not a job id") <= 4, server_log
    with fresh_cluster.client() as c:
        job = c.submit_one(JobSpec(argv=("true",)))
        assert c.wait(job.id, 30).status.value == "succeeded"


def test_exchange_with_ids_of_any_int64_is_answered_ok(fresh_cluster: Cluster) -> None:
    # Given a worker session over raw gRPC, and a queued job
    channel = grpc.insecure_channel(fresh_cluster.server.address)
    try:
        stub = pb_grpc.WorkerServiceStub(channel)
        reg = stub.Register(
            pb.RegisterRequest(name="raw", host="h", pid=1, concurrency=1, queues=["default"]),
            timeout=10,
        )
        with fresh_cluster.client() as c:
            (job,) = c.submit([JobSpec(argv=("true",))])
        # When it claims and reports ids no job can have (a buggy or hostile worker)
        odd = [-(2**63), -1, 0, 2**ID_BITS, 2**63 - 1]
        resp = stub.Exchange(
            pb.ExchangeRequest(
                name="raw",
                session=reg.session,
                claim=[*odd, job.id],
                results=[pb.Result(job_id=i, attempt=1, outcome=pb.OUTCOME_SUCCEEDED) for i in odd],
            ),
            timeout=10,
        )
        # Then the call succeeds: the real job is claimed, every odd report refused
        assert [a.job_id for a in resp.assignments] == [job.id]
        assert [(a.job_id, a.accepted) for a in resp.acks] == [(i, False) for i in odd]
    finally:
        channel.close()
