"""Domain types of dts: jobs, attempts, workers, statuses and the allowed status transitions.

Pure data and rules: nothing here imports gRPC, Redis or SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from dts.errors import InvalidArgument
from dts.limits import LIMIT_NAMES, NO_LIMITS, Limits

DEFAULT_QUEUE: Final = "default"
MIN_PRIORITY: Final = 0
MAX_PRIORITY: Final = 9

# Exit codes of an attempt that did not exit on its own (shell conventions).
EXIT_TIMED_OUT: Final = 124
EXIT_CANNOT_RUN: Final = 127
EXIT_SIGNAL_BASE: Final = 128


class JobStatus(StrEnum):
    """Where a job is in its life; the final ones are succeeded, failed and cancelled."""

    WAITING = "waiting"  # for the jobs it depends on (README "Dependencies and workflows")
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES: Final = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Outcome(StrEnum):
    """How one attempt ended (RUNNING while it has not)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    LOST = "lost"
    CANCELLED = "cancelled"
    RELEASED = "released"


S = JobStatus
# Every allowed status change, and why it happens. Anything else is a bug or a stale request.
TRANSITIONS: Final[frozenset[tuple[JobStatus, JobStatus]]] = frozenset(
    {
        (S.SCHEDULED, S.QUEUED),  # its start time or retry backoff has passed
        (S.SCHEDULED, S.CANCELLED),  # cancelled before it was due
        (S.QUEUED, S.RUNNING),  # a worker claimed it (compare-and-set, new attempt)
        (S.QUEUED, S.CANCELLED),  # cancelled while waiting in the queue
        (S.RUNNING, S.SUCCEEDED),  # the attempt exited 0
        (S.RUNNING, S.FAILED),  # the attempt failed and the retry budget is spent
        (S.RUNNING, S.SCHEDULED),  # the attempt failed; a retry waits out its backoff
        (S.RUNNING, S.QUEUED),  # the worker was lost or handed the job back: run it again now
        (S.RUNNING, S.CANCELLED),  # cancelled while running; the worker kills it
        (S.FAILED, S.QUEUED),  # a user asked for a retry
        (S.CANCELLED, S.QUEUED),  # a user asked for a retry
        (S.WAITING, S.QUEUED),  # the jobs it depends on are done as it asked
        (S.WAITING, S.SCHEDULED),  # the same, with its --delay still ahead
        (S.WAITING, S.CANCELLED),  # a dependency failed or was cancelled, or a user cancelled it
        (S.FAILED, S.WAITING),  # a user asked for a retry; its dependencies are not all done
        (S.CANCELLED, S.WAITING),  # the same
    }
)


def can_transition(old: JobStatus, new: JobStatus) -> bool:
    """Whether a job may move from `old` to `new`."""
    return (old, new) in TRANSITIONS


