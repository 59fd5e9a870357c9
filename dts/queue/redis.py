"""The Redis side of dts: every key name, the Lua scripts, and the queue operations.

Only job ids travel through Redis; a worker learns what to run from the server. Each queue is
a sorted set scored so that higher priority comes first and, within a priority, lower (older)
ids. A pop moves ids atomically into the `inflight` set with a deadline, so an id whose taker
dies before claiming it is put back by the server instead of being lost.

Anyone who can write to Redis can put anything there. Every member read back goes through
`parse_id`; what is not a job id is dropped (from the queue and from `inflight`) with a
rate-limited warning, and never reaches a worker's claim or the server's recovery.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import redis
from redis.connection import parse_url as parse_redis_url

from dts.domain import MAX_PRIORITY
from dts.errors import InvalidArgument, QueueUnavailable
from dts.queue import ID_BITS, ID_LIMIT, QueuedJob
from dts.queue.sentinel import failovers, is_sentinel_url, parse_sentinel_url, sentinel_client

log = logging.getLogger("dts.queue")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

P = ParamSpec("P")
R = TypeVar("R")

ID_DIGITS = len(str(ID_LIMIT - 1))
WAKE_TOKENS = 64  # idle workers woken at most per enqueue batch
JUNK_ROUNDS = 16  # pops that replace dropped members, at most, per call
JUNK_REPEAT = 60.0  # seconds between two warnings of one cause of dropped members


def redacted_url(url: str) -> str:
    """A Redis URL fit for logs: its user and password, and the value of any query option
    ending in `password` (`password=`, `sentinel_password=`...), as ***. Everything before the
    last '@' is taken for credentials, so a password with an unescaped '/' or '?' is hidden
    too (and a query value with an '@' hides more than it needs to)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    base, question, query = rest.partition("?")
    return (
        scheme + sep + base + question + re.sub(r"((?:^|&)[^&=]*password=)[^&]*", r"\1***", query)
    )


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

    @property
    def followed(self) -> str:
        """Live output: the jobs someone follows, scored by when that interest expires."""
        return f"{self.prefix}followed"

    def output(self, job_id: int, attempt: int) -> str:
        """Live output: the stream of an attempt's chunks while it is followed."""
        return f"{self.prefix}out:{job_id}:{attempt}"


def parse_id(member: bytes | str) -> int:
    """The job id a Redis member names; ValueError (saying why) for anything else.

    dts writes an id as `str(id)`, so only that form is one: no sign, no leading zero, no
    space, no exponent, ASCII digits only, and below 2**ID_BITS. Whatever else a writer puts
    in Redis is not a job of ours, however `int()` would read it.
    """
    raw = member.encode("ascii") if isinstance(member, str) and member.isascii() else member
    if not isinstance(raw, bytes) or not raw.isdigit():  # bytes.isdigit: ASCII digits only
        raise ValueError("empty" if not raw else "not a decimal number")
    if raw[0] == ord("0"):
        raise ValueError("zero or a leading zero")
    value = int(raw) if len(raw) <= ID_DIGITS else ID_LIMIT  # no huge int() to build
    if value >= ID_LIMIT:
        raise ValueError(f"not below 2**{ID_BITS}")
    return value


class DropLog:
    """Warns about dropped members once per place and cause at once, then at most once every
    `repeat` seconds with a count: a writer that keeps adding junk cannot flood the log."""

    def __init__(
        self, repeat: float = JUNK_REPEAT, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.repeat = repeat
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[int, float]] = {}  # -> (unlogged, last logged)

    def note(self, member: bytes, where: str, cause: str) -> None:
        key = (where, cause)
        now = self.clock()
        with self._lock:
            count, last = self._seen.get(key, (0, -math.inf))
            if now - last < self.repeat:
                self._seen[key] = (count + 1, last)
                return
            self._seen[key] = (0, now)
        shown = repr(member[:40]) + ("..." if len(member) > 40 else "")
        more = f"; {count} more like it since the last warning" if count else ""
        log.warning("dropped %s from %s: not a job id (%s)%s", shown, where, cause, more)


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


def connect(url: str) -> redis.Redis:
    """A connection pool to the Redis at `url` (with a `redis+sentinel://` URL, to the current
    master of its service), with the timeouts both daemons use (connections are made lazily:
    nothing is dialled here)."""
    timeouts = {"socket_timeout": 5, "socket_connect_timeout": 2, "health_check_interval": 10}
    if is_sentinel_url(url):
        return sentinel_client(url, **timeouts)
    return redis.Redis.from_url(url, **timeouts)


