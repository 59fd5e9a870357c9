"""The Redis side of dts: every key name, the Lua scripts, and the queue operations.

Only job ids travel through Redis; a worker learns what to run from the server. Each queue is
a sorted set scored so that higher priority comes first and, within a priority, lower (older)
ids. A pop moves ids atomically into the `inflight` set with a deadline, so an id whose taker
dies before claiming it is put back by the server instead of being lost.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from dts.domain import MAX_PRIORITY

ID_BITS = 43  # job ids below 2**43 keep every score exact in a double
WAKE_TOKENS = 64  # idle workers woken at most per enqueue batch


def redacted_url(url: str) -> str:
    """A Redis URL fit for logs: its user and password, and a password query value, as ***."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return scheme + sep + authority + slash + re.sub(r"([?&]password=)[^&]*", r"\1***", tail)


@dataclass(frozen=True)
class Keys:
    """Every Redis key dts uses, built from the deployment's prefix."""

    prefix: str = "dts:"

    def queue(self, name: str) -> str:
        return f"{self.prefix}queue:{name}"

    def wake(self, name: str) -> str:
        return f"{self.prefix}wake:{name}"

    @property
    def inflight(self) -> str:
        return f"{self.prefix}inflight"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}epoch"


def score(priority: int, job_id: int) -> int:
    """Sort key: priority 9 before 0, then FIFO by id."""
    return ((MAX_PRIORITY - priority) << ID_BITS) + job_id


# KEYS: inflight, queue1..queueN   ARGV: max count, lease seconds, ids to acknowledge...
# Drops the acknowledged ids from `inflight`, then pops up to ARGV[1] ids, earlier queues
# first, and parks them in `inflight` until a deadline.
POP_SCRIPT = """
for i = 3, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
end
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local deadline = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2])
local out = {}
for i = 2, #KEYS do
  if n <= 0 then break end
  local items = redis.call('ZPOPMIN', KEYS[i], n)
  for j = 1, #items, 2 do
    redis.call('ZADD', KEYS[1], deadline, items[j])
    out[#out + 1] = items[j]
    n = n - 1
  end
end
return out
"""

# KEYS: queue, wake   ARGV: wake tokens, then (score, id) pairs
# Adds the ids that are not there yet, then leaves wake tokens for idle workers (at most
# ARGV[1] waiting). Returns how many ids were new.
ENQUEUE_SCRIPT = """
local added = 0
for i = 2, #ARGV, 2 do
  added = added + redis.call('ZADD', KEYS[1], 'NX', ARGV[i], ARGV[i + 1])
end
local tokens = tonumber(ARGV[1])
local room = tokens - redis.call('LLEN', KEYS[2])
local n = math.min(room, math.floor(#ARGV / 2))
for i = 1, n do
  redis.call('LPUSH', KEYS[2], '1')
end
return added
"""
ENQUEUE_CHUNK = 2000  # ids per script call: Lua's stack and Redis's latency stay small

# KEYS: inflight   ARGV: max count
# Ids whose inflight deadline (on Redis's clock) has passed.
EXPIRED_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
"""


@dataclass(frozen=True)
class QueuedJob:
    """What the queue needs to know to place a job."""

    job_id: int
    queue: str
    priority: int


class RedisQueue:
    """Queue operations on one Redis connection pool. Raises redis.RedisError when Redis is away."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._pop = client.register_script(POP_SCRIPT)
        self._expired = client.register_script(EXPIRED_SCRIPT)
        self._enqueue = client.register_script(ENQUEUE_SCRIPT)

    def enqueue(self, jobs: Sequence[QueuedJob]) -> int:
        """Add jobs to their queues (idempotent), wake idle workers; returns how many were new."""
        if not jobs:
            return 0
        by_queue: dict[str, list[int]] = defaultdict(list)
        for j in jobs:
            by_queue[j.queue].extend((score(j.priority, j.job_id), j.job_id))
        if len(by_queue) == 1 and len(jobs) <= ENQUEUE_CHUNK:  # one round trip, no pipeline
            ((name, args),) = by_queue.items()
            return int(
                self._enqueue([self.keys.queue(name), self.keys.wake(name)], [WAKE_TOKENS, *args])
            )
        pipe = self.redis.pipeline(transaction=False)
        for name, args in by_queue.items():
            keys = [self.keys.queue(name), self.keys.wake(name)]
            for i in range(0, len(args), 2 * ENQUEUE_CHUNK):
                self._enqueue(keys, [WAKE_TOKENS, *args[i : i + 2 * ENQUEUE_CHUNK]], client=pipe)
        return sum(int(r) for r in pipe.execute())

    def pop(
        self, queues: Sequence[str], count: int, lease_seconds: float, ack: Sequence[int] = ()
    ) -> list[int]:
        """Take up to `count` ids, earlier queues first, parking them in `inflight`; first
        acknowledge `ack` (ids claimed since the last pop), saving a round trip."""
        keys = [self.keys.inflight, *(self.keys.queue(q) for q in queues)]
        ids = self._pop(keys=keys, args=[count, lease_seconds, *ack])
        return [int(i) for i in ids]

    def wait_and_pop(
        self, queues: Sequence[str], timeout: float, count: int, lease_seconds: float
    ) -> list[int]:
        """Block until an enqueue's wake token comes or `timeout` passes, then `pop`, in one
        round trip: Redis runs the pop the moment the wait ends (a connection's commands run
        in order), so a woken worker has its ids at once."""
        keys = [self.keys.inflight, *(self.keys.queue(q) for q in queues)]
        pipe = self.redis.pipeline(transaction=False)
        pipe.blpop([self.keys.wake(q) for q in queues], timeout=timeout)
        self._pop(keys=keys, args=[count, lease_seconds], client=pipe)
        _, ids = pipe.execute()
        return [int(i) for i in ids]

    def ack(self, job_ids: Sequence[int]) -> None:
        """The ids were claimed (or found unclaimable): they need no recovery."""
        if job_ids:
            self.redis.zrem(self.keys.inflight, *[str(i) for i in job_ids])

    def release(self, job_ids: Sequence[int]) -> None:
        """Hand back ids we took but will not claim: the server puts them back at once."""
        if job_ids:
            self.redis.zadd(self.keys.inflight, {str(i): 0 for i in job_ids}, xx=True)

    def expired_inflight(self, limit: int) -> list[int]:
        """Ids taken from a queue whose taker never acknowledged them in time."""
        return [int(i) for i in self._expired(keys=[self.keys.inflight], args=[limit])]

    def inflight(self, job_ids: Sequence[int]) -> set[int]:
        """Those of `job_ids` a worker has taken and not yet acknowledged."""
        if not job_ids:
            return set()
        scores = self.redis.zmscore(self.keys.inflight, [str(i) for i in job_ids])
        return {i for i, sc in zip(job_ids, scores, strict=True) if sc is not None}

    def remove(self, queue: str, job_id: int) -> None:
        """Drop a job id from its queue (e.g. cancelled before it started)."""
        self.redis.zrem(self.keys.queue(queue), str(job_id))

    def epoch(self) -> str | None:
        value = self.redis.get(self.keys.epoch)
        return value.decode() if isinstance(value, bytes) else value

    def set_epoch(self, value: str) -> None:
        self.redis.set(self.keys.epoch, value)

    def depth(self, queue: str) -> int:
        return int(self.redis.zcard(self.keys.queue(queue)))
