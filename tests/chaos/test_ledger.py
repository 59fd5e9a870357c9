"""The ledger checker judges by what the jobs wrote: hand-made ledgers against a fake server's
records, and the jobs' overlap witness run for real in /bin/sh."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from dts.domain import Attempt, Job, JobSpec, JobStatus, Outcome
from tests.chaos.ledger import Ledger, Verdict, check
from tests.harness import wait_until


class FakeServer:
    """The server's records of jobs: a status and the outcome of each attempt."""

    def __init__(self) -> None:
        self.jobs: dict[int, tuple[Job, list[Attempt]]] = {}

    def add(self, job_id: int, status: JobStatus, *outcomes: Outcome) -> None:
        job = Job(job_id, JobSpec(argv=("x",)), status, attempts=len(outcomes))
        history = [Attempt(job_id, n, "w", 0.0, outcome=o) for n, o in enumerate(outcomes, 1)]
        self.jobs[job_id] = (job, history)

    def get(self, job_id: int) -> Job:
        return self.jobs[job_id][0]

    def history(self, job_id: int) -> list[Attempt]:
        return self.jobs[job_id][1]


def judge(
    tmp_path: Path, lines: str, server: FakeServer, expect_failed: tuple[int, ...] = ()
) -> Verdict:
    ledger = Ledger(tmp_path / "ledger.txt")
    ledger.path.write_text(lines)
    return check(server, ledger, server.jobs, expect_failed)


def test_a_clean_run_is_safe(tmp_path: Path) -> None:
    s = FakeServer()
    s.add(1, JobStatus.SUCCEEDED, Outcome.SUCCEEDED)
    s.add(2, JobStatus.FAILED, Outcome.FAILED, Outcome.FAILED)
    v = judge(
        tmp_path, "start 1 1 10 1.0\nend 1 1 10 2.0\nstart 2 1 11 1.0\nstart 2 2 12 3.0\n", s, (2,)
    )
    v.assert_safe()
    assert (v.succeeded, v.failed, v.duplicate_starts, v.interrupted["failed"]) == (1, 1, 1, 2)


@pytest.mark.parametrize("recorded", [Outcome.FAILED, Outcome.TIMED_OUT, Outcome.RUNNING])
def test_an_end_under_an_attempt_recorded_failed_timed_out_or_running_is_found(
    tmp_path: Path, recorded: Outcome
) -> None:
    # attempt 1 completed, yet the server recorded it as failed (or timed out, or running)
    # and ran the job again
    s = FakeServer()
    s.add(1, JobStatus.SUCCEEDED, recorded, Outcome.SUCCEEDED)
    lines = "start 1 1 10 1.0\nend 1 1 10 2.0\nstart 1 2 11 3.0\nend 1 2 11 4.0\n"
    v = judge(tmp_path, lines, s)
    assert v.contradicted == 1 and v.duplicate_completions == 1, v
    assert f"attempt 1 ended, server says {recorded}" in str(v)
    with pytest.raises(AssertionError, match="duplicate completions"):
        v.assert_safe()


def test_an_end_under_an_attempt_the_server_gave_up_on_is_superseded(tmp_path: Path) -> None:
    s = FakeServer()
    s.add(1, JobStatus.SUCCEEDED, Outcome.LOST, Outcome.SUCCEEDED)
    lines = "start 1 1 10 1.0\nstart 1 2 11 3.0\nend 1 1 10 3.5\nend 1 2 11 4.0\n"
    v = judge(tmp_path, lines, s)
    # attempt 2 began at 3.0 while attempt 1 ran until 3.5: the two ran at once
    assert (v.superseded, v.duplicate_completions, v.contradicted) == (1, 0, 0), v
    assert v.concurrent_pairs == [(1, 1, 2)]
    v.assert_safe(allow_concurrent=True)


def test_lost_is_decided_by_the_ledger_not_the_servers_status(tmp_path: Path) -> None:
    s = FakeServer()
    s.add(1, JobStatus.SUCCEEDED, Outcome.SUCCEEDED)  # says succeeded: the job never completed
    s.add(2, JobStatus.FAILED, Outcome.LOST, Outcome.LOST)  # says failed: the job did complete
    s.add(3, JobStatus.FAILED, Outcome.FAILED)  # expected to fail, but never started
    v = judge(tmp_path, "start 1 1 10 1.0\nstart 2 1 11 1.0\nend 2 1 11 2.0\n", s, (3,))
    assert v.lost == 2 and v.phantom == 1 and v.contradicted == 1, v
    assert "job 1: LOST: no attempt completed (1 began); server: succeeded" in str(v)
    assert "job 3: LOST: expected to fail, never started; server: failed" in str(v)
    assert "job 2: completed in the ledger, server says failed" in str(v)


