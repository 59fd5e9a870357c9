"""Unit tests of dts.wire (domain <-> protobuf, through real serialization) and dts.errors."""

from __future__ import annotations

from typing import TypeVar

import grpc
import pytest
from google.protobuf.message import Message

from dts import errors, wire
from dts.domain import (
    Assignment,
    Attempt,
    Job,
    JobSpec,
    JobStatus,
    Lease,
    Outcome,
    Result,
    StatCount,
    WorkerInfo,
    WorkerState,
)
from dts.limits import Limits
from dts.v1 import dts_pb2 as pb

M = TypeVar("M", bound=Message)


def over_the_wire(msg: M) -> M:
    """`msg` after serializing and parsing it again, as the other side sees it."""
    return type(msg).FromString(msg.SerializeToString())


FULL_SPEC = JobSpec(
    argv=("python3", "-c", "print('h\u00e9llo')", ""),
    shell=False,
    queue="batch",
    priority=7,
    max_retries=4,
    backoff=2.5,
    timeout=30.0,
    delay=12.5,
    env=(("A", "1"), ("B", "two words"), ("EMPTY", "")),
    cwd="/srv/work",
    name="nightly \u2603",
    limits=Limits(cpu=60, memory=1 << 30, files=256, processes=100, output=4096),
    unique="nightly-report ☃",
)
MINIMAL_SPEC = JobSpec(argv=("true",))


@pytest.mark.parametrize(
    "spec",
    [
        FULL_SPEC,
        MINIMAL_SPEC,
        JobSpec(argv=("echo $HOME | wc -c",), shell=True),
        JobSpec(argv=("true",), max_retries=0, backoff=0.0, timeout=0.0),  # set, but zero
        JobSpec(argv=("true",), limits=Limits(output=1)),  # one limit only
    ],
)
def test_spec_round_trip(spec: JobSpec) -> None:
    assert wire.spec_from_pb(over_the_wire(wire.spec_to_pb(spec))) == spec


def test_each_limit_travels_in_its_own_field() -> None:
    limits = Limits(cpu=1, memory=2, files=3, processes=4, output=5)
    expected = pb.Limits(cpu_seconds=1, memory_bytes=2, open_files=3, processes=4, output_bytes=5)
    assert wire.limits_to_pb(limits).SerializeToString() == expected.SerializeToString()
    assert wire.limits_from_pb(over_the_wire(expected)) == limits
    assert wire.limits_to_pb(Limits(files=7)) == pb.Limits(open_files=7)


def test_unset_optionals_stay_unset_and_zero_is_not_unset() -> None:
    unset = over_the_wire(wire.spec_to_pb(MINIMAL_SPEC))
    assert not unset.HasField("max_retries")
    assert not unset.HasField("backoff")
    assert not unset.HasField("timeout")
    zeros = over_the_wire(wire.spec_to_pb(JobSpec(argv=("x",), max_retries=0, timeout=0.0)))
    assert zeros.HasField("max_retries") and zeros.max_retries == 0
    assert zeros.HasField("timeout") and zeros.timeout == 0.0
    assert not zeros.HasField("backoff")


def test_empty_queue_on_the_wire_means_default() -> None:
    assert wire.spec_from_pb(pb.JobSpec(argv=["x"])).queue == "default"


def test_env_arrives_sorted_by_key() -> None:
    spec = JobSpec(argv=("x",), env=(("Z", "1"), ("A", "2")))
    assert wire.spec_from_pb(over_the_wire(wire.spec_to_pb(spec))).env == (("A", "2"), ("Z", "1"))


