"""Dramatiq: the redis broker with its default middleware (no Results middleware)."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from peer_tasks.common import REDIS_URL, record

broker = RedisBroker(url=REDIS_URL)
dramatiq.set_broker(broker)


@dramatiq.actor
def run() -> None:
    record()
