"""Live output, the server's part: which jobs someone follows (read from Redis by every
server, kept here for heartbeats and claims to consult at no cost), passing workers' chunks
on to Redis, and what a follower or a GetLogs of a running job reads back."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import redis

from dts.domain import Assignment, JobStatus, Lease
from dts.live import LOGS_FOLLOW_TTL, Chunk, joined, split
from dts.queue.live import READ_COUNT, Cursor, LiveOutput
from dts.server.sessions import session_of
from dts.server.store import Store

log = logging.getLogger("dts.live")

ERROR_REPEAT = 60.0  # seconds between two warnings of a failing Redis
FIRST_CHUNK_WAIT = 1.2  # seconds a GetLogs of a running job waits for its first chunk
MAX_SO_FAR_READS = 16  # reads of READ_COUNT chunks one GetLogs makes at most
FULL_READ = READ_COUNT  # chunks of a read that may have more behind it


class LiveHub:
    """Follow interest and chunks, in Redis; a copy of the followed set, refreshed by a duty
    (dts.server.duties.follows) and by this server's own follows at once."""

    def __init__(self, output: LiveOutput, store: Store) -> None:
        self.output = output
        self.store = store
        self._followed: frozenset[int] = frozenset()
        self._warned = 0.0

    def refresh(self) -> None:
        """Read the followed set again (every server runs this a few times a second)."""
        try:
            self._followed = frozenset(self.output.followed())
        except redis.RedisError as e:
            self._trouble("read the followed jobs", e)

    def followed(self, held: Sequence[Lease] | Sequence[Assignment]) -> list[Lease]:
        """Those of the leases (or assignments) whose job someone follows: nothing to do while
        nobody follows anything."""
        now = self._followed
        if not now:
            return []
        return [Lease(h.job_id, h.attempt) for h in held if h.job_id in now]

    def follow(self, job_id: int, ttl: float) -> None:
        """Someone follows the job for `ttl` seconds (renewed while they do)."""
        try:
            self.output.follow(job_id, ttl)
        except redis.RedisError as e:
            self._trouble("record a follow", e)
            return
        if job_id not in self._followed:
            self._followed = self._followed | {job_id}

    def accept(self, name: str, session: str, chunks: Sequence[Chunk]) -> list[Lease]:
        """Pass on the chunks of attempts worker `name` holds (UnknownSession or
        SessionSuperseded for a session not its current one); the leases to send no more of:
        not followed, or not the worker's."""
        keys = {(c.job_id, c.attempt) for c in chunks}
        with self.store.transaction(durable=False) as tx:
            session_of(tx, name, session)
            jobs = {j: tx.get_job(j) for j, _ in keys}
        mine = set()
        for job_id, attempt in keys:
            job = jobs[job_id]
            if (
                job is not None
                and job.status is JobStatus.RUNNING
                and job.attempts == attempt
                and job.worker == name
            ):
                mine.add((job_id, attempt))
        good = [p for c in chunks if (c.job_id, c.attempt) in mine for p in split(c)]
        if good:
            try:
                self.output.publish(good)
            except redis.RedisError as e:
                self._trouble("pass on output", e)
        followed = self._followed
        return [Lease(j, n) for j, n in sorted(keys) if (j, n) not in mine or j not in followed]

    def read(self, job_id: int, attempt: int, after: Cursor) -> tuple[Cursor, list[Chunk]]:
        """An attempt's chunks after the cursor (none while Redis fails)."""
        try:
            return self.output.read(job_id, attempt, after)
        except redis.RedisError as e:
            self._trouble("read output", e)
            return after, []

    def so_far(self, job_id: int, attempt: int) -> tuple[bytes, bytes]:
        """A running attempt's output as its worker sent it so far; it stays followed a few
        seconds, so that a caller who asks again each second sees it grow. The first call
        waits briefly for the worker's first chunk (it carries all the worker kept)."""
        self.follow(job_id, LOGS_FOLLOW_TTL)
        deadline = time.monotonic() + FIRST_CHUNK_WAIT
        chunks: list[Chunk] = []
        cursor: Cursor = "0-0"
        reads = 0
        while True:
            cursor, got = self.read(job_id, attempt, cursor)
            chunks += got
            reads += 1
            if len(got) == READ_COUNT and reads < MAX_SO_FAR_READS:
                continue
            if chunks or time.monotonic() >= deadline:
                return joined(chunks)
            time.sleep(0.1)

    def _trouble(self, what: str, e: Exception) -> None:
        now = time.monotonic()
        if now - self._warned >= ERROR_REPEAT:
            self._warned = now
            log.warning("live output: cannot %s in Redis: %s", what, e)