@dataclass(frozen=True)
class JobSpec:
    """What to run and how: the part of a job a client chooses."""

    argv: tuple[str, ...]
    shell: bool = False
    queue: str = DEFAULT_QUEUE
    priority: int = MIN_PRIORITY
    max_retries: int | None = None  # None: the server's default
    backoff: float | None = None  # None: the server's default
    timeout: float | None = None  # None: the server's default; 0: no timeout
    delay: float = 0.0
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    name: str = ""
    limits: Limits = NO_LIMITS
    # while a job of this queue with this key is not final, a submit with it gets that job
    # instead of a new one ('' for none; see README "Unique jobs")
    unique: str = ""
    # ids of jobs this one runs after: once they succeeded (after), once they are final
    # (after_finished); steps and steps_finished do the same for jobs of the same submit, by
    # their index in it (a workflow). Only in a submit: a stored job's are in its waits_for.
    after: tuple[int, ...] = ()
    after_finished: tuple[int, ...] = ()
    steps: tuple[int, ...] = ()
    steps_finished: tuple[int, ...] = ()

    @property
    def waits(self) -> bool:
        """Whether a job of this spec depends on others (it is made waiting)."""
        return bool(self.after or self.after_finished or self.steps or self.steps_finished)

    def with_defaults(self, max_retries: int, backoff: float, timeout: float) -> JobSpec:
        """This spec with every unset option taken from the server's defaults."""
        if self.max_retries is not None and self.backoff is not None and self.timeout is not None:
            return self
        # a direct construction: dataclasses.replace costs several times more, once per job
        return JobSpec(
            self.argv,
            self.shell,
            self.queue,
            self.priority,
            self.max_retries if self.max_retries is not None else max_retries,
            self.backoff if self.backoff is not None else backoff,
            self.timeout if self.timeout is not None else timeout,
            self.delay,
            self.env,
            self.cwd,
            self.name,
            self.limits,
            self.unique,
            self.after,
            self.after_finished,
            self.steps,
            self.steps_finished,
        )

    @property
    def display(self) -> str:
        """The command as a user would type it."""
        if self.shell:
            return self.argv[0] if self.argv else ""
        return " ".join(_shell_quote(a) for a in self.argv)


def _shell_quote(arg: str) -> str:
    safe = arg and all(c.isalnum() or c in "@%+=:,./-_" for c in arg)
    return arg if safe else "'" + arg.replace("'", "'\"'\"'") + "'"


@dataclass(frozen=True)
class Job:
    """A job and its current state, as stored by the server."""

    id: int
    spec: JobSpec
    status: JobStatus
    attempts: int = 0
    exit_code: int | None = None
    error: str = ""
    worker: str = ""
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    run_at: float | None = None
    failures: int = 0  # failed attempts since submit or the last manual retry
    lost: int = 0  # attempts lost with their worker since submit or the last manual retry
    lease_expires_at: float | None = None  # while running: when the attempt is presumed lost
    # only in a submit's answer: the job was there already (its unique key), not made for it
    existing: bool = False
    schedule: str = ""  # the schedule that made it ('' for a submitted job)
    due_at: float | None = None  # the due time it was made for (None: run by hand)
    # only in a status answer: the jobs it depends on, and the jobs that depend on it
    waits_for: tuple[Dependency, ...] = ()
    waited_by: tuple[Dependency, ...] = ()

    @property
    def max_retries(self) -> int:
        return self.spec.max_retries or 0


@dataclass(frozen=True)
class Dependency:
    """One edge of a job's dependencies as a status shows it: the other job, its status (None:
    deleted by retention) and whether the edge asks for success or only for an end."""

    job_id: int
    status: JobStatus | None
    finished: bool = False  # --after-finished: any final status will do


def initial_state(spec: JobSpec, now: float) -> tuple[JobStatus, float | None]:
    """The status and run_at a submit at `now` gives a job of `spec`: waiting when it depends
    on other jobs (its run_at then keeps its delay), scheduled for its delay if it has one,
    else queued."""
    if spec.waits:
        return JobStatus.WAITING, now + spec.delay if spec.delay > 0 else None
    if spec.delay > 0:
        return JobStatus.SCHEDULED, now + spec.delay
    return JobStatus.QUEUED, None


def submitted_job(job_id: int, spec: JobSpec, now: float) -> Job:
    """A job as a submit at `now` creates it (`initial_state`). The server stores it so; a
    client rebuilds it so from a lean submit answer."""
    status, run_at = initial_state(spec, now)
    return Job(id=job_id, spec=spec, status=status, created_at=now, run_at=run_at)


@dataclass(frozen=True)
class Attempt:
    """One execution of a job; `attempt` is its fencing token."""

    job_id: int
    attempt: int
    worker: str
    started_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    outcome: Outcome = Outcome.RUNNING
    error: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    # the command's own start and end by the worker's clock; None if no worker ran it
    ran_from: float | None = None
    ran_until: float | None = None


