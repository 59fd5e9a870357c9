"""The submit rules: what one submit may hold, and storing it inside a transaction, once per
key (a submit whose key was seen stores nothing and gets the earlier one's ids)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dts.dependencies import check_dependencies
from dts.domain import Job, JobSpec, JobStatus, validate_spec, validate_submit_key
from dts.errors import DtsError, InvalidArgument, ShuttingDown
from dts.server.dependencies import check_known, link
from dts.server.store import Transaction
from dts.server.unique import insert_specs

MAX_BATCH = 100_000  # jobs in one submit call


@dataclass(frozen=True)
class Earlier:
    """The ids an earlier submit with the same key stored, and when (None: not known)."""

    ids: list[int]
    at: float | None = None

    def __str__(self) -> str:
        return f"{self.ids[0]}..{self.ids[-1]}" if len(self.ids) > 1 else str(self.ids[0])


def check_submit(specs: Sequence[JobSpec], key: str, accepting: bool) -> None:
    """Refuse a submit the server must not store (InvalidArgument naming the job, or
    ShuttingDown)."""
    if not accepting:
        raise ShuttingDown("server is shutting down; not accepting jobs")
    if not specs:
        raise InvalidArgument("no jobs to submit")
    if len(specs) > MAX_BATCH:
        raise InvalidArgument(f"at most {MAX_BATCH} jobs per submit, got {len(specs)}")
    for i, spec in enumerate(specs):
        try:
            validate_spec(spec)
        except InvalidArgument as e:
            raise InvalidArgument(f"job {i + 1}: {e}" if len(specs) > 1 else str(e)) from e
    check_dependencies(specs, lambda i: specs[i].name or f"job {i + 1}")
    validate_submit_key(key)


def store_one(
    tx: Transaction,
    specs: Sequence[JobSpec],
    key: str,
    now: float,
    defaults: tuple[int, float, float],
) -> list[Job] | Earlier | DtsError:
    """Store one checked submit (the server's `defaults` for retries, backoff and timeout
    filled in), or, when its key was seen, what the earlier one stored. A job with a unique
    key may be found rather than stored (unique.py); its id is recorded with the key too.
    Jobs with dependencies are stored waiting, with their edges, and judged at once
    (dependencies.py); an unknown dependency refuses the submit before anything is stored."""
    waits = any(s.waits for s in specs)
    named: dict[int, JobStatus] = {}
    if waits:
        try:
            named = check_known(tx, specs)
        except InvalidArgument as e:
            return e
    if key:
        earlier = tx.take_submit_key(key, now)
        if earlier is not None:
            if len(earlier) != len(specs):
                return InvalidArgument(
                    f"submit key {key!r} was given to another submit (of {len(earlier)}"
                    f" jobs, this one has {len(specs)})"
                )
            return Earlier(earlier, tx.submit_key_time(key))
    jobs = insert_specs(tx, [s.with_defaults(*defaults) for s in specs], now)
    if waits:
        jobs = link(tx, specs, jobs, now, named)
    if key:
        tx.record_submit_key(key, [j.id for j in jobs])
    return jobs
