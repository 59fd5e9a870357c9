"""What dts-client prints: jobs, attempts, workers and counts as JSON objects and as text
tables (times in ISO-8601 UTC)."""

from __future__ import annotations

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
    return (iso(ts) or "-").replace("T", " ").removesuffix("Z")[:19]


# ---- commands ---------------------------------------------------------------------------------