@pytest.mark.parametrize(
    "job",
    [
        Job(id=1, spec=MINIMAL_SPEC, status=JobStatus.QUEUED, created_at=1700000000.25),
        Job(
            id=2**40,
            spec=FULL_SPEC,
            status=JobStatus.FAILED,
            attempts=3,
            exit_code=137,
            error="killed by signal 9 (SIGKILL)",
            worker="host:123",
            created_at=1700000000.5,
            started_at=1700000001.0,
            finished_at=1700000002.0,
        ),
        Job(
            id=3,
            spec=FULL_SPEC,
            status=JobStatus.SUCCEEDED,
            attempts=1,
            exit_code=0,  # zero is a value, not "unset"
            created_at=1.0,
            started_at=2.0,
            finished_at=3.0,
        ),
        Job(id=4, spec=FULL_SPEC, status=JobStatus.SCHEDULED, created_at=1.0, run_at=99.5),
        Job(id=5, spec=FULL_SPEC, status=JobStatus.RUNNING, created_at=1.0, existing=True),
    ],
)
def test_job_round_trip(job: Job) -> None:
    assert wire.job_from_pb(over_the_wire(wire.job_to_pb(job))) == job


@pytest.mark.parametrize("status", list(JobStatus))
def test_every_status_round_trips(status: JobStatus) -> None:
    job = Job(id=9, spec=MINIMAL_SPEC, status=status)
    assert wire.job_from_pb(over_the_wire(wire.job_to_pb(job))).status is status


@pytest.mark.parametrize(
    "attempt",
    [
        Attempt(job_id=5, attempt=1, worker="w1", started_at=10.0),
        Attempt(
            job_id=5,
            attempt=2,
            worker="w2",
            started_at=10.0,
            finished_at=20.5,
            exit_code=124,
            outcome=Outcome.TIMED_OUT,
            error="timed out after 10s",
            stdout_bytes=2**33,
            stderr_bytes=7,
        ),
        Attempt(5, 3, "w", 1.0, 2.0, 0, Outcome.SUCCEEDED),
        Attempt(5, 4, "w", 1.0, 2.0, 3, Outcome.FAILED, ran_from=1.25, ran_until=1.875),
    ],
)
def test_attempt_round_trip(attempt: Attempt) -> None:
    assert wire.attempt_from_pb(over_the_wire(wire.attempt_to_pb(attempt))) == attempt


def test_the_times_the_command_ran_are_zero_on_the_wire_when_unknown() -> None:
    ran = Attempt(5, 1, "w", 1.0, 2.0, 0, Outcome.SUCCEEDED, ran_from=1.5, ran_until=1.75)
    msg = over_the_wire(wire.attempt_to_pb(ran))
    assert (msg.ran_from, msg.ran_until) == (1.5, 1.75)
    lost = Attempt(5, 2, "w", 1.0, 2.0, None, Outcome.LOST, "lost")
    msg = over_the_wire(wire.attempt_to_pb(lost))
    assert (msg.ran_from, msg.ran_until) == (0.0, 0.0)
    back = wire.attempt_from_pb(msg)
    assert (back.ran_from, back.ran_until) == (None, None)


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome_round_trips(outcome: Outcome) -> None:
    a = Attempt(1, 1, "w", 1.0, outcome=outcome)
    assert wire.attempt_from_pb(over_the_wire(wire.attempt_to_pb(a))).outcome is outcome


@pytest.mark.parametrize(
    "result",
    [
        Result(
            job_id=8,
            attempt=2,
            outcome=Outcome.FAILED,
            exit_code=3,
            error="exited with code 3",
            stdout=b"\xff\xfe\x00not utf-8",
            stderr=b"err\n",
            started_at=100.0,
            finished_at=101.5,
        ),
        Result(job_id=8, attempt=3, outcome=Outcome.LOST),  # no exit code at all
        Result(job_id=8, attempt=4, outcome=Outcome.SUCCEEDED, exit_code=0),
    ],
)
def test_result_round_trip(result: Result) -> None:
    assert wire.result_from_pb(over_the_wire(wire.result_to_pb(result))) == result


