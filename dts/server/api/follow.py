"""FollowLogs: a job's output as it is written, into its retries, ending with the job.

Each attempt's bytes are sent once, in order, at their offsets: live chunks (from Redis, any
server's worker) while the attempt runs, then whatever the follower has not got of the
attempt's stored output once it ends, so what it got is the stored output."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc

from dts import wire
from dts.domain import Attempt, Job, JobStatus, Outcome
from dts.errors import InvalidArgument, NotFound
from dts.live import FOLLOW_RENEW, FOLLOW_TTL, Chunk, fresh, rest
from dts.server.api.auth import Handler
from dts.server.api.rpc import Context, Pools, abort, parse, run_in
from dts.server.coordinator import Coordinator
from dts.server.live import FULL_READ, LiveHub
from dts.v1 import dts_pb2 as pb

POLL = 0.2  # seconds between reads of a running attempt's chunks
LOOK_EVERY = 1.0  # seconds between looks at the job (its end wakes the follow at once)


class Follows:
    """Serves FollowLogs streams, on the event loop; reads in the client pool."""

    def __init__(self, coordinator: Coordinator, hub: LiveHub, pools: Pools) -> None:
        self.c = coordinator
        self.hub = hub
        self.pools = pools
        self.ended = False  # the server is stopping: end every stream (clients follow on)

    def handler(self) -> Handler:
        return grpc.unary_stream_rpc_method_handler(
            self.follow, response_serializer=lambda m: m.SerializeToString()
        )

    async def follow(self, raw: bytes, context: Context) -> AsyncIterator[pb.FollowEvent]:
        try:
            request: pb.FollowRequest = parse(pb.FollowRequest, raw)
            if request.id <= 0:
                raise InvalidArgument(f"job id must be a positive integer, got {request.id}")
            if request.attempt < 0 or request.stdout_offset < 0 or request.stderr_offset < 0:
                raise InvalidArgument("attempt and offsets must not be negative")
            # a follow counts among the calls waiting for jobs (bounded: --max-waiters)
            nudge = Nudge(asyncio.get_running_loop())
            self.c.add_waiter(request.id, nudge)
            try:
                async for event in self._events(request, nudge):
                    yield event
            finally:
                self.c.remove_waiter(request.id, nudge)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort(e, "FollowLogs", context)

    async def _job(self, job_id: int) -> Job:
        job = await run_in(self.pools.client, self.c.get, job_id)
        return job

    async def _events(
        self, request: pb.FollowRequest, nudge: Nudge
    ) -> AsyncIterator[pb.FollowEvent]:
        job_id = request.id
        job = await self._job(job_id)
        if request.attempt > max(job.attempts, 1):
            raise NotFound(f"job {job_id} has no attempt {request.attempt} (it has {job.attempts})")
        only = request.attempt > 0 and not request.onward
        n = request.attempt or max(job.attempts, 1)
        have = [request.stdout_offset, request.stderr_offset]
        cursor = "0-0"
        renew_at = 0.0
        look_at = time.monotonic() + LOOK_EVERY
        while not self.ended:
            if time.monotonic() >= renew_at:
                await run_in(self.pools.client, self.hub.follow, job_id, FOLLOW_TTL)
                renew_at = time.monotonic() + FOLLOW_RENEW
            if job.attempts >= n:
                cursor, chunks = await run_in(self.pools.client, self.hub.read, job_id, n, cursor)
                for c in chunks:
                    event = _live_event(c, have)
                    if event is not None:
                        yield event
                if len(chunks) == FULL_READ:
                    continue  # more waiting: read on before looking at the job
            if job.attempts >= n and (job.attempts > n or job.status is not JobStatus.RUNNING):
                # attempt n is over: what the follower lacks of it, from the stored output
                end = await run_in(self.pools.client, self._ending, job_id, n, have)
                if end is not None:
                    yield end
                if only or (job.status.final and job.attempts == n):
                    yield pb.FollowEvent(attempt=n, job=wire.job_to_pb(job))
                    return
                note = await run_in(self.pools.client, self._retry_note, job, n)
                yield pb.FollowEvent(attempt=n, note=note)
                n, have, cursor = n + 1, [0, 0], "0-0"
                continue
            if job.attempts < n and job.status.final:  # ended before the next attempt began
                yield pb.FollowEvent(attempt=job.attempts, job=wire.job_to_pb(job))
                return
            running = job.attempts == n and job.status is JobStatus.RUNNING
            if await nudge.wait(POLL if running else LOOK_EVERY) or time.monotonic() >= look_at:
                job = await self._job(job_id)
                look_at = time.monotonic() + LOOK_EVERY

    def _ending(self, job_id: int, n: int, have: list[int]) -> pb.FollowEvent | None:
        out = self.c.store.output(job_id, n)
        if out is None:
            return None
        stdout, stderr = rest(out.stdout, have[0]), rest(out.stderr, have[1])
        if not stdout and not stderr:
            return None
        event = pb.FollowEvent(
            attempt=n, stdout=stdout, stderr=stderr, stdout_offset=have[0], stderr_offset=have[1]
        )
        have[0] += len(stdout)
        have[1] += len(stderr)
        return event

    def _retry_note(self, job: Job, n: int) -> str:
        attempts = {a.attempt: a for a in self.c.store.attempts(job.id)}
        return retry_note(attempts.get(n), job, n, attempts.get(n + 1))


class Nudge:
    """A follow's place among the waiters: woken from any thread when its job may have ended."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody follows any more
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """Whether it was woken within `timeout` seconds (and is ready to be woken again)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        woken = self._event.is_set()
        self._event.clear()
        return woken


def retry_note(attempt: Attempt | None, job: Job, n: int, next_one: Attempt | None = None) -> str:
    """`attempt 1 failed (exit 7); retry in 2s`: an attempt ended and another will run."""
    if attempt is None:
        return f"attempt {n} ended; next attempt"
    verb = "lost" if attempt.outcome is Outcome.LOST else "failed"
    why = attempt.error
    if attempt.exit_code is not None and (not why or why.startswith("exited with code")):
        why = f"exit {attempt.exit_code}"
    elif attempt.exit_code is not None and attempt.outcome is not Outcome.TIMED_OUT:
        why = f"exit {attempt.exit_code}: {why}"
    if attempt.outcome is Outcome.RELEASED:
        verb = "was released"
    # when the next attempt is due: the retry's time while it waits, else when it began
    due = job.run_at if job.status is JobStatus.SCHEDULED and job.attempts == n else None
    if due is None and next_one is not None:
        due = next_one.started_at
    when = "now"
    if due is not None and attempt.finished_at is not None and due > attempt.finished_at + 0.05:
        when = f"in {round(due - attempt.finished_at, 1):g}s"
    return f"attempt {n} {verb}{f' ({why})' if why else ''}; retry {when}"


def _live_event(c: Chunk, have: list[int]) -> pb.FollowEvent | None:
    """The part of a chunk the follower has not got, if any; `have` moves past it."""
    oo, eo = have
    stdout, have[0] = fresh(c.stdout, c.stdout_offset, have[0])
    stderr, have[1] = fresh(c.stderr, c.stderr_offset, have[1])
    if not stdout and not stderr:
        return None
    return pb.FollowEvent(
        attempt=c.attempt,
        stdout=stdout,
        stderr=stderr,
        stdout_offset=have[0] - len(stdout) if stdout else oo,
        stderr_offset=have[1] - len(stderr) if stderr else eo,
    )
