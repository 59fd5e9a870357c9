"""The job ledger the chaos tests' jobs write, and the checker that judges a run by it.

Every test job is a shell command that appends ``start <job> <attempt> <pid> <time>`` to a
ledger file when it starts and ``end <job> <attempt> <pid> <time>`` when its body finished
(short ``echo >> file`` lines are single O_APPEND writes, so concurrent jobs do not tear
them). Right after its `start` line a job looks for live processes of any other attempt of
the same job (by their DTS_JOB_ID and DTS_ATTEMPT, read from /proc/*/environ, so neither a
reused pid nor a zombie fools it) and appends ``overlap <job> <attempt> <pid> <time> <other>``
for each attempt it finds alive: the job itself witnesses two attempts running at once.

The ledger, written by the jobs, is the judge; `check()` decides from it and cross-checks the
server's records (status, attempts, the outcome of every attempt). It counts:

* lost                   a job expected to succeed with no `end` line (it never completed), or
                         one expected to fail that never started;
* duplicate completions  `end` lines of a job beyond its first, except completions of attempts
                         the server had given up on (superseded); one attempt ending twice
                         always counts;
* concurrent             two attempts of a job alive at once: witnessed by an `overlap` line,
                         or one attempt's start between another's start and end;
* rerun attempts         the same attempt (fencing token) started twice: never legitimate;
* superseded             `end` lines of attempts the server had given up on (lost, released,
                         cancelled): legitimate under at-least-once, their results refused;
* contradicted           the server's records say otherwise than the ledger: an `end` under
                         an attempt recorded failed, timed out or still running, or a final
                         status other than what the ledger shows (succeeded iff completed);
* phantom                an attempt the server recorded succeeded that never wrote `end`;
* unexpected             ledger lines of ids never submitted or attempts never handed out;
* inconsistent           server records that contradict themselves (attempts vs history);
* malformed              ledger lines that are not one whole entry (torn writes);
* duplicate starts       a job started more than once (at-least-once re-runs; informational);
* interrupted            attempts that started and never ended, by the server's outcome for
                         them (what the faults hit; informational).
"""

from __future__ import annotations

import shlex
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from itertools import combinations
from pathlib import Path
from typing import Protocol

from dts.domain import Attempt, Job, JobStatus, Outcome

GAVE_UP = (Outcome.LOST, Outcome.RELEASED, Outcome.CANCELLED)
KINDS = {"start": 5, "end": 5, "overlap": 6}  # kind -> number of fields
LEDGER_VAR = "CHAOS_LEDGER"  # the ledger's path, in the environment of its jobs


@dataclass(frozen=True)
class Entry:
    kind: str  # "start", "end" or "overlap"
    job: int
    attempt: int
    pid: int
    at: float  # wall clock (date +%s.%N)
    other: int = 0  # overlap: the attempt found alive


def parse(line: str) -> Entry | None:
    parts = line.split()
    if not parts or KINDS.get(parts[0]) != len(parts):
        return None
    try:
        job, attempt, pid, at = int(parts[1]), int(parts[2]), int(parts[3]), float(parts[4])
        other = int(parts[5]) if len(parts) == 6 else 0
    except ValueError:
        return None
    return Entry(parts[0], job, attempt, pid, at, other)


class Ledger:
    """The file every test job appends its start, witnessed overlaps and end to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    @property
    def _file(self) -> str:
        return shlex.quote(str(self.path))

    def _line(self, kind: str, *extra: str) -> str:
        fields = " ".join(['"$DTS_JOB_ID" "$DTS_ATTEMPT" $$ "$(date +%s.%N)"', *extra])
        return f"echo {kind} {fields} >> {self._file}"

    @property
    def env(self) -> tuple[tuple[str, str], ...]:
        """The environment every job of this ledger gets: it tells its processes apart from
        those of other clusters (whose job ids are the same small numbers)."""
        return ((LEDGER_VAR, str(self.path)),)

    def _witness(self) -> str:
        """Shell: an `overlap` line for every other attempt of this job with a live process.

        grep -z reads each environ as NUL-separated lines; a process gone between the glob and
        the read (or a zombie, whose environ is empty) does not match. A job started without
        the ledger's environment says so in a line the checker reports as malformed."""
        var = f"${LEDGER_VAR}"
        found = (
            f'grep -lzxF "{LEDGER_VAR}={var}" /proc/[0-9]*/environ 2>/dev/null'
            ' | xargs -r grep -lzxF "DTS_JOB_ID=$DTS_JOB_ID" 2>/dev/null'
            ' | xargs -r grep -hzox "DTS_ATTEMPT=[0-9]*" 2>/dev/null | tr "\\000" "\\n" | sort -u'
        )
        blind = f"echo blind: {LEDGER_VAR} is not set, no overlap witness >> {self._file}"
        line = self._line("overlap", '"$a"')
        return (
            f'{{ [ "{var}" = {self._file} ] || {blind}; }}; '
            f"for a in $({found}); do a=${{a#DTS_ATTEMPT=}}; "
            f'[ "$a" = "$DTS_ATTEMPT" ] || {line}; done'
        )

    def command(self, body: str) -> str:
        """A shell job: `start` line, overlap witness, then `body`, then (if body did not
        exit) an `end` line."""
        return f"{self._line('start')}; {self._witness()}; {body}; {self._line('end')}"

    def sleeper(self, seconds: float) -> str:
        return self.command(f"sleep {seconds:g}")

    def entries(self) -> list[Entry]:
        return [e for e in map(parse, self.path.read_text().splitlines()) if e is not None]

    def malformed(self) -> list[str]:
        """Lines that are not a whole entry (a torn or interleaved write)."""
        return [line for line in self.path.read_text().splitlines() if parse(line) is None]

    def _of(self, kind: str, job: int | None) -> list[Entry]:
        return [e for e in self.entries() if e.kind == kind and job in (None, e.job)]

    def starts(self, job: int | None = None) -> list[Entry]:
        return self._of("start", job)

    def ends(self, job: int | None = None) -> list[Entry]:
        return self._of("end", job)

    def overlaps(self, job: int | None = None) -> list[Entry]:
        return self._of("overlap", job)

    def start_of(self, job: int, attempt: int) -> Entry | None:
        return next((e for e in self.starts(job) if e.attempt == attempt), None)