@dataclass(frozen=True)
class Output:
    """Captured output of one attempt."""

    attempt: int
    stdout: bytes = b""
    stderr: bytes = b""


AttemptKey = tuple[int, int]  # (job id, attempt): one attempt of one job, a fencing token


@dataclass(frozen=True)
class Result:
    """The end of an attempt as a worker reports it."""

    job_id: int
    attempt: int
    outcome: Outcome
    exit_code: int | None = None
    error: str = ""
    stdout: bytes = b""
    stderr: bytes = b""
    started_at: float = 0.0  # the command's start by the worker's clock; 0: it never ran
    finished_at: float = 0.0

    @property
    def ran(self) -> tuple[float | None, float | None]:
        """When the command ran by the worker's clock, (from, until); None where unknown."""
        if not self.started_at:
            return None, None
        return self.started_at, self.finished_at or None


@dataclass(frozen=True)
class Lease:
    """A job a worker holds: the job id and the attempt (fencing token) it runs."""

    job_id: int
    attempt: int


@dataclass(frozen=True)
class Assignment:
    """A claimed job handed to a worker to run."""

    job_id: int
    attempt: int
    spec: JobSpec
    ready_at: float = 0.0  # when the job was due (created plus its delay): for the metrics only


class WorkerState(StrEnum):
    """What a registered worker is doing, as far as the server knows."""

    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    LOST = "lost"
    STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerInfo:
    """A worker's registration and liveness."""

    name: str
    host: str
    pid: int
    session: str
    concurrency: int
    queues: tuple[str, ...]
    state: WorkerState
    running: int
    registered_at: float
    last_heartbeat: float
    # what it registered with: a non-secret name of its token ('' without tokens), so that
    # another token cannot take over the name while this worker is alive
    credential: str = ""
    server: str = ""  # the address of the server it last talked to ('' before schema 4)


@dataclass(frozen=True)
class StatCount:
    """Number of jobs in one (queue, status) pair."""

    queue: str
    status: JobStatus
    count: int


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing wants."""

    status: JobStatus | None = None
    queue: str | None = None
    limit: int = 50
    name: str | None = None
    before_id: int | None = None  # keyset paging: only ids below this one
    since: float | None = None  # submitted at or after (Unix time)
    until: float | None = None  # submitted before


@dataclass(frozen=True)
class ActivityBucket:
    """How many jobs finished in one minute (starting at `start`), by final status."""

    start: float
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


def exit_code_for_signal(signum: int) -> int:
    """The shell's exit code for a process killed by `signum`."""
    return EXIT_SIGNAL_BASE + signum


# ---- validation (the server checks every request; the CLI checks early for a nicer message) ----

MAX_RETRIES: Final = 1000
MAX_SECONDS: Final = 10 * 365 * 86400.0
MAX_COMMAND_BYTES: Final = 128 * 1024
MAX_NAME_CHARS: Final = 200
MAX_ENV_ENTRIES: Final = 256
MAX_HOST_CHARS: Final = 255  # a worker's host name
MAX_CONCURRENCY: Final = 10_000  # slots of one worker
MAX_WORKER_QUEUES: Final = 64  # queues one worker takes jobs from
MAX_ENV_BYTES: Final = 128 * 1024  # all names and values of one job's environment
MAX_CWD_BYTES: Final = 4096
MAX_LIMIT: Final = 1 << 62  # any resource limit (a 64-bit rlim_t with room to spare)
QUEUE_NAME_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
)


MAX_SUBMIT_KEY_CHARS = 128
MAX_UNIQUE_CHARS: Final = 200


def validate_unique(key: str) -> None:
    """A job's unique key: '' (none), or up to MAX_UNIQUE_CHARS printable characters, not
    all blank."""
    if not key:
        return
    if len(key) > MAX_UNIQUE_CHARS:
        raise InvalidArgument(f"unique key is longer than {MAX_UNIQUE_CHARS} characters")
    if not key.isprintable() or not key.strip():
        raise InvalidArgument(f"unique key must be printable characters, not blank: {key!r}")


