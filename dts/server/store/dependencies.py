"""The dependencies table both SQL stores keep (job_id waits for depends_on, of a kind:
succeeded or finished), its DDL, and the statements on it, written once for both.

A row may name a job that retention deleted (depends_on): the row of a final job stays so
that its retry knows what it waited for; a purge never deletes a job a job that is not final
depends on (PURGE_GUARD), and deletes the rows of the jobs it deletes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from dts.domain import JobStatus
from dts.server.store import chunks
from dts.server.store.reads import literal

BATCH: Final = 400  # ids of one IN list


def dependencies_ddl(integer: str) -> list[str]:
    """The table and its index the other way round (`integer`: the type of a job id)."""
    return [
        "CREATE TABLE IF NOT EXISTS dependencies ("
        f"job_id {integer} NOT NULL, depends_on {integer} NOT NULL, kind TEXT NOT NULL,"
        " PRIMARY KEY (job_id, depends_on))",
        "CREATE INDEX IF NOT EXISTS dependencies_by_target ON dependencies (depends_on, job_id)",
    ]


# A purge leaves alone a final job that a job that is not final depends on (a retried job
# waiting for it to be retried too).
_FINAL = ",".join(literal(s) for s in sorted(s for s in JobStatus if s.final))
PURGE_GUARD: Final = (
    " AND NOT EXISTS (SELECT 1 FROM dependencies d JOIN jobs w ON w.id = d.job_id"
    f" WHERE d.depends_on = jobs.id AND w.status NOT IN ({_FINAL}))"
)


class DependencyRows:
    """The Transaction's statements on dependencies, for a transaction with a connection
    `_c` (execute -> fetchall) and a placeholder PARAM; `_lock_share` is ' FOR SHARE' where
    rows can be locked (PostgreSQL)."""

    PARAM = "?"
    _lock_share = ""

    def _fetch(self, sql: str, args: Sequence[Any]) -> list[Any]:
        return self._c.execute(sql, args).fetchall()  # type: ignore[attr-defined,no-any-return]

    def add_dependencies(self, rows: Sequence[tuple[int, int, str]]) -> None:
        p = self.PARAM
        for part in chunks(rows, BATCH):
            marks = ",".join(f"({p},{p},{p})" for _ in part)
            self._c.execute(  # type: ignore[attr-defined]
                f"INSERT INTO dependencies (job_id, depends_on, kind) VALUES {marks}",
                [v for row in part for v in row],
            )

    def lock_statuses(self, ids: Sequence[int]) -> dict[int, JobStatus]:
        found: dict[int, JobStatus] = {}
        for part in chunks(ids, BATCH):
            marks = ",".join(self.PARAM for _ in part)
            rows = self._fetch(
                f"SELECT id, status FROM jobs WHERE id IN ({marks}) ORDER BY id{self._lock_share}",
                list(part),
            )
            found.update((row["id"], JobStatus(row["status"])) for row in rows)
        return found

    def waits_for(self, job_id: int) -> list[tuple[int, str, JobStatus | None]]:
        rows = self._fetch(
            "SELECT d.depends_on, d.kind, j.status FROM dependencies d"
            f" LEFT JOIN jobs j ON j.id = d.depends_on WHERE d.job_id = {self.PARAM}"
            " ORDER BY d.depends_on",
            (job_id,),
        )
        return [
            (r["depends_on"], r["kind"], JobStatus(r["status"]) if r["status"] else None)
            for r in rows
        ]

    def dependents(self, ids: Sequence[int]) -> list[int]:
        found: set[int] = set()
        for part in chunks(ids, BATCH):
            marks = ",".join(self.PARAM for _ in part)
            rows = self._fetch(
                f"SELECT job_id FROM dependencies WHERE depends_on IN ({marks})", list(part)
            )
            found.update(row["job_id"] for row in rows)
        return sorted(found)
