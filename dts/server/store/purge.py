"""What both SQL stores share to purge old final jobs: the condition that picks them and the
submit keys that would name them once they are gone."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from collections.abc import Set as AbstractSet
from typing import Any

from dts.domain import FINAL_STATUSES, JobStatus
from dts.errors import Internal
from dts.server.store.dependencies import PURGE_GUARD
from dts.server.store.reads import literal
from dts.server.store.rows import ids_of

# The index the purge reads by (its DDL is the same text in both stores): only finished jobs
# are in it, so a submit, whose jobs have no finished_at yet, does not write to it.
FINISHED_INDEX = (
    "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL"
)


def purge_condition(
    before: float, statuses: Collection[JobStatus], queue: str, param: str
) -> tuple[str, list[Any]]:
    """The WHERE clause (with its arguments) of the jobs a purge may delete: final ones in
    `statuses` (every final one when empty) that finished before `before`, of `queue` if
    given, that no job that is not final depends on. A status that is not final is a bug of
    the caller: nothing is deleted."""
    wanted = set(statuses) or set(FINAL_STATUSES)
    if not wanted <= FINAL_STATUSES:
        raise Internal(f"purge of jobs that are not final: {sorted(wanted - FINAL_STATUSES)}")
    names = ",".join(literal(s) for s in sorted(wanted))
    sql = f"finished_at < {param} AND status IN ({names})" + PURGE_GUARD
    args: list[Any] = [before]
    if queue:
        sql += f" AND queue = {param}"
        args.append(queue)
    return sql, args


def keys_naming(rows: Iterable[Any], doomed: AbstractSet[int]) -> list[str]:
    """The submit keys among `rows` (key, ids) that name one of the `doomed` job ids."""
    return [row["key"] for row in rows if not doomed.isdisjoint(ids_of(row["ids"]))]
