"""RQ: a plain function; jobs are enqueued with result_ttl=0 (no result kept)."""

from __future__ import annotations

from peer_tasks.common import record


def run() -> None:
    record()
