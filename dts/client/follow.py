"""Following jobs from dts-client: `logs --follow`, `wait ID...` and `submit --wait` print a
job's output as it is written (stdout bytes to stdout, stderr bytes to stderr), a line on
stderr for each retry, and why it failed when its output does not say; a lost connection is
resumed at the offsets already printed, so nothing is printed twice."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from dts import wire
from dts.backoff import Backoff
from dts.client.args import PROG, job_id
from dts.domain import Job, JobStatus, Outcome
from dts.errors import ResourceExhausted, Unavailable
from dts.v1 import dts_pb2 as pb

if TYPE_CHECKING:
    from dts.client.api import Client
    from dts.client.cli import Cli

HELP = "wait for jobs already submitted, printing their output; exit with the job's code"
RECONNECT = 60.0  # seconds a follow waits for a server that went away
TAIL = 64 * 1024  # bytes of the last attempt's output kept to see whether it says why it failed


class Printer:
    """Where a follow writes: the job's stdout and stderr bytes, and notes (stderr)."""

    def __init__(self, out: IO[bytes] | None = None, err: IO[bytes] | None = None) -> None:
        self.out = out if out is not None else sys.stdout.buffer
        self.err = err if err is not None else sys.stderr.buffer

    def output(self, stdout: bytes, stderr: bytes) -> None:
        if stdout:
            self.out.write(stdout)
            self.out.flush()
        if stderr:
            self.err.write(stderr)
            self.err.flush()

    def note(self, line: str) -> None:
        sys.stdout.flush()
        self.err.write(f"{line}\n".encode())
        self.err.flush()


def follow(client: Client, job: int, printer: Printer, attempt: int = 0) -> Job:
    """Print the job's output as it comes (attempt 0: the latest, and on into retries; N:
    attempt N only) until it is final; the final job. Says why it failed, when its output
    does not."""
    n, have, tail = attempt, [0, 0], b""
    backoff = Backoff(base=0.2, cap=2.0)
    down_since: float | None = None
    request = pb.FollowRequest(id=job, attempt=attempt)
    while True:
        try:
            for ev in client.follow(request):
                down_since = None
                if ev.attempt != n:
                    n, have, tail = ev.attempt, [0, 0], b""
                if ev.stdout or ev.stderr:
                    printer.output(ev.stdout, ev.stderr)
                    have[0] = max(have[0], ev.stdout_offset + len(ev.stdout))
                    have[1] = max(have[1], ev.stderr_offset + len(ev.stderr))
                    tail = (tail + ev.stdout + ev.stderr)[-TAIL:]
                if ev.note:
                    printer.note(ev.note)
                if ev.HasField("job"):
                    final = wire.job_from_pb(ev.job)
                    reason = failure_line(final, tail)
                    if reason:
                        printer.note(reason)
                    return final
        except ResourceExhausted:  # the server's waiters are full: ask again in a while
            pass
        except Unavailable:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > RECONNECT:
                raise
        backoff.wait()  # the stream ended early (a server stopping): follow on from here
        if n > 0:
            request = pb.FollowRequest(
                id=job, attempt=n, stdout_offset=have[0], stderr_offset=have[1], onward=not attempt
            )


def failure_line(job: Job, output_tail: bytes) -> str:
    """Why the job ended without success, when its output does not say it already."""
    if job.status is JobStatus.SUCCEEDED:
        return ""
    why = job.error
    if job.status is JobStatus.CANCELLED:
        return f"job {job.id} cancelled" + (f": {why}" if why and why != "cancelled" else "")
    if not why or why.startswith("exited with code") or why.encode() in output_tail:
        return ""  # the exit code says it, or the job did
    return f"job {job.id} {job.status}: {why}"


def exit_code(job: Job) -> int:
    """A waited job's exit code: its own (124 timeout, 128+N signal), 1 otherwise."""
    if job.status is JobStatus.SUCCEEDED:
        return 0
    if job.status is JobStatus.FAILED and job.exit_code:
        return job.exit_code
    return 1


def follow_all(client: Client, ids: Sequence[int], how: str) -> int:
    """Follow each job in turn; the first non-zero exit code. Ctrl+C says how to come back
    (`how`: the command, which gets the ids left) and exits 130."""
    printer = Printer()
    code = 0
    for i, job in enumerate(ids):
        try:
            if how == "wait" or i == 0:
                printer.note(f"waiting for job {job} (Ctrl+C stops waiting, not the job)")
            final = follow(client, job, printer)
        except KeyboardInterrupt:
            left = " ".join(str(j) for j in ids[i:])
            printer.note(f"\n{PROG}: stopped waiting; the job goes on: {PROG} wait {left}")
            return 130
        code = code or exit_code(final)
    return code


def add_parsers(sub: Any) -> None:
    w = sub.add_parser("wait", help=HELP, prog=f"{PROG} wait")
    w.add_argument("ids", metavar="ID", nargs="+", type=job_id, help="job ids")


def wait_command(cli: Cli, ns: Any) -> int:
    """`wait ID [ID...]`: each job's output as it runs; with --json, the final jobs."""
    if cli.as_json:
        return cli.wait_json(ns.ids)
    return follow_all(cli.client, ns.ids, "wait")


def logs_follow(cli: Cli, job: int, attempt: int) -> int:
    printer = Printer()
    try:
        final = follow(cli.client, job, printer, attempt)
    except KeyboardInterrupt:
        printer.note(f"\n{PROG}: stopped following; the job goes on: {PROG} logs {job} --follow")
        return 130
    if attempt:  # one attempt followed: its own exit code
        ended = next((a for a in cli.client.history(job) if a.attempt == attempt), None)
        if ended is not None and ended.outcome is not Outcome.SUCCEEDED:
            return ended.exit_code or 1
        return 0 if ended is not None else exit_code(final)
    return exit_code(final)


def running_note(job: int, attempt: int) -> str:
    return (
        f"job {job} is running (attempt {attempt}): its output so far; "
        f"{PROG} logs {job} --follow prints the rest as it comes"
    )
