"""huey: RedisHuey (blocking dequeue, its default) with result storage off."""

from __future__ import annotations

from huey import RedisHuey
from peer_tasks.common import REDIS_URL, record

huey = RedisHuey("bench", url=REDIS_URL, results=False)


@huey.task()
def run() -> None:
    record()