def _unavailable(method: Callable[P, R]) -> Callable[P, R]:
    """The queue's errors are its own: a failing Redis raises QueueUnavailable, so no caller
    needs to know the queue is Redis."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except redis.RedisError as e:
            raise QueueUnavailable(str(e)) from e

    return call


class RedisQueue:
    """The JobQueue on one Redis connection pool, and the workers' side of it (pops). Every
    public method raises QueueUnavailable when Redis is away or fails."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._pop = client.register_script(POP_SCRIPT)
        self._expired = client.register_script(EXPIRED_SCRIPT)
        self._enqueue = client.register_script(ENQUEUE_SCRIPT)
        self.dropped = DropLog()
        self._failovers = failovers(client)  # moves of a Sentinel master seen by epoch()

    @_unavailable
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

    @_unavailable
    def pop(
        self, queues: Sequence[str], count: int, lease_seconds: float, ack: Sequence[int] = ()
    ) -> list[int]:
        """Take up to `count` ids, earlier queues first, parking them in `inflight`; first
        acknowledge `ack` (ids claimed since the last pop), saving a round trip."""
        keys = [self.keys.inflight, *(self.keys.queue(q) for q in queues)]
        return self._ids(
            keys, self._pop(keys=keys, args=[count, lease_seconds, *ack]), lease_seconds
        )

    @_unavailable
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
        _, members = pipe.execute()
        return self._ids(keys, members, lease_seconds)

    def _ids(self, keys: list[str], members: list[bytes], lease_seconds: float) -> list[int]:
        """The job ids among popped members. Members that are none are dropped from
        `inflight` (where the pop parked them) by a pop that takes as many in their place, so
        junk costs a round trip, not a slot's share of the queue."""
        ids, junk = self._split(members, keys[1:])
        rounds = 0
        while junk:
            if rounds == JUNK_ROUNDS:  # a flood of junk: leave the rest to the next pop
                self.redis.zrem(keys[0], *junk)
                break
            rounds += 1
            more, junk = self._split(
                self._pop(keys=keys, args=[len(junk), lease_seconds, *junk]), keys[1:]
            )
            ids += more
        return ids

    def _split(self, members: list[bytes], where: Sequence[str]) -> tuple[list[int], list[bytes]]:
        ids: list[int] = []
        junk: list[bytes] = []
        for m in members:
            try:
                ids.append(parse_id(m))
            except ValueError as e:
                junk.append(m)
                self.dropped.note(m, ", ".join(where), str(e))
        return ids, junk

    @_unavailable
    def ack(self, job_ids: Sequence[int]) -> None:
        """The ids were claimed (or found unclaimable): they need no recovery."""
        if job_ids:
            self.redis.zrem(self.keys.inflight, *[str(i) for i in job_ids])

    @_unavailable
    def release(self, job_ids: Sequence[int]) -> None:
        """Hand back ids we took but will not claim: the server puts them back at once."""
        if job_ids:
            self.redis.zadd(self.keys.inflight, {str(i): 0 for i in job_ids}, xx=True)

    @_unavailable
    def expired_inflight(self, limit: int) -> list[int]:
        """Ids taken from a queue whose taker never acknowledged them in time. Expired members
        that are not job ids are dropped from `inflight` here."""
        members = self._expired(keys=[self.keys.inflight], args=[limit])
        ids, junk = self._split(members, [self.keys.inflight])
        if junk:
            self.redis.zrem(self.keys.inflight, *junk)
        return ids

    @_unavailable
    def inflight(self, job_ids: Sequence[int], within: float = math.inf) -> set[int]:
        """Those of `job_ids` a worker has taken and not yet acknowledged, with a deadline at
        most `within` seconds ahead on Redis's clock: a later one (+inf, say) was set by no
        pop, and would keep its job out of the queue for good."""
        if not job_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.zmscore(self.keys.inflight, [str(i) for i in job_ids])
        (secs, micros), scores = pipe.execute()
        horizon = secs + micros / 1e6 + within
        return {
            i for i, sc in zip(job_ids, scores, strict=True) if sc is not None and sc <= horizon
        }

    @_unavailable
    def remove(self, queue: str, job_id: int) -> None:
        """Drop a job id from its queue (e.g. cancelled before it started)."""
        self.redis.zrem(self.keys.queue(queue), str(job_id))

    @_unavailable
    def epoch(self) -> str | None:
        """The mark the server left in this Redis, or None when Redis may have lost ids: the
        mark is gone (Redis restarted empty), or Sentinel moved the master since the last call
        (a replica lags its master, so ids written just before a failover may be missing)."""
        value = self.redis.get(self.keys.epoch)
        moved = failovers(self.redis)
        if moved != self._failovers:
            self._failovers = moved
            return None
        # any bytes a writer left there are an epoch: a decoding error must not stop the check
        return value.decode(errors="replace") if isinstance(value, bytes) else value

    @_unavailable
    def set_epoch(self, value: str) -> None:
        self.redis.set(self.keys.epoch, value)


def check_redis_url(url: str) -> None:
    """InvalidArgument, in one line that shows no password, for a URL dts could not use."""
    if is_sentinel_url(url):
        try:
            parse_sentinel_url(url)
        except ValueError as e:
            raise InvalidArgument(f"--redis-url {redacted_url(url)}: {e}") from None
        return
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise InvalidArgument(
            "--redis-url must start with redis://, rediss://, unix://, redis+sentinel:// or "
            f"rediss+sentinel://: {redacted_url(url)!r}"
        )
    try:  # what redis-py would refuse later, with a traceback: a bad port or query value
        parse_redis_url(url)  # type: ignore[no-untyped-call]
    except ValueError as e:
        raise InvalidArgument(f"--redis-url: {e}") from None
