"""Bad input thrown at a real dts-server as raw gRPC messages: every answer is a proper status
(never INTERNAL or UNKNOWN), the server keeps serving, and the stored history stays intact."""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, settings
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
def server(tmp_path_factory: pytest.TempPathFactory, dts_store: object) -> Iterator[Cluster]:
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
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(specs, min_size=0, max_size=3))
def test_a_submit_of_any_shape_gets_a_proper_answer(
    stubs: tuple[Any, Any], batch: list[pb.JobSpec]
) -> None:
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


# ---- the rules of a job spec, stated here on their own (not by calling dts.domain) ----------
#
# A submit is refused with INVALID_ARGUMENT naming the first job that breaks a rule ("job N: "
# before the message when the batch has more than one) and what it breaks; a batch whose
# every job keeps the rules is stored whole, as sent:
#   command     a first word that is not blank; a shell job exactly one string; at most
#               128 KiB (UTF-8, plus one byte an argument); no NUL byte
#   queue       empty (the default queue), or 1-64 of A-Z a-z 0-9 _ . -
#   priority    0..9           retries   unset, or 0..1000
#   backoff, timeout  unset, or 0..10 years of seconds (NaN and infinities refused)
#   delay       0..10 years of seconds
#   env         at most 256 variables; a name not empty, without '=' or NUL; a value without
#               NUL; names and values at most 128 KiB together (UTF-8, plus 2 bytes each)
#   cwd         no NUL byte, at most 4096 bytes (UTF-8)
#   name        at most 200 characters
#   limits      each 0..2^62

KIB128 = 128 * 1024
TEN_YEARS = 10 * 365 * 86400.0
LIMIT_MAX = 1 << 62
QUEUE_CHARS = string.ascii_letters + string.digits + "_.-"
LARGEST_ENV = {"K": "v" * (KIB128 - 3)}  # 1 + 131069 + 2 bytes: the most there may be
LIMIT_FIELDS = {
    "cpu": "cpu_seconds",
    "memory": "memory_bytes",
    "files": "open_files",
    "processes": "processes",
    "output": "output_bytes",
}

chars = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\0")
clean = st.text(chars, max_size=30)
word = st.text(chars, min_size=1, max_size=30).filter(str.strip)
env_name = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\0="),
    min_size=1,
    max_size=20,
)
seconds = st.one_of(st.floats(min_value=0, max_value=TEN_YEARS), st.sampled_from([0.0, TEN_YEARS]))
far = st.one_of(st.floats(min_value=TEN_YEARS / 10, max_value=TEN_YEARS), st.just(TEN_YEARS))
limit = st.one_of(st.integers(0, LIMIT_MAX), st.sampled_from([0, 1, LIMIT_MAX]))


@st.composite
def good_spec(draw: st.DrawFn) -> pb.JobSpec:
    """A job spec that keeps every rule, boundaries included (delayed years: nothing runs)."""
    shell = draw(st.booleans())
    argv = [draw(word)] if shell else [draw(word), *draw(st.lists(clean, max_size=3))]
    if draw(st.integers(0, 9)) == 0:  # the longest command there may be
        argv = ["x" * (KIB128 - 1)]
    spec = pb.JobSpec(
        argv=argv,
        shell=shell,
        queue=draw(st.one_of(st.just(""), st.text(QUEUE_CHARS, min_size=1, max_size=64))),
        priority=draw(st.integers(0, 9)),
        delay=draw(far),
        env=draw(st.one_of(st.dictionaries(env_name, clean, max_size=4), st.just(LARGEST_ENV))),
        cwd=draw(st.one_of(clean, st.just("é" * 2048))),  # 4096 bytes
        name=draw(st.one_of(clean, st.just("ü" * 200))),
    )
    if draw(st.booleans()):
        spec.max_retries = draw(st.integers(0, 1000))
    for field in ("backoff", "timeout"):
        if draw(st.booleans()):
            setattr(spec, field, draw(seconds))
    if draw(st.booleans()):
        spec.limits.CopyFrom(pb.Limits(**{f: draw(limit) for f in LIMIT_FIELDS.values()}))
    return spec


