"""What dts-client prints: jobs, attempts, workers and counts as JSON objects and as text
(JSON times in ISO-8601 UTC; text times in UTC, said in each table's header or after the time)."""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from dts.domain import Attempt, Job, JobStatus, StatCount, WorkerInfo, WorkerState
from dts.limits import LIMITS, Limits


def iso(ts: float | None) -> str | None:
    """ISO-8601 UTC, millisecond precision."""
    if not ts:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_json(job: Job) -> dict[str, Any]:
    s = job.spec
    return {
        "id": job.id,
        "name": s.name,
        "status": job.status.value,
        "command": s.display,
        "argv": list(s.argv),
        "shell": s.shell,
        "queue": s.queue,
        "priority": s.priority,
        "attempts": job.attempts,
        "max_retries": job.max_retries,
        "backoff": s.backoff,
        "timeout": s.timeout,
        "env": dict(s.env),
        "cwd": s.cwd,
        "limits": limits_json(s.limits),
        "unique": s.unique or None,
        "exit_code": job.exit_code,
        "error": job.error,
        "worker": job.worker,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "run_at": iso(job.run_at),
        "schedule": job.schedule or None,
        "due_at": iso(job.due_at),
    }


def limits_json(limits: Limits) -> dict[str, int | None]:
    """Each limit the job set; null where it set none (its worker's own limit applies)."""
    return {f.wire: v or None for f, v in zip(LIMITS, limits.values, strict=True)}


def attempt_json(a: Attempt) -> dict[str, Any]:
    return {
        "job_id": a.job_id,
        "attempt": a.attempt,
        "worker": a.worker,
        "outcome": a.outcome.value,
        "started_at": iso(a.started_at),
        "finished_at": iso(a.finished_at),
        "exit_code": a.exit_code,
        "error": a.error,
        "stdout_bytes": a.stdout_bytes,
        "stderr_bytes": a.stderr_bytes,
        "ran_from": iso(a.ran_from),
        "ran_until": iso(a.ran_until),
    }


def worker_json(w: WorkerInfo) -> dict[str, Any]:
    return {
        "name": w.name,
        "host": w.host,
        "pid": w.pid,
        "state": w.state.value,
        "running": w.running,
        "concurrency": w.concurrency,
        "queues": list(w.queues),
        "registered_at": iso(w.registered_at),
        "last_heartbeat": iso(w.last_heartbeat),
        "server": w.server,
    }


def by_server(workers: Sequence[WorkerInfo]) -> dict[str, int]:
    """How many live workers (neither lost nor stopped) talk to each server."""
    live = [w for w in workers if w.state not in (WorkerState.LOST, WorkerState.STOPPED)]
    return dict(sorted(Counter(w.server or "-" for w in live).items()))


def stats_json(counts: Sequence[StatCount]) -> dict[str, Any]:
    by_status = {s.value: 0 for s in JobStatus}
    by_queue: dict[str, dict[str, int]] = {}
    for c in counts:
        by_status[c.status.value] += c.count
        by_queue.setdefault(c.queue, {})[c.status.value] = c.count
    return {"total": sum(by_status.values()), "by_status": by_status, "by_queue": by_queue}


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def short(ts: float | None) -> str:
    """A table cell's time, to the second, in UTC (the column's header says so: `utc`)."""
    return (iso(ts) or "-").replace("T", " ").removesuffix("Z")[:19]


def utc(header: str) -> str:
    """A table header of a time column: times in tables are UTC, and say so."""
    return f"{header} (UTC)"


def stamp(ts: float | None) -> str:
    """A time on a line of its own, with its zone: '2026-01-02 03:04:05 UTC' ('' for none)."""
    return f"{short(ts)} UTC" if ts else ""


def seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:g}s"


def ran_text(a: Attempt) -> str:
    """How long the attempt's command ran by its worker's clock ("0.002s"); "-" if unknown."""
    if a.ran_from is None or a.ran_until is None:
        return "-"
    return f"{max(0.0, a.ran_until - a.ran_from):.3f}s"


def status_fields(job: Job) -> list[tuple[str, object]]:
    """What `status` shows of a job, in order: everything it asked for and what became of it
    (the variables of its environment by name only: their values may be secrets)."""
    s = job.spec
    timeout = "none" if s.timeout == 0 else seconds_text(s.timeout)
    backoff = f"{seconds_text(s.backoff)}, doubling" if s.backoff else seconds_text(s.backoff)
    fields: list[tuple[str, object]] = [
        ("id", job.id),
        ("name", s.name),
        ("status", job.status.value),
        ("command", s.display),
        ("shell", "yes (/bin/sh -c)" if s.shell else "no"),
        ("queue", s.queue),
        ("priority", s.priority),
        ("unique", s.unique),
        ("attempts", job.attempts),
        ("max_retries", job.max_retries),
        ("backoff", backoff),
        ("timeout", timeout),
        ("cwd", s.cwd or "(the worker's)"),
        ("env", ", ".join(k for k, _ in s.env) or "-"),
        ("limits", s.limits.describe() or "(the worker's)"),
        ("exit_code", job.exit_code),
        ("error", job.error),
        ("worker", job.worker),
        ("created_at", stamp(job.created_at)),
        ("run_at", stamp(job.run_at)),
        ("started_at", stamp(job.started_at)),
        ("finished_at", stamp(job.finished_at)),
    ]
    if job.schedule:
        fields += [("schedule", job.schedule), ("due_at", stamp(job.due_at) or "(run by hand)")]
    return [(k, "" if v is None else v) for k, v in fields if k != "unique" or v]


def fit(text: str, width: int) -> str:
    """`text` on one line, cut to `width` characters with '...' when longer."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: max(width - 3, 0)] + "..."


def last_column_width(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> int:
    """Room for a table's last column: what the terminal leaves (at least 20), or 100
    characters when stdout is not a terminal."""
    if not sys.stdout.isatty():
        return 100
    cells = [[str(h) for h in headers[:-1]]] + [
        ["" if v is None else str(v) for v in r[:-1]] for r in rows
    ]
    used = sum(max(len(r[i]) for r in cells) + 2 for i in range(len(headers) - 1))
    return max(shutil.get_terminal_size().columns - used, 20)


# ---- commands ---------------------------------------------------------------------------------
