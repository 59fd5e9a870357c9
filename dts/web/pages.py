"""The dashboard's pages (GET): each reads through the visit's client and renders a template.
Plain functions, run by Starlette in its thread pool (the client blocks)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dts.domain import FINAL_STATUSES, JobStatus, Output, WorkerState
from dts.errors import NotFound
from dts.web.chart import activity_svg
from dts.web.dashboard import Visit
from dts.web.format import job_query
from dts.web.render import render

STATUSES = [s.value for s in JobStatus]
UP = (WorkerState.IDLE, WorkerState.BUSY, WorkerState.DRAINING)
SHOWN_ATTEMPTS = 20  # the latest attempts a job page shows with their output


def overview(request: Request) -> Response:
    visit = request.app.state.dash.visit(request)
    counts = visit.client.stats()
    totals: dict[str, int] = defaultdict(int)
    by_queue: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for c in counts:
        totals[c.status.value] += c.count
        by_queue[c.queue][c.status.value] += c.count
    buckets = visit.client.activity(60)
    workers = visit.client.workers()
    return render(
        request,
        visit,
        "overview.html",
        statuses=STATUSES,
        totals=totals,
        by_queue=dict(sorted(by_queue.items())),
        chart=activity_svg(buckets),
        hour={
            "succeeded": sum(b.succeeded for b in buckets),
            "failed": sum(b.failed for b in buckets),
            "cancelled": sum(b.cancelled for b in buckets),
        },
        workers_up=sum(1 for w in workers if w.state in UP),
        workers_total=len(workers),
    )


def jobs(request: Request) -> Response:
    visit = request.app.state.dash.visit(request)
    q = job_query(request.query_params)
    found = visit.client.list_jobs(
        q.status,
        q.queue,
        q.limit + 1,  # one more than shown: is there an older page?
        name=q.name,
        before_id=q.before,
        since=q.since,
        until=q.until,
    )
    shown = found[: q.limit]
    older = q.params(before=shown[-1].id) if len(found) > q.limit else None
    return render(request, visit, "jobs.html", q=q, jobs=shown, older=older, statuses=STATUSES)


def job_parts(visit: Visit, job_id: int) -> dict[str, Any]:
    """What the job page and its live part show: the job, its attempts (latest first) each
    with its output, and whether it is still to be watched."""
    job = visit.client.get(job_id)
    attempts = visit.client.history(job_id)[-SHOWN_ATTEMPTS:]
    outputs: dict[int, Output] = {}
    for a in attempts:
        try:
            outputs[a.attempt] = visit.client.logs(job_id, a.attempt)
        except NotFound:  # deleted by retention between the two reads
            outputs[a.attempt] = Output(a.attempt, b"", b"")
    return {
        "job": job,
        "attempts": list(reversed(attempts)),
        "outputs": outputs,
        "live": job.status not in FINAL_STATUSES,
        "now": time.time(),
    }


def job(request: Request) -> Response:
    visit = request.app.state.dash.visit(request)
    job_id = _job_id(request)
    return render(request, visit, "job.html", **job_parts(visit, job_id))


def job_live(request: Request) -> Response:
    """The part of a job page that changes while it runs; htmx asks for it each second."""
    visit = request.app.state.dash.visit(request)
    return render(request, visit, "job_live.html", **job_parts(visit, _job_id(request)))


def workers(request: Request) -> Response:
    visit = request.app.state.dash.visit(request)
    return render(request, visit, "workers.html", workers=visit.client.workers(), up=UP)


def queues(request: Request) -> Response:
    visit = request.app.state.dash.visit(request)
    return render(request, visit, "queues.html", queues=visit.client.queues())


def schedules(request: Request) -> Response:
    visit = request.app.state.dash.visit(request)
    return render(request, visit, "schedules.html", schedules=visit.client.schedules())


def _job_id(request: Request) -> int:
    job_id: int = request.path_params["job_id"]
    if job_id <= 0:
        raise NotFound(f"no job {job_id}")
    return job_id
