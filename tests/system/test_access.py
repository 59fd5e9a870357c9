"""Who may reach what, end to end with the real programs: a worker claims only jobs of its own
queues, and a job enters its working directory with its own user's rights."""

from __future__ import annotations

import json

import grpc

from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from tests.conftest import Cluster
from tests.harness import wait_until


def test_a_worker_cannot_claim_a_job_of_a_queue_it_does_not_serve(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    # Given a job of queue secretq with a secret in its environment, and no worker for it yet
    job_id = int(
        c.cli(
            "submit", "--queue", "secretq", "--env", "SECRET=s3cr3t", "--", "printenv", "SECRET"
        ).stdout.strip()
    )
    # And a worker registered for queue fq alone (speaking the protocol itself)
    with grpc.insecure_channel(c.server.address) as channel:
        work = pb_grpc.WorkerServiceStub(channel)
        session = work.Register(
            pb.RegisterRequest(name="fq-worker", host="h", pid=1, concurrency=1, queues=["fq"]),
            timeout=10,
        ).session
        # When it claims the secretq job's id with its own session, and reports it done
        claimed = work.Exchange(
            pb.ExchangeRequest(name="fq-worker", session=session, claim=[job_id]), timeout=10
        )
        faked = work.Exchange(
            pb.ExchangeRequest(
                name="fq-worker",
                session=session,
                results=[pb.Result(job_id=job_id, attempt=1, outcome=pb.OUTCOME_SUCCEEDED)],
            ),
            timeout=10,
        )
    # Then it gets no assignment (so no environment), and its made-up success is refused
    assert list(claimed.assignments) == []
    assert [a.accepted for a in faked.acks] == [False]
    assert f"claimed job(s) of other queues: {job_id} (secretq)" in c.server.output()
    assert _status(c, job_id) == "queued"
    # And the job runs as usual on a worker of secretq, once
    c.add_worker("secret-worker", "--queues", "secretq")
    wait_until(lambda: _status(c, job_id) == "succeeded", 20, what="the job to succeed")
    assert c.cli("logs", str(job_id)).stdout == "s3cr3t\n"
    history = json.loads(c.cli("--json", "history", str(job_id)).stdout)
    assert [(a["attempt"], a["worker"]) for a in history] == [(1, "secret-worker")]


def _status(c: Cluster, job_id: int) -> str:
    r = c.cli("--json", "status", str(job_id))
    assert r.returncode == 0, r
    return str(json.loads(r.stdout)["status"])