@pytest.mark.parametrize("spec", [FULL_SPEC, JobSpec(argv=("sleep 1; echo hi",), shell=True)])
def test_assignment_round_trip(spec: JobSpec) -> None:
    a = Assignment(job_id=11, attempt=6, spec=spec)
    assert wire.assignment_from_pb(over_the_wire(wire.assignment_to_pb(a))) == a


def test_lease_and_stat_round_trip() -> None:
    lease = Lease(job_id=3, attempt=2)
    assert wire.lease_from_pb(over_the_wire(wire.lease_to_pb(lease))) == lease
    stat = StatCount(queue="q", status=JobStatus.RUNNING, count=12)
    assert wire.stat_from_pb(over_the_wire(wire.stat_to_pb(stat))) == stat


def test_worker_round_trip_drops_only_the_session() -> None:
    w = WorkerInfo("w1", "host", 42, "secret-session", 4, ("a", "b"), WorkerState.BUSY, 2, 1.5, 9.5)
    back = wire.worker_from_pb(over_the_wire(wire.worker_to_pb(w)))
    assert back == WorkerInfo("w1", "host", 42, "", 4, ("a", "b"), WorkerState.BUSY, 2, 1.5, 9.5)


# ---- unknown enum values ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [pb.JOB_STATUS_UNSPECIFIED, 8, 99, -1])
def test_unknown_job_status_is_invalid_argument(value: int) -> None:
    with pytest.raises(errors.InvalidArgument, match="status"):
        wire.status_from_pb(value)
    with pytest.raises(errors.InvalidArgument):
        wire.job_from_pb(over_the_wire(pb.Job(id=1, status=value)))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [7, 42])
def test_unknown_outcome_is_invalid_argument(value: int) -> None:
    with pytest.raises(errors.InvalidArgument, match="outcome"):
        wire.outcome_from_pb(value)
    with pytest.raises(errors.InvalidArgument):
        wire.attempt_from_pb(over_the_wire(pb.Attempt(job_id=1, attempt=1, outcome=value)))  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument):
        wire.result_from_pb(over_the_wire(pb.Result(job_id=1, attempt=1, outcome=value)))  # type: ignore[arg-type]


def test_unknown_worker_state_is_invalid_argument() -> None:
    with pytest.raises(errors.InvalidArgument, match="worker state"):
        wire.worker_from_pb(pb.Worker(name="w", state="sleeping"))


def test_enum_tables_cover_every_domain_value() -> None:
    assert set(wire.STATUS_TO_PB) == set(JobStatus)
    assert set(wire.OUTCOME_TO_PB) == set(Outcome)
    assert len(set(wire.STATUS_TO_PB.values())) == len(JobStatus)
    assert len(set(wire.OUTCOME_TO_PB.values())) == len(Outcome)


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("INVALID_ARGUMENT", errors.InvalidArgument),
        ("NOT_FOUND", errors.NotFound),
        ("FAILED_PRECONDITION", errors.FailedPrecondition),
        ("UNAVAILABLE", errors.Unavailable),
        ("DEADLINE_EXCEEDED", errors.DeadlineExceeded),
        ("UNAUTHENTICATED", errors.Unauthenticated),
        ("PERMISSION_DENIED", errors.PermissionDenied),
        ("INTERNAL", errors.Internal),
    ],
)
def test_from_code_maps_codes_to_classes(code: str, cls: type[errors.DtsError]) -> None:
    err = errors.from_code(code, "the message")
    assert type(err) is cls
    assert str(err) == err.message == "the message"
    assert wire.status_code(err) is getattr(grpc.StatusCode, code)


@pytest.mark.parametrize("code", ["UNKNOWN", "ABORTED", "NO_SUCH_CODE", ""])
def test_from_code_falls_back_to_the_root_class(code: str) -> None:
    err = errors.from_code(code, "m")
    assert type(err) is errors.DtsError


