"""Where the slots' job ids come from: the Redis queue (pop, wait, release, ack) and its link."""

from __future__ import annotations

import threading

from redis import Redis

from dts.backoff import Backoff
from dts.errors import QueueUnavailable
from dts.queue.redis import Keys, RedisQueue, redacted_url
from dts.worker.link import Link
from dts.worker.session import Session

HELD_WAIT = 0.25  # seconds an idle slot waits for a wake token while one of its queues is held


class Feed:
    """The worker's side of the Redis queue. Its keys are known once the worker registered
    (`bind`); ids are popped for the lease the session holds, and none while the server is
    away (they are left to workers that can claim them)."""

    def __init__(
        self,
        redis: Redis,
        redis_url: str,
        queues: tuple[str, ...],
        session: Session,
        stop: threading.Event,
    ) -> None:
        self.redis = redis  # the pool at redis_url
        self.link = Link(f"redis {redacted_url(redis_url)}")
        self.queues = queues
        self.session = session
        self.stop = stop
        self.queue: RedisQueue | None = None
        self._seen = threading.local()  # per slot thread: the version of the holds it saw

    def bind(self, key_prefix: str) -> None:
        """The server's keys in Redis, as its registration said."""
        self.queue = RedisQueue(self.redis, Keys(key_prefix))

    def take(self, count: int, to_ack: list[int]) -> list[int]:
        """Pop up to `count` ids (acknowledging `to_ack` on the way); [] if Redis is away."""
        assert self.queue is not None
        if count == 0 and not to_ack:
            return []
        if self.session.link.up is False:
            count = 0  # cut off from the server: leave ids to workers that can claim them
        queues = self.session.holds.open(self.queues)  # none of a paused or full queue
        try:
            ids = self.queue.pop(queues, count, self.session.lease_seconds, to_ack)
            self.link.ok()
        except QueueUnavailable as e:
            self.link.down(e)
            return []
        to_ack.clear()
        return ids

    def idle(self, backoff: Backoff, to_ack: list[int], count: int) -> list[int]:
        """Nothing to report and nothing queued: wait for an enqueue (and take up to `count`
        ids the moment it comes), or for a link to heal. Ids claimed since the last pop are
        acknowledged first (off the path of any job)."""
        assert self.queue is not None
        if to_ack:
            self.take(0, to_ack)
        server = self.session.link
        if server.up is False:
            server.recovered.wait(0.5)
            return []
        holds, lease = self.session.holds, self.session.lease_seconds
        queues = holds.open(self.queues)
        if not queues:  # every queue paused or full: wait for an answer that frees one
            holds.wait(1.0)
            return []
        # A queue freed (resumed, or under its limit again) brings no enqueue to wake us for
        # the ids waiting in it: a slot that sees a change pops at once, and while some queue
        # is held, idle slots wait for wake tokens HELD_WAIT at a time, not a second.
        fresh = getattr(self._seen, "version", 0) != holds.version
        self._seen.version = holds.version
        try:
            if fresh:
                ids = self.queue.pop(queues, count, lease)
            else:
                wait = HELD_WAIT if len(queues) < len(self.queues) else 1.0
                ids = self.queue.wait_and_pop(queues, wait, count, lease)
            self.link.ok()
            backoff.reset()
            if ids and self.stop.is_set():  # told to stop while waiting: not ours
                self.queue.release(ids)
                return []
            return ids
        except QueueUnavailable as e:
            self.link.down(e)
            backoff.wait(self.stop)
            return []

    def release(self, ids: list[int]) -> None:
        """Hand back ids that were not claimed (best effort)."""
        try:
            if ids and self.queue is not None:
                self.queue.release(ids)
        except QueueUnavailable as e:  # the server's inflight recovery copes with it
            self.link.down(e)