# ---- the checker --------------------------------------------------------------------------------


class ServerView(Protocol):
    """What the checker asks the server (dts.client.Client, or a fake in unit tests)."""

    def get(self, job_id: int) -> Job: ...

    def history(self, job_id: int) -> list[Attempt]: ...


@dataclass
class Verdict:
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    unfinished: int = 0
    lost: int = 0
    duplicate_completions: int = 0
    concurrent: int = 0
    rerun_attempts: int = 0
    superseded: int = 0
    contradicted: int = 0
    phantom: int = 0
    unexpected: int = 0
    inconsistent: int = 0
    malformed: int = 0
    duplicate_starts: int = 0
    attempts: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    interrupted: Counter[str] = field(default_factory=Counter)
    concurrent_pairs: list[tuple[int, int, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        keys = [f.name for f in fields(self) if f.type == "int"]
        counts = " ".join(f"{k}={getattr(self, k)}" for k in keys)

        def show(c: Counter[str]) -> str:
            return ",".join(f"{k}:{v}" for k, v in sorted(c.items()))

        return (
            f"ledger check: {counts} outcomes[{show(self.outcomes)}]"
            f" interrupted[{show(self.interrupted)}]"
        )

    def __str__(self) -> str:
        shown = self.problems[:20]
        more = f"\n  ... {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        return self.summary() + "".join(f"\n  {p}" for p in shown) + more

    def problem(self, counter: str, text: str, n: int = 1) -> None:
        setattr(self, counter, getattr(self, counter) + n)
        self.problems.append(text)

    def assert_safe(
        self, *, allow_duplicate_starts: bool = True, allow_concurrent: bool = False
    ) -> None:
        """Nothing lost, nothing completed twice, no two attempts at once, nothing that nobody
        asked for, and the server's records agree with what the jobs wrote."""
        assert self.lost == 0, f"lost jobs: {self}"
        assert self.duplicate_completions == 0, f"duplicate completions: {self}"
        assert self.rerun_attempts == 0, f"an attempt ran twice: {self}"
        if not allow_concurrent:
            assert self.concurrent == 0, f"two attempts ran at once: {self}"
        assert self.contradicted == 0, f"the server contradicts the ledger: {self}"
        assert self.unexpected == 0, f"unexpected executions: {self}"
        assert self.phantom == 0, f"success without a completed run: {self}"
        assert self.inconsistent == 0, f"server records disagree: {self}"
        assert self.malformed == 0, f"torn ledger lines: {self}"
        if not allow_duplicate_starts:
            assert self.duplicate_starts == 0, f"jobs started more than once: {self}"


@dataclass
class JobLines:
    """One job's ledger lines."""

    starts: list[Entry] = field(default_factory=list)
    ends: list[Entry] = field(default_factory=list)
    overlaps: list[Entry] = field(default_factory=list)


def check(
    server: ServerView,
    ledger: Ledger,
    submitted: Iterable[int],
    expect_failed: Iterable[int] = (),
) -> Verdict:
    """Judge every submitted job by the ledger, then cross-check the server (module doc)."""
    ids = sorted(set(submitted))
    should_fail = set(expect_failed)
    v = Verdict(submitted=len(ids))
    for line in ledger.malformed():
        v.problem("malformed", f"ledger line not a whole entry: {line!r}")
    lines: dict[int, JobLines] = defaultdict(JobLines)
    for e in ledger.entries():
        getattr(lines[e.job], f"{e.kind}s").append(e)
    for job_id in sorted(set(lines) - set(ids)):
        v.problem("unexpected", f"job {job_id}: in the ledger but never submitted")
    for job_id in ids:
        mine, job = lines.get(job_id, JobLines()), server.get(job_id)
        judge(v, job, mine, job_id in should_fail)
        cross_check(v, job_id, mine, job_id in should_fail, job, server.history(job_id))
    return v


def judge(v: Verdict, job: Job, mine: JobLines, should_fail: bool) -> None:
    """What the ledger alone says about one job (`job`, the server's record, only to say
    what the server made of a lost one)."""
    job_id = job.id
    server = f"server: {job.status} after {job.attempts} attempt(s) ({job.error or 'no error'})"
    if should_fail and not mine.starts:
        v.problem("lost", f"job {job_id}: LOST: expected to fail, never started; {server}")
    elif not should_fail and not mine.ends:
        began = len(mine.starts)
        v.problem("lost", f"job {job_id}: LOST: no attempt completed ({began} began); {server}")
    v.duplicate_starts += max(0, len(mine.starts) - 1)
    for n, count in sorted(Counter(e.attempt for e in mine.starts).items()):
        if count > 1:
            v.problem("rerun_attempts", f"job {job_id}: attempt {n} began {count} times", count - 1)
    for n, count in sorted(Counter(e.attempt for e in mine.ends).items()):
        if count > 1:
            text = f"job {job_id}: attempt {n} ended {count} times"
            v.problem("duplicate_completions", text, count - 1)
    pairs = {tuple(sorted((o.attempt, o.other))) for o in mine.overlaps}
    ended = {e.attempt: e.at for e in mine.ends}
    for a, b in combinations(sorted(mine.starts, key=lambda e: e.at), 2):
        if a.attempt != b.attempt and a.attempt in ended and a.at <= b.at < ended[a.attempt]:
            pairs.add(tuple(sorted((a.attempt, b.attempt))))
    for first, second in sorted(pairs):
        v.concurrent_pairs.append((job_id, first, second))
        v.problem("concurrent", f"job {job_id}: attempts {first} and {second} ran at once")


def cross_check(
    v: Verdict, job_id: int, mine: JobLines, should_fail: bool, job: Job, history: list[Attempt]
) -> None:
    """The server's records of one job against its ledger lines."""
    outcome = {a.attempt: a.outcome for a in history}
    v.attempts += len(history)
    v.outcomes.update(a.outcome.value for a in history)
    status = job.status
    final = status.value if status.final else "unfinished"
    setattr(v, final, getattr(v, final) + 1)
    # the server's records among themselves
    if [a.attempt for a in history] != list(range(1, job.attempts + 1)):
        v.problem("inconsistent", f"job {job_id}: attempts={job.attempts} but history {history}")
    wins = [a.attempt for a in history if a.outcome is Outcome.SUCCEEDED]
    if len(wins) > 1 or (status is JobStatus.SUCCEEDED and wins != [job.attempts]):
        v.problem("inconsistent", f"job {job_id}: {status} with succeeded attempts {wins}")
    # the ledger's attempts against the server's
    for n in sorted({e.attempt for e in mine.starts + mine.ends + mine.overlaps} - set(outcome)):
        v.problem("unexpected", f"job {job_id}: attempt {n} ran but the server never gave it out")
    kept = 0  # completions the server did not give up on
    for e in mine.ends:
        got = outcome.get(e.attempt)
        if got in GAVE_UP:
            v.superseded += 1
            continue
        kept += 1
        if got in (Outcome.FAILED, Outcome.TIMED_OUT, Outcome.RUNNING):
            text = f"job {job_id}: attempt {e.attempt} ended, server says {got}"
            v.problem("contradicted", text)
    if kept > 1:
        v.problem("duplicate_completions", f"job {job_id}: {kept} accepted completions", kept - 1)
    ended = {e.attempt for e in mine.ends}
    for n in wins:
        if n not in ended:
            v.problem("phantom", f"job {job_id}: attempt {n} succeeded with no `end`")
    for n in sorted({e.attempt for e in mine.starts} - ended):
        if n in outcome:
            v.interrupted[outcome[n].value] += 1
    # the final status: succeeded if the ledger shows a completion, else failed (if the job
    # was expected to fail; one expected to succeed without a completion is lost already)
    if mine.ends and status is not JobStatus.SUCCEEDED:
        v.problem("contradicted", f"job {job_id}: completed in the ledger, server says {status}")
    elif not mine.ends and should_fail and status is not JobStatus.FAILED:
        v.problem("contradicted", f"job {job_id}: never completed, server says {status}")