bad_seconds = st.one_of(
    st.floats(max_value=-1e-300),
    st.floats(min_value=TEN_YEARS, exclude_min=True),
    st.sampled_from([math.nan, -math.inf, math.inf, -1.0, math.nextafter(TEN_YEARS, math.inf)]),
)
bad_int32 = {  # (values outside the range, the range's words)
    "priority": (
        st.one_of(st.integers(-(2**31), -1), st.integers(10, 2**31 - 1)),
        "priority must be between 0 and 9",
    ),
    "max_retries": (
        st.one_of(st.integers(-(2**31), -1), st.integers(1001, 2**31 - 1)),
        "retries must be between 0 and 1000",
    ),
}
bad_limit = st.one_of(st.integers(-(2**63), -1), st.integers(LIMIT_MAX + 1, 2**63 - 1))


@st.composite
def bad_spec(draw: st.DrawFn, rule: str) -> pb.JobSpec:
    """A good spec with one rule broken."""
    spec = draw(good_spec())
    if rule == "command empty":
        del spec.argv[:]
    elif rule == "command blank":
        spec.argv[0] = draw(st.sampled_from([" ", "\t", " \n "]))
    elif rule == "shell command of two strings":
        spec.shell = True
        spec.argv[:] = [draw(word), draw(clean)]
    elif rule == "command with NUL":
        spec.argv[:] = [draw(word), *([] if spec.shell else draw(st.lists(clean, max_size=2)))]
        spec.argv[-1] += "\0"
    elif rule == "command too long":
        spec.argv[:] = ["x" * KIB128]
    elif rule == "queue":
        spec.queue = draw(
            st.one_of(
                st.text(QUEUE_CHARS, min_size=65, max_size=80),
                st.tuples(
                    st.text(QUEUE_CHARS, max_size=5), st.sampled_from([" ", "/", "é", "!", ":"])
                ).map("".join),
            )
        )
    elif rule in bad_int32:
        setattr(spec, rule, draw(bad_int32[rule][0]))
    elif rule in ("backoff", "timeout", "delay"):
        setattr(spec, rule, draw(bad_seconds))
    elif rule == "env name":
        spec.env[draw(st.sampled_from(["", "A=B", "A\0B"]))] = "v"
    elif rule == "env value with NUL":
        spec.env["BAD"] = "a\0b"
    elif rule == "env of 257":
        spec.env.clear()
        spec.env.update({f"V{i}": "" for i in range(257)})
    elif rule == "env too large":
        spec.env.clear()
        spec.env["K"] = "v" * (KIB128 - 2)  # 1 + 131070 + 2: one byte over
    elif rule == "cwd with NUL":
        spec.cwd = "/tmp\0x"
    elif rule == "cwd too long":
        spec.cwd = draw(st.sampled_from(["a" * 4097, "é" * 2049]))
    elif rule == "name too long":
        spec.name = draw(st.sampled_from(["n" * 201, "ü" * 201]))
    else:  # a limit
        name = rule.removeprefix("limit ")
        setattr(spec.limits, LIMIT_FIELDS[name], draw(bad_limit))
    return spec


REFUSALS = {  # each rule broken, and the words its refusal must contain
    "command empty": "command must not be empty",
    "command blank": "command must not be empty",
    "shell command of two strings": "a shell job takes its command as one string",
    "command with NUL": "command must not contain NUL bytes",
    "command too long": f"command is longer than {KIB128} bytes",
    "queue": "queue name must be 1-64 characters",
    "priority": bad_int32["priority"][1],
    "max_retries": bad_int32["max_retries"][1],
    "backoff": "backoff must be between 0 and",
    "timeout": "timeout must be between 0 and",
    "delay": "delay must be between 0 and",
    "env name": "invalid environment variable name",
    "env value with NUL": "environment variable BAD must not contain NUL bytes",
    "env of 257": "at most 256 environment variables",
    "env too large": f"environment is larger than {KIB128} bytes",
    "cwd with NUL": "cwd must not contain NUL bytes",
    "cwd too long": "cwd is longer than 4096 bytes",
    "name too long": "name is longer than 200 characters",
    **{f"limit {n}": f"limit {n} must be between 0 and {LIMIT_MAX}" for n in LIMIT_FIELDS},
}