def test_two_attempts_at_once_are_found_from_the_witness_and_from_times(tmp_path: Path) -> None:
    s = FakeServer()
    s.add(1, JobStatus.SUCCEEDED, Outcome.LOST, Outcome.SUCCEEDED)
    s.add(2, JobStatus.SUCCEEDED, Outcome.LOST, Outcome.SUCCEEDED)
    # job 1: attempt 2 saw attempt 1 alive (attempt 1 never wrote `end`: killed later)
    # job 2: attempt 2 began before attempt 1's `end`
    lines = (
        "start 1 1 10 1.0\nstart 1 2 11 3.0\noverlap 1 2 11 3.0 1\nend 1 2 11 4.0\n"
        "start 2 1 20 1.0\nstart 2 2 21 2.0\nend 2 1 20 2.5\nend 2 2 21 3.0\n"
    )
    v = judge(tmp_path, lines, s)
    assert v.concurrent_pairs == [(1, 1, 2), (2, 1, 2)], v
    with pytest.raises(AssertionError, match="two attempts ran at once"):
        v.assert_safe()


def test_reruns_unexpected_attempts_and_torn_lines_are_found(tmp_path: Path) -> None:
    s = FakeServer()
    s.add(1, JobStatus.SUCCEEDED, Outcome.SUCCEEDED)
    lines = (
        "start 1 1 10 1.0\nstart 1 1 12 1.5\nend 1 1 10 2.0\n"  # attempt 1 began twice
        "start 1 2 13 3.0\nstart 9 1 14 3\n"  # an attempt never given out; a job never submitted
        "end 1"  # torn
    )
    v = judge(tmp_path, lines, s)
    assert (v.rerun_attempts, v.unexpected, v.malformed) == (1, 2, 1), v


# ---- the witness, for real ----------------------------------------------------------------------


def run_attempt(ledger: Ledger, job: int, attempt: int, body: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **dict(ledger.env), "DTS_JOB_ID": str(job), "DTS_ATTEMPT": str(attempt)}
    return subprocess.Popen(
        ["/bin/sh", "-c", ledger.command(body)], env=env, start_new_session=True
    )


def test_an_attempt_records_another_attempt_of_its_job_that_is_alive(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.txt")
    # Given attempt 1 of job 7 running (its shell and its child `sleep`)
    first = run_attempt(ledger, 7, 1, "sleep 60")
    try:
        wait_until(lambda: ledger.start_of(7, 1), 10, what="attempt 1 to start")
        # When attempt 2 of job 7, and attempt 2 of job 8, start and finish
        for job in (7, 8):
            assert run_attempt(ledger, job, 2, "true").wait(10) == 0
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # Then job 7's attempt 2 recorded attempt 1 alive; job 8's saw no attempt of its own
    assert [(e.job, e.attempt, e.other) for e in ledger.overlaps()] == [(7, 2, 1)]
    # And once attempt 1 is dead (even its orphaned `sleep`), attempt 3 finds nothing alive
    wait_until(lambda: not _job_processes(7, 1), 10, what="attempt 1's processes to go")
    assert run_attempt(ledger, 7, 3, "true").wait(10) == 0
    assert [(e.job, e.attempt) for e in ledger.overlaps()] == [(7, 2)]


def _job_processes(job: int, attempt: int) -> list[str]:
    want = {f"DTS_JOB_ID={job}".encode(), f"DTS_ATTEMPT={attempt}".encode()}
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if want <= env:
            found.append(pid)
    return found


def test_a_job_without_the_ledgers_environment_cannot_witness_and_says_so(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.txt")
    env = {**os.environ, "DTS_JOB_ID": "7", "DTS_ATTEMPT": "1"}
    env.pop("CHAOS_LEDGER", None)
    cmd = ["/bin/sh", "-c", ledger.command("true")]
    assert subprocess.run(cmd, env=env, timeout=10).returncode == 0
    assert ledger.malformed() == ["blind: CHAOS_LEDGER is not set, no overlap witness"]