def validate_submit_key(key: str) -> None:
    """A submit's key (the client's name for it, so that a retry is not stored twice): empty
    (none), or up to MAX_SUBMIT_KEY_CHARS printable ASCII characters."""
    if len(key) > MAX_SUBMIT_KEY_CHARS or not (key.isascii() and key.isprintable()):
        raise InvalidArgument(
            f"a submit key is at most {MAX_SUBMIT_KEY_CHARS} printable ASCII characters"
        )


def validate_queue_name(queue: str) -> None:
    if not queue or len(queue) > 64 or not set(queue) <= QUEUE_NAME_CHARS:
        raise InvalidArgument(
            f"queue name must be 1-64 characters of letters, digits, '_', '.', '-': {queue!r}"
        )


def validate_seconds(what: str, value: float | None) -> None:
    if value is None:
        return
    if not 0 <= value <= MAX_SECONDS:  # also rejects NaN
        raise InvalidArgument(
            f"{what} must be between 0 and {MAX_SECONDS:.0f} seconds, got {value}"
        )


def validate_spec(spec: JobSpec) -> None:
    """Raise InvalidArgument naming the first thing wrong with `spec`."""
    if not spec.argv or not spec.argv[0].strip():
        raise InvalidArgument("command must not be empty")
    if spec.shell and len(spec.argv) != 1:
        raise InvalidArgument("a shell job takes its command as one string")
    if sum(len(a.encode("utf-8", "surrogatepass")) + 1 for a in spec.argv) > MAX_COMMAND_BYTES:
        raise InvalidArgument(f"command is longer than {MAX_COMMAND_BYTES} bytes")
    if any("\0" in a for a in spec.argv):
        raise InvalidArgument("command must not contain NUL bytes")
    validate_queue_name(spec.queue)
    if not MIN_PRIORITY <= spec.priority <= MAX_PRIORITY:
        raise InvalidArgument(
            f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {spec.priority}"
        )
    if spec.max_retries is not None and not 0 <= spec.max_retries <= MAX_RETRIES:
        raise InvalidArgument(
            f"retries must be between 0 and {MAX_RETRIES}, got {spec.max_retries}"
        )
    validate_seconds("backoff", spec.backoff)
    validate_seconds("timeout", spec.timeout)
    validate_seconds("delay", spec.delay)
    if len(spec.env) > MAX_ENV_ENTRIES:
        raise InvalidArgument(f"at most {MAX_ENV_ENTRIES} environment variables")
    for key, value in spec.env:
        if not key or "=" in key or "\0" in key:
            raise InvalidArgument(f"invalid environment variable name {key!r}")
        if "\0" in value:
            raise InvalidArgument(f"environment variable {key} must not contain NUL bytes")
    env_bytes = sum(_utf8_len(k) + _utf8_len(v) + 2 for k, v in spec.env)
    if env_bytes > MAX_ENV_BYTES:
        raise InvalidArgument(f"environment is larger than {MAX_ENV_BYTES} bytes")
    if "\0" in spec.cwd:
        raise InvalidArgument("cwd must not contain NUL bytes")
    if _utf8_len(spec.cwd) > MAX_CWD_BYTES:
        raise InvalidArgument(f"cwd is longer than {MAX_CWD_BYTES} bytes")
    if len(spec.name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"name is longer than {MAX_NAME_CHARS} characters")
    validate_limits(spec.limits)
    validate_unique(spec.unique)


def validate_limits(limits: Limits) -> None:
    """Raise InvalidArgument naming the first limit out of range."""
    if limits == NO_LIMITS:
        return
    for name, value in zip(LIMIT_NAMES, limits.values, strict=True):
        if not 0 <= value <= MAX_LIMIT:
            raise InvalidArgument(f"limit {name} must be between 0 and {MAX_LIMIT}, got {value}")


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
