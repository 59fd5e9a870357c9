"""Bad input thrown at a real dts-server as raw gRPC messages: every answer is a proper status
(never INTERNAL or UNKNOWN), the server keeps serving, and the stored history stays intact."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from tests.conftest import Cluster, make_cluster

ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = make_cluster(tmp_path_factory.mktemp("bad"), 1, worker_args=("--concurrency", "2"))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def stubs(server: Cluster) -> Iterator[tuple[Any, Any]]:
    channel = grpc.insecure_channel(server.server.address)
    yield pb_grpc.SchedulerStub(channel), pb_grpc.WorkerServiceStub(channel)
    channel.close()


def status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def assert_proper(code: grpc.StatusCode, details: str) -> None:
    assert code in ACCEPTABLE, (code, details)
    assert "Traceback" not in details and "Exception" not in details, details


def still_serving(sched: Any, known: dict[int, pb.Job]) -> None:
    """The server answers, and every job accepted earlier reads back as it was stored."""
    for job_id, job in known.items():
        now = sched.GetJob(pb.JobRef(id=job_id), timeout=10)
        assert (list(now.spec.argv), now.spec.name, dict(now.spec.env)) == (
            list(job.spec.argv),
            job.spec.name,
            dict(job.spec.env),
        )


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-1.0, 0.0, 1e-9, 1e300, -math.inf, math.nan]),
)
ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
int64s = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([-1, 0, 1, 2**62, 2**62 + 1, 2**63 - 1]),
)
limits = st.builds(
    pb.Limits,
    cpu_seconds=int64s,
    memory_bytes=int64s,
    open_files=int64s,
    processes=int64s,
    output_bytes=int64s,
)
specs = st.builds(
    pb.JobSpec,
    argv=st.lists(text, max_size=4),
    shell=st.booleans(),
    queue=text,
    priority=ints,
    max_retries=ints,
    backoff=numbers,
    timeout=numbers,
    delay=numbers,
    env=st.dictionaries(text, text, max_size=4),
    cwd=text,
    name=text,
    limits=limits,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(specs, min_size=0, max_size=3))
def test_any_submit_gets_a_proper_answer(stubs: tuple[Any, Any], batch: list[pb.JobSpec]) -> None:
    sched, _ = stubs
    # Keep everything scheduled far ahead so nothing random actually runs
    for spec in batch:
        spec.delay = (
            10 * 365 * 86400.0 if not spec.delay or spec.delay != spec.delay else spec.delay
        )
    code, details = status_of(lambda: sched.Submit(pb.SubmitRequest(jobs=batch), timeout=10))
    assert_proper(code, details)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        assert details, "a refusal names what is wrong"


@settings(max_examples=100, deadline=None)
@given(
    job_id=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    attempt=ints,
    limit=ints,
    status=ints,
    timeout=numbers,
)
def test_ids_limits_and_enums_of_any_shape(
    server: Cluster, job_id: int, attempt: int, limit: int, status: int, timeout: float
) -> None:
    channel = grpc.insecure_channel(server.server.address)
    try:
        s = pb_grpc.SchedulerStub(channel)
        ref = pb.JobRef(id=job_id)
        # NaN and negative waits must be refused; finite ones are kept short
        wait = timeout if not timeout >= 0 else min(timeout, 0.01)
        calls: list[Callable[[], object]] = [
            lambda: s.GetJob(ref, timeout=10),
            lambda: s.GetHistory(ref, timeout=10),
            lambda: s.GetLogs(pb.LogsRequest(id=job_id, attempt=attempt), timeout=10),
            lambda: s.CancelJob(ref, timeout=10),
            lambda: s.RetryJob(ref, timeout=10),
            lambda: s.ListJobs(pb.ListJobsRequest(limit=limit, status=status), timeout=10),
            lambda: s.WaitJob(pb.WaitRequest(id=job_id, timeout=wait), timeout=10),
        ]
        for call in calls:
            assert_proper(*status_of(call))
    finally:
        channel.close()


def test_worker_calls_from_strangers_are_refused_properly(stubs: tuple[Any, Any]) -> None:
    sched, work = stubs
    job = sched.Submit(pb.SubmitRequest(jobs=[pb.JobSpec(argv=["true"], delay=3600)])).jobs[0]
    for call in (
        lambda: work.Exchange(pb.ExchangeRequest(name="ghost", session="x", claim=[job.id])),
        lambda: work.Unregister(pb.UnregisterRequest(name="ghost", session="x")),
        lambda: work.Register(pb.RegisterRequest(name="", concurrency=0)),
        lambda: work.Register(pb.RegisterRequest(name="n" * 10_000, concurrency=1, queues=["q"])),
        lambda: work.Register(
            pb.RegisterRequest(name="n", host="h" * 300, concurrency=1, queues=["q"])
        ),
        lambda: work.Register(pb.RegisterRequest(name="n", concurrency=10**9, queues=["q"])),
        lambda: work.Register(pb.RegisterRequest(name="n", concurrency=1, queues=["bad name!"])),
        lambda: work.Register(pb.RegisterRequest(name="n", concurrency=1, queues=["q"] * 1000)),
    ):
        code, details = status_of(call)
        assert code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT), (
            code,
            details,
        )
    # A heartbeat from an unknown session is told to register (and renews nothing)
    assert work.Heartbeat(pb.HeartbeatRequest(name="ghost", session="x")).reregister
    # A registered worker reporting attempts it does not hold is refused per result, and the
    # job is untouched
    session = work.Register(
        pb.RegisterRequest(name="intruder", host="h", pid=1, concurrency=1, queues=["none"])
    ).session
    stale = pb.Result(job_id=job.id, attempt=1, outcome=pb.OUTCOME_SUCCEEDED, exit_code=0)
    missing = pb.Result(job_id=2**62, attempt=1, outcome=pb.OUTCOME_FAILED)
    resp = work.Exchange(
        pb.ExchangeRequest(name="intruder", session=session, results=[stale, missing])
    )
    assert [a.accepted for a in resp.acks] == [False, False]
    assert sched.GetJob(pb.JobRef(id=job.id)).status == pb.JOB_STATUS_SCHEDULED
    work.Unregister(pb.UnregisterRequest(name="intruder", session=session))


def test_sql_and_shell_metacharacters_round_trip_byte_for_byte(stubs: tuple[Any, Any]) -> None:
    sched, _ = stubs
    nasty = [
        "'; DROP TABLE jobs; --",
        'Robert"); DELETE FROM attempts; --',
        "$(touch /tmp/dts-pwned) `id` ${HOME} \\ ; | & > < *",
        "ünïcödé ✓ 𝄞",
        "%s %d {} {0} \\x00",
    ]
    job = sched.Submit(
        pb.SubmitRequest(
            jobs=[pb.JobSpec(argv=["printf", "%s\\n", *nasty], name=nasty[0], env={"K": nasty[2]})]
        )
    ).jobs[0]
    done = sched.WaitJob(pb.WaitRequest(id=job.id, timeout=20), timeout=30)
    assert done.status == pb.JOB_STATUS_SUCCEEDED, done.error
    again = sched.GetJob(pb.JobRef(id=job.id))
    assert list(again.spec.argv) == ["printf", "%s\\n", *nasty]
    assert again.spec.name == nasty[0] and again.spec.env["K"] == nasty[2]
    out = sched.GetLogs(pb.LogsRequest(id=job.id)).stdout
    assert out == "".join(f"{a}\n" for a in nasty).encode()
    listed = sched.ListJobs(pb.ListJobsRequest(limit=1000)).jobs
    assert any(j.id == job.id for j in listed)
    # A NUL byte cannot reach exec(): refused up front, naming the problem
    code, details = status_of(
        lambda: sched.Submit(pb.SubmitRequest(jobs=[pb.JobSpec(argv=["echo", "a\x00b"])]))
    )
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "command must not contain NUL bytes",
    )


def test_invalid_utf8_in_job_output_is_kept_as_bytes(stubs: tuple[Any, Any]) -> None:
    sched, _ = stubs
    job = sched.Submit(
        pb.SubmitRequest(jobs=[pb.JobSpec(argv=["printf", "\\377\\376ok\\200"], shell=False)])
    ).jobs[0]
    sched.WaitJob(pb.WaitRequest(id=job.id, timeout=20), timeout=30)
    assert sched.GetLogs(pb.LogsRequest(id=job.id)).stdout == b"\xff\xfeok\x80"


def test_history_survives_a_flood_of_bad_and_good_submits(stubs: tuple[Any, Any]) -> None:
    sched, _ = stubs
    known: dict[int, pb.Job] = {}
    for i in range(300):
        good = pb.JobSpec(argv=["true"], name=f"good {i}", env={"I": str(i)}, delay=3600)
        bad = pb.JobSpec(argv=[], priority=99)
        resp = sched.Submit(pb.SubmitRequest(jobs=[good]), timeout=10)
        known[resp.jobs[0].id] = resp.jobs[0]
        code, _ = status_of(lambda bad=bad: sched.Submit(pb.SubmitRequest(jobs=[bad]), timeout=10))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
    code, details = status_of(
        lambda: sched.Submit(pb.SubmitRequest(jobs=[pb.JobSpec(argv=["x" * (200 * 1024)])]))
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "longer than" in details
    still_serving(sched, known)


@pytest.mark.parametrize(
    "method",
    ["/dts.v1.Scheduler/Submit", "/dts.v1.Scheduler/GetJob", "/dts.v1.WorkerService/Exchange"],
)
@pytest.mark.parametrize(
    "raw",
    [b"\xff\xff\xff", b"\x0a\x05\x0a\x03\xff\xfe\xfd", b"\x08" + b"\xff" * 11],
    ids=["corrupt", "bad-utf8-string", "overlong-varint"],
)
def test_bytes_that_do_not_parse_get_invalid_argument(
    server: Cluster, method: str, raw: bytes
) -> None:
    # gRPC's own answer would be INTERNAL, with a traceback in the server's log
    channel = grpc.insecure_channel(server.server.address)
    try:
        code, details = status_of(lambda: channel.unary_unary(method)(raw, timeout=10))
    finally:
        channel.close()
    # (bytes that happen to parse as a message of unknown fields are a request for id 0)
    assert_proper(code, details)
    if method.endswith("Submit"):
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert details.startswith("request does not parse: ")
    assert "Traceback" not in server.server.output()
