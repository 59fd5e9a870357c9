"""Waiting for jobs: the server holds a bounded set of waiting calls, and a client turned away
asks again until it has its answer."""

from __future__ import annotations

import subprocess

import grpc

from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from tests.conftest import Cluster
from tests.harness import BIN, clean_env, wait_until


def test_a_full_set_of_waiters_turns_calls_away_and_clients_ask_again(
    fresh_cluster: Cluster,
) -> None:
    # Given a server that holds at most 2 waiting calls, and 3 `submit --wait` on a queue
    # no worker serves yet
    fresh_cluster.restart_server("--worker-timeout", "2", "--max-waiters", "2")
    address = fresh_cluster.server.address
    waits = [
        subprocess.Popen(
            [
                str(BIN / "dts-client"),
                "--server",
                address,
                "submit",
                "--wait",
                "--queue",
                "later",
                "--",
                "echo",
                f"job {i}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        for i in range(3)
    ]
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.SchedulerStub(channel)

            def turned_away() -> bool:
                try:
                    stub.WaitJob(pb.WaitRequest(id=1, timeout=0), timeout=5)
                except grpc.RpcError as e:
                    if e.code() is grpc.StatusCode.NOT_FOUND:  # not submitted yet
                        return False
                    assert e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, e
                    assert "too many calls waiting for jobs (2)" in (e.details() or "")
                    return True
                return False

            # When two of them wait: a further waiting call is turned away
            wait_until(turned_away, 20, what="the set of waiters to fill")
        # ...and when the jobs run, every one of the three clients gets its result
        fresh_cluster.add_worker("w1", "--queues", "later")
        outputs = sorted(p.communicate(timeout=60)[0] for p in waits)
        assert [p.returncode for p in waits] == [0, 0, 0]
        assert outputs == [f"job {i}\n" for i in range(3)]
    finally:
        for p in waits:
            p.kill()
