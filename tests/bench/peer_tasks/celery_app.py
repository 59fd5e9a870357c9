"""Celery: redis broker, no result backend (the job's line is its result)."""

from __future__ import annotations

from celery import Celery
from peer_tasks.common import REDIS_URL, record

app = Celery("peer_tasks", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.run")
def run() -> None:
    record()