@pytest.fixture(scope="module")
def rules_server(tmp_path_factory: pytest.TempPathFactory, dts_store: object) -> Iterator[Any]:
    """A server of its own (no worker: the jobs are years ahead anyway), so the big jobs
    stored here do not swell the other tests' listings."""
    c = make_cluster(tmp_path_factory.mktemp("rules"), 0)
    channel = grpc.insecure_channel(c.server.address)
    yield pb_grpc.SchedulerStub(channel)
    channel.close()
    c.stop()


def total_jobs(sched: Any) -> int:
    return sum(c.count for c in sched.GetStats(pb.StatsRequest(), timeout=10).counts)


def kept(sent: pb.JobSpec, stored: pb.JobSpec) -> None:
    """A stored job keeps what was sent (an empty queue is the default one; unset options
    are the server's defaults)."""

    def fields(s: pb.JobSpec, queue: str) -> tuple[object, ...]:
        limits = tuple(getattr(s.limits, f) for f in LIMIT_FIELDS.values())
        return (list(s.argv), s.shell, queue, s.priority, dict(s.env), s.cwd, s.name, limits)

    assert fields(stored, stored.queue) == fields(sent, sent.queue or "default")
    for option in ("max_retries", "backoff", "timeout"):
        if sent.HasField(option):
            assert getattr(stored, option) == getattr(sent, option), option


def submit(sched: Any, specs: list[pb.JobSpec]) -> tuple[grpc.StatusCode, str, list[int]]:
    try:
        resp = sched.Submit(pb.SubmitRequest(jobs=specs), timeout=30)
    except grpc.RpcError as e:
        return e.code(), e.details() or "", []
    return grpc.StatusCode.OK, "", [j.id for j in resp.jobs]


RULE_SETTINGS = settings(
    max_examples=8,
    deadline=None,
    # no shrinking: it takes minutes on examples of 128 KiB strings, and a failure names its
    # rule and the answer it got anyway
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@pytest.mark.parametrize("rule", list(REFUSALS))
@RULE_SETTINGS
@given(data=st.data())
def test_a_job_that_breaks_a_rule_is_refused_naming_it(
    rules_server: Any, rule: str, data: st.DataObject
) -> None:
    """A batch of good jobs, one that breaks `rule`, then maybe more (good or not): refused
    with INVALID_ARGUMENT naming that job and the rule, one line; nothing of it stored."""
    sched = rules_server
    before_it = data.draw(st.lists(good_spec(), max_size=2), label="good jobs before")
    broken = data.draw(bad_spec(rule), label="the job that breaks the rule")
    later = st.one_of(good_spec(), st.sampled_from(list(REFUSALS)).flatmap(bad_spec))
    after_it = data.draw(st.lists(later, max_size=1), label="jobs after")
    batch = [*before_it, broken, *after_it]
    stored = total_jobs(sched)
    code, details, _ = submit(sched, batch)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    prefix = f"job {len(before_it) + 1}: " if len(batch) > 1 else ""
    assert details.startswith(prefix) and REFUSALS[rule] in details, details
    assert "\n" not in details and "Traceback" not in details
    assert total_jobs(sched) == stored, "a refused batch stored jobs"


@settings(RULE_SETTINGS, max_examples=60)
@given(batch=st.lists(good_spec(), min_size=1, max_size=3))
def test_a_batch_that_keeps_every_rule_is_stored_as_sent(
    rules_server: Any, batch: list[pb.JobSpec]
) -> None:
    """Boundaries included (a command of 128 KiB, 64-character queues, priority 9, 10 years,
    limits of 2^62, a 4096-byte cwd, 200-character names, the largest environment)."""
    sched = rules_server
    stored = total_jobs(sched)
    code, details, ids = submit(sched, batch)
    assert code is grpc.StatusCode.OK, (code, details)
    assert len(ids) == len(batch) and total_jobs(sched) == stored + len(batch)
    for job_id, spec in zip(ids, batch, strict=True):
        kept(spec, sched.GetJob(pb.JobRef(id=job_id), timeout=10).spec)


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
            lambda: s.ListJobs(
                pb.ListJobsRequest(before_id=job_id, since=timeout, until=-timeout), timeout=10
            ),
            lambda: s.GetActivity(pb.ActivityRequest(minutes=attempt), timeout=10),
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
