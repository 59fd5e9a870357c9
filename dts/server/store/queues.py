"""The `queues` table (queue controls: paused, run limit) and the reads the claim gate makes in
a transaction, written once for both SQL stores: each gives its placeholder and its row lock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from dts.controls import QueueSetting
from dts.server.store.reads import QUEUED, RUNNING

BATCH: Final = 400  # ids one statement names (SQLite allows 32,766 variables)

# The table (SQLite version 8, PostgreSQL version 6) and the index the limit's count reads.
QUEUES_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY, paused INTEGER NOT NULL,"
    " run_limit INTEGER, updated_at {real} NOT NULL)"
)
RUNNING_BY_QUEUE: Final = (
    f"CREATE INDEX IF NOT EXISTS jobs_running_by_queue ON jobs (queue) WHERE status = {RUNNING}"
)


def queue_schema(real: str) -> list[str]:
    """The statements that add queue controls, with the store's floating-point type."""
    return [QUEUES_TABLE.format(real=real), RUNNING_BY_QUEUE]


def setting_of(row: Any) -> QueueSetting:
    return QueueSetting(
        row["name"], bool(row["paused"]), row["run_limit"], float(row["updated_at"])
    )


class QueueRows:
    """Queue controls inside a transaction. A store's transaction class sets PARAM and LOCK
    (the clause that locks the rows a SELECT reads until the commit; '' where the whole
    transaction is serialised anyway) and runs a statement with `_execute` (rows read by
    column name)."""

    PARAM = "?"
    LOCK = ""

    def _execute(self, sql: str, args: Sequence[Any]) -> Any:
        raise NotImplementedError

    def _run(self, sql: str, args: Sequence[Any]) -> Any:
        return self._execute(sql.replace("?", self.PARAM), args)

    def _rows(self, sql: str, args: Sequence[Any]) -> list[Any]:
        return list(self._run(sql, args).fetchall())

    def queue_settings(self, names: Sequence[str], lock: bool = False) -> dict[str, QueueSetting]:
        """The stored settings of those of `names` that have one; with `lock`, their rows are
        locked until the commit (in name order), so that claims of a limited queue through
        several servers count and grant one after the other."""
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        rows = self._rows(
            f"SELECT name, paused, run_limit, updated_at FROM queues WHERE name IN ({marks})"
            f" ORDER BY name{self.LOCK if lock else ''}",
            list(names),
        )
        return {row["name"]: setting_of(row) for row in rows}

    def running_counts(self, names: Sequence[str]) -> dict[str, int]:
        """Jobs of each of `names` running now (by the store: a lost worker's jobs count until
        its lease is reaped)."""
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        rows = self._rows(
            f"SELECT queue, count(*) AS n FROM jobs WHERE status = {RUNNING}"
            f" AND queue IN ({marks}) GROUP BY queue",
            list(names),
        )
        return {row["queue"]: int(row["n"]) for row in rows}

    def queued_places(self, ids: Sequence[int]) -> dict[int, tuple[str, int]]:
        """The queue and priority of each of `ids` still queued."""
        found: dict[int, tuple[str, int]] = {}
        for i in range(0, len(ids), BATCH):
            part = list(ids[i : i + BATCH])
            marks = ",".join("?" * len(part))
            for row in self._rows(
                f"SELECT id, queue, priority FROM jobs WHERE id IN ({marks}) AND status = {QUEUED}",
                part,
            ):
                found[row["id"]] = (row["queue"], row["priority"])
        return found

    def save_queue(self, setting: QueueSetting) -> None:
        """Store a queue's setting; one with nothing set is dropped."""
        if setting.free:
            self._run("DELETE FROM queues WHERE name = ?", [setting.name])
            return
        self._run(
            "INSERT INTO queues (name, paused, run_limit, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused,"
            " run_limit = excluded.run_limit, updated_at = excluded.updated_at",
            [setting.name, int(setting.paused), setting.limit, setting.updated_at],
        )
