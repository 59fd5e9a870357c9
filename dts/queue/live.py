"""Live output through Redis, shared by every server of a deployment: who follows which job
(a sorted set of job ids scored by when the interest expires) and the chunks of followed
attempts (a capped stream per attempt that expires after its last chunk)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import redis

from dts.live import Chunk
from dts.queue.redis import Keys

STREAM_MAXLEN = 256  # chunks kept per attempt (each at most 2 * MAX_CHUNK bytes; ~ trimming)
STREAM_TTL = 120  # seconds an attempt's stream outlives its last chunk
READ_COUNT = 32  # chunks one read returns at most

Cursor = str  # the id of the last stream entry read; "0-0" before the first


class LiveOutput:
    """Follow interest and output chunks in Redis. Every method may raise redis.RedisError;
    live output is best effort, the stored output is the truth."""

    def __init__(self, client: redis.Redis, keys: Keys, clock: Callable[[], float] = time.time):
        self.r = client
        self.keys = keys
        self.clock = clock

    def follow(self, job_id: int, ttl: float) -> None:
        """Someone follows `job_id` for the next `ttl` seconds (a later expiry is kept)."""
        self.r.zadd(self.keys.followed, {str(job_id): self.clock() + ttl}, gt=True)

    def followed(self) -> set[int]:
        """The jobs someone follows now; expired interest is dropped."""
        now = self.clock()
        pipe = self.r.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.followed, "-inf", now)
        pipe.zrangebyscore(self.keys.followed, now, "+inf")
        _, members = pipe.execute()
        return {int(m) for m in members if m.isdigit()}

    def publish(self, chunks: Sequence[Chunk]) -> None:
        """Append chunks to their attempts' streams, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for c in chunks:
            key = self.keys.output(c.job_id, c.attempt)
            fields: dict[str, bytes | int] = {
                "o": c.stdout,
                "e": c.stderr,
                "oo": c.stdout_offset,
                "eo": c.stderr_offset,
            }
            pipe.xadd(key, fields, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
            pipe.expire(key, STREAM_TTL)
        pipe.execute()

    def read(self, job_id: int, attempt: int, after: Cursor = "0-0") -> tuple[Cursor, list[Chunk]]:
        """The attempt's chunks after `after` (at most READ_COUNT), and the new cursor."""
        key = self.keys.output(job_id, attempt)
        start = f"({after}" if after != "0-0" else "-"
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.r.xrange(  # type: ignore[assignment]
            key, min=start, count=READ_COUNT
        )
        chunks = []
        for entry_id, f in entries:
            after = entry_id.decode()
            out, err = f.get(b"o", b""), f.get(b"e", b"")
            chunks.append(
                Chunk(job_id, attempt, out, err, int(f.get(b"oo", 0)), int(f.get(b"eo", 0)))
            )
        return after, chunks
