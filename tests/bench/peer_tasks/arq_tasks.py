"""arq: an async job that runs the blocking job in a thread (asyncio.to_thread), max_jobs=2."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.connections import RedisSettings
from peer_tasks.common import REDIS_URL, record


async def run(ctx: dict[str, Any]) -> None:
    # subprocess.run would block the event loop: arq's docs say to run blocking code in an executor
    await asyncio.to_thread(record)


_SETTINGS: dict[str, Any] = {
    "functions": [run],
    "redis_settings": RedisSettings.from_dsn(REDIS_URL),
    "max_jobs": 2,
    "keep_result": 0,
}

#: arq's defaults (poll_delay 0.5 s) but max_jobs=2 and no result kept. Each poll starts at most
#: max_jobs jobs, so a short job's throughput is capped at max_jobs / poll_delay (4/s here).
WorkerSettings: dict[str, Any] = dict(_SETTINGS)
#: the same polling every 2 ms (arq's documented poll_delay): near arq's own ceiling for this job
#: (1 ms is no faster), at about 20% of a core while idle
FastPollWorkerSettings: dict[str, Any] = {**_SETTINGS, "poll_delay": 0.002}

#: --custom-log-dict: arq's own handler at WARNING (its default logs a line per job at INFO)
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"arq.standard": {"level": "WARNING", "class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["arq.standard"], "level": "WARNING"}},
}
