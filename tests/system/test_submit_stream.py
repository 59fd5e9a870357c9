"""SubmitStream through the client library, against a real server: submits on their way
together, answered in order, each durable when answered, each judged on its own."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dts.client import Client, pipeline
from dts.domain import JobSpec
from dts.errors import InvalidArgument, Unavailable
from dts.v1 import dts_pb2 as pb
from tests.harness import ServerProcess, wait_until

LATER = 3600.0  # submitted jobs wait: these tests are about storing them, not running them


@pytest.fixture
def server(tmp_path: Path, redis_url: str) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path, redis_url, prefix=f"stream-{tmp_path.name}:")
    s.start()
    yield s
    s.stop()


def test_many_submits_on_their_way_are_all_stored_in_order(server: ServerProcess) -> None:
    # Given a client that keeps up to 64 single submits on their way at once
    with Client(server.address) as c:
        pending, jobs = [], []
        for i in range(600):
            pending.append(c.submit_async([JobSpec(argv=("echo", str(i)), delay=LATER)]))
            if len(pending) == 64:
                jobs += pending.pop(0).result(30)
        for p in pending:
            jobs += p.result(30)
        # Then every one is stored, once, in the order sent, exactly as it was answered
        assert [j.spec.argv[1] for j in jobs] == [str(i) for i in range(600)]
        assert [j.id for j in jobs] == sorted({j.id for j in jobs})
        assert [c.get(j.id) for j in jobs[::50]] == jobs[::50]


def test_a_refused_submit_costs_only_itself(server: ServerProcess) -> None:
    with Client(server.address) as c:
        good = c.submit_async([JobSpec(argv=("true",), delay=LATER)])
        bad = c.submit_async([JobSpec(argv=("true",), priority=99)])
        also_good = c.submit_async([JobSpec(argv=("true",), delay=LATER)] * 3)
        with pytest.raises(InvalidArgument, match="priority must be between 0 and 9"):
            bad.result(30)
        first, rest = good.result(30), also_good.result(30)
        assert len(first) == 1 and len(rest) == 3 and rest[0].id == first[0].id + 1
        # and the stream goes on
        assert c.submit_one(JobSpec(argv=("true",), delay=LATER)).id == rest[-1].id + 1


def test_an_idle_pipe_ends_its_call_and_the_next_submit_opens_another(
    server: ServerProcess,
) -> None:
    with Client(server.address) as c:
        c.submit_one(JobSpec(argv=("true",), delay=LATER))
        first = c._pipe
        assert first is not None
        wait_until(lambda: first.closed, pipeline.IDLE_CLOSE + 5, what="the idle pipe to end")
        job = c.submit_one(JobSpec(argv=("true",), delay=LATER))
        assert c._pipe is not first and c.get(job.id) == job


def test_a_stopping_server_ends_open_streams_at_once(tmp_path: Path, redis_url: str) -> None:
    # Given a server with a client's stream open on it
    s = ServerProcess(tmp_path, redis_url, prefix="stopping:")
    s.start()
    with Client(s.address) as c:
        c.submit_one(JobSpec(argv=("true",), delay=LATER))
        # When it is told to stop, then it stops without waiting out its 10 s grace
        start = time.monotonic()
        s.signal(signal.SIGTERM)
        assert s.wait(9) == 0
        assert time.monotonic() - start < 9
        # And the client's next submit says the server cannot be reached
        with pytest.raises(Unavailable):
            c.submit_one(JobSpec(argv=("true",), delay=LATER))
        # And once the server is back, the same client submits over a new stream
        again = ServerProcess(tmp_path, redis_url, prefix="stopping:", port=s.port, db=s.db)
        again.start()
        try:
            job = c.submit_one(JobSpec(argv=("true",), delay=LATER))
            assert c.get(job.id) == job and job.id == 2
        finally:
            again.stop()


def test_a_stream_message_that_does_not_parse_is_invalid_argument(
    server: ServerProcess,
) -> None:
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.stream_stream(
            "/dts.v1.Scheduler/SubmitStream",
            request_serializer=lambda b: b,
            response_deserializer=pb.SubmitResponse.FromString,
        )
        good = pb.SubmitRequest(jobs=[pb.JobSpec(argv=["true"], delay=LATER)]).SerializeToString()
        answers: list[Any] = []
        with pytest.raises(grpc.RpcError) as e:
            for answer in raw(iter([good, b"\xff\xff\xff"]), timeout=30):
                answers.append(answer)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "does not parse" in (e.value.details() or "")
        assert len(answers) == 1 and answers[0].ids  # the good one before it was stored