@pytest.mark.parametrize(
    ("cls", "parent"),
    [
        (errors.QueueUnavailable, errors.Unavailable),
        (errors.UnknownSession, errors.FailedPrecondition),
        (errors.ShuttingDown, errors.Unavailable),
    ],
)
def test_subclasses_travel_as_their_parent(
    cls: type[errors.DtsError], parent: type[errors.DtsError]
) -> None:
    sent = cls("why")
    received = errors.from_code(sent.code, sent.message)
    assert type(received) is parent
    assert str(received) == "why"


def test_every_error_code_is_a_grpc_status() -> None:
    classes: list[type[errors.DtsError]] = [errors.DtsError, *errors.BY_CODE.values()]
    for cls in classes:
        assert isinstance(wire.status_code(cls("x")), grpc.StatusCode)


class FakeRpcError(grpc.RpcError):
    """What a failed call raises on the client side (a grpc.Call with code and details)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_error_from_rpc() -> None:
    e = wire.error_from_rpc(FakeRpcError(grpc.StatusCode.NOT_FOUND, "no job 5"), "h:1")
    assert type(e) is errors.NotFound and str(e) == "no job 5"
    e = wire.error_from_rpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "refused"), "h:1")
    assert type(e) is errors.Unavailable and "h:1" in str(e) and "refused" in str(e)
    e = wire.error_from_rpc(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, ""), "h:1")
    assert type(e) is errors.DeadlineExceeded and "h:1" in str(e)
    e = wire.error_from_rpc(FakeRpcError(grpc.StatusCode.ABORTED, ""), "h:1")
    assert type(e) is errors.DtsError and str(e)  # details fall back to the code's name


# ---- a lean submit answer with jobs found by their unique key ---------------------------------


def lean_answer(ids: list[int], found: list[Job]) -> pb.SubmitResponse:
    return over_the_wire(
        pb.SubmitResponse(
            ids=ids,
            created_at=50.0,
            default_retries=1,
            default_backoff=2.0,
            default_timeout=3.0,
            existing=[wire.job_to_pb(j) for j in found],
        )
    )


OLD = Job(
    id=7,
    spec=JobSpec(argv=("old",), max_retries=0, backoff=0, timeout=0, unique="k"),
    status=JobStatus.RUNNING,
    attempts=1,
    created_at=10.0,
    existing=True,
)


def test_a_lean_answer_gives_found_jobs_whole_and_rebuilds_the_made_ones() -> None:
    sent = [JobSpec(argv=("new",), unique="k"), JobSpec(argv=("plain",))]
    jobs = wire.submitted_jobs(sent, lean_answer([7, 8], [OLD]))
    assert jobs[0] == OLD  # the running job found, not the spec sent
    assert (jobs[1].id, jobs[1].spec.argv, jobs[1].existing) == (8, ("plain",), False)
    assert (jobs[1].status, jobs[1].created_at, jobs[1].max_retries) == (JobStatus.QUEUED, 50, 1)


def test_a_key_twice_in_one_lean_answer_reads_back_by_position() -> None:
    made = JobSpec(argv=("a",), unique="k")
    twice = [made, JobSpec(argv=("b",), unique="k")]
    # made by this submit at its first position, found at the second
    found = Job(id=9, spec=made, status=JobStatus.QUEUED, created_at=50.0, existing=True)
    first, second = wire.submitted_jobs(twice, lean_answer([9, 9], [found]))
    assert (first.id, first.existing, second.id, second.existing) == (9, False, 9, True)
    # there before: found at both
    first, second = wire.submitted_jobs(twice, lean_answer([7, 7], [OLD, OLD]))
    assert first == second == OLD


def test_a_queue_row_crosses_the_wire_with_its_limit_or_none() -> None:
    from dts.controls import QueueInfo

    limited = QueueInfo("q", 3, 2, 1, 0, True, 2, ("w1", "w2"))
    free = QueueInfo("r")
    for info in (limited, free):
        assert wire.queue_info_from_pb(wire.queue_info_to_pb(info)) == info
    assert not wire.queue_info_to_pb(free).HasField("limit")
