"""Unit tests of dts.pipeline through dts.client, against an in-process gRPC server that is a
fake: one that predates SubmitStream (and knows only the unary Submit)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from dts.client import Client
from dts.domain import JobSpec, JobStatus
from dts.v1 import dts_pb2 as pb


class OldScheduler:
    """Answers Submit as a server without SubmitStream would (whole jobs, no ids_only)."""

    def __init__(self) -> None:
        self.calls = 0

    def submit(self, request: pb.SubmitRequest, context: Any) -> pb.SubmitResponse:
        self.calls += 1
        return pb.SubmitResponse(
            jobs=[
                pb.Job(id=self.calls, spec=spec, status=pb.JOB_STATUS_QUEUED, created_at=1.0)
                for spec in request.jobs
            ]
        )


@pytest.fixture
def old_server() -> Iterator[tuple[str, OldScheduler]]:
    fake = OldScheduler()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(
        fake.submit,
        request_deserializer=pb.SubmitRequest.FromString,
        response_serializer=pb.SubmitResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("dts.v1.Scheduler", {"Submit": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", fake
    server.stop(None)


def test_a_server_without_submit_stream_gets_unary_submits(
    old_server: tuple[str, OldScheduler],
) -> None:
    address, fake = old_server
    with Client(address, timeout=10) as c:
        # the first submit finds no SubmitStream and falls back to Submit
        first = c.submit_one(JobSpec(argv=("true",)))
        assert (first.id, first.status, fake.calls) == (1, JobStatus.QUEUED, 1)
        # and later ones go straight to Submit
        second = c.submit_async([JobSpec(argv=("echo", "x"))]).result(10)
        assert [j.spec.argv for j in second] == [("echo", "x")] and fake.calls == 2
        assert not c._streams
