"""The gRPC services: unpack a request, call the coordinator, pack the answer. No rules here.

Unary methods are plain functions run in an executor thread (dts.rpc); the two that wait —
WaitJob and SubmitStream — are coroutines, so waiting holds no thread."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import Message

from dts import wire, wire_live
from dts.domain import Job, JobSpec, JobStatus
from dts.errors import DeadlineExceeded, DtsError, InvalidArgument, PermissionDenied, UnknownSession
from dts.server.api.auth import Credential
from dts.server.api.follow import Follows
from dts.server.api.rpc import (
    Context,
    Identify,
    Pools,
    Unary,
    abort,
    anonymous,
    guarded,
    parse,
    run_in,
    unary_handler,
)
from dts.server.coordinator import Coordinator
from dts.server.dependencies import described
from dts.server.live import LiveHub
from dts.server.serving import ServedQueues
from dts.server.waiters import MAX_WAIT, check_wait_timeout
from dts.v1 import dts_pb2 as pb

SCHEDULER = "dts.v1.Scheduler"
WORKER_SERVICE = "dts.v1.WorkerService"
MAX_GROUP = 256  # submits of one stream stored in one transaction
STREAM_IDLE = 60.0  # seconds a SubmitStream may sit unused before the server ends it
END = object()  # the stream's requests are over (or the server is stopping)


def _id(value: int) -> int:
    if value <= 0:
        raise InvalidArgument(f"job id must be a positive integer, got {value}")
    return value


class SchedulerServicer:
    """What users and scripts call."""

    def __init__(self, coordinator: Coordinator, pools: Pools, hub: LiveHub) -> None:
        self.c = coordinator
        self.pools = pools
        self.hub = hub  # live output
        self.follows = Follows(coordinator, hub, pools)
        self._inboxes: set[asyncio.Queue[object]] = set()
        self._ended = False
        self.served = ServedQueues(coordinator.workers)

    def handler(self) -> grpc.GenericRpcHandler:
        pool = self.pools.client
        unary: dict[str, Unary] = {
            "Submit": Unary(pb.SubmitRequest, self.submit, pool),
            "GetJob": Unary(pb.JobRef, self.get_job, pool),
            "ListJobs": Unary(pb.ListJobsRequest, self.list_jobs, pool),
            "GetHistory": Unary(pb.JobRef, self.history, pool),
            "GetLogs": Unary(pb.LogsRequest, self.logs, pool),
            "CancelJob": Unary(pb.JobRef, self.cancel, pool),
            "RetryJob": Unary(pb.JobRef, self.retry, pool),
            "ListWorkers": Unary(pb.ListWorkersRequest, self.workers, pool),
            "GetStats": Unary(pb.StatsRequest, self.stats, pool),
            "GetActivity": Unary(pb.ActivityRequest, self.activity, pool),
        }
        handlers = {name: unary_handler(name, m, anonymous) for name, m in unary.items()}
        handlers["WaitJob"] = grpc.unary_unary_rpc_method_handler(
            guarded("WaitJob", self.wait_job), response_serializer=_serialize
        )
        handlers["SubmitStream"] = grpc.stream_stream_rpc_method_handler(
            self.submit_stream, response_serializer=_serialize
        )
        handlers["FollowLogs"] = self.follows.handler()
        return grpc.method_handlers_generic_handler(SCHEDULER, handlers)

    # ---- unary, in an executor thread ----------------------------------------------------

    def submit(self, request: pb.SubmitRequest, caller: Credential | None) -> pb.SubmitResponse:
        jobs = self.c.submit([wire.spec_from_pb(s) for s in request.jobs], request.key)
        if request.ids_only:
            answer = _lean_answer(jobs, self.c)
        else:
            answer = pb.SubmitResponse(jobs=[wire.job_to_pb(j) for j in jobs])
        self._tell_unserved(answer, jobs)
        return answer

    def _tell_unserved(self, answer: pb.SubmitResponse, outcome: list[Job] | DtsError) -> None:
        """Name in `answer` the queues of the jobs that no live worker serves."""
        if not isinstance(outcome, DtsError):
            answer.unserved_queues.extend(self.served.unserved({j.spec.queue for j in outcome}))

    def get_job(self, request: pb.JobRef, caller: Credential | None) -> pb.Job:
        return wire.job_to_pb(described(self.c.store, self.c.get(_id(request.id))))

    def list_jobs(
        self, request: pb.ListJobsRequest, caller: Credential | None
    ) -> pb.ListJobsResponse:
        status = wire.status_from_pb(request.status) if request.status else None
        jobs = self.c.list_jobs(
            status,
            request.queue,
            request.limit,
            name=request.name or None,
            before_id=request.before_id or None,
            since=request.since or None,
            until=request.until or None,
        )
        return pb.ListJobsResponse(jobs=[wire.job_to_pb(j) for j in jobs])

    def history(self, request: pb.JobRef, caller: Credential | None) -> pb.HistoryResponse:
        attempts = self.c.history(_id(request.id))
        return pb.HistoryResponse(attempts=[wire.attempt_to_pb(a) for a in attempts])

    def logs(self, request: pb.LogsRequest, caller: Credential | None) -> pb.LogsResponse:
        job_id = _id(request.id)
        out = self.c.logs(job_id, request.attempt)
        job = self.c.get(job_id)
        if job.status is JobStatus.RUNNING and out.attempt == job.attempts:
            running = self.hub.so_far(job_id, out.attempt)  # what the worker sent so far
            if running is not None:
                return pb.LogsResponse(
                    attempt=out.attempt, stdout=running[0], stderr=running[1], running=True
                )
        return pb.LogsResponse(attempt=out.attempt, stdout=out.stdout, stderr=out.stderr)

    def cancel(self, request: pb.JobRef, caller: Credential | None) -> pb.Job:
        return wire.job_to_pb(self.c.cancel(_id(request.id)))

    def retry(self, request: pb.JobRef, caller: Credential | None) -> pb.Job:
        return wire.job_to_pb(self.c.retry(_id(request.id)))

    def workers(
        self, request: pb.ListWorkersRequest, caller: Credential | None
    ) -> pb.ListWorkersResponse:
        return pb.ListWorkersResponse(workers=[wire.worker_to_pb(w) for w in self.c.workers()])

    def stats(self, request: pb.StatsRequest, caller: Credential | None) -> pb.StatsResponse:
        return pb.StatsResponse(counts=[wire.stat_to_pb(s) for s in self.c.stats()])

    def activity(
        self, request: pb.ActivityRequest, caller: Credential | None
    ) -> pb.ActivityResponse:
        buckets = self.c.activity(request.minutes)
        return pb.ActivityResponse(buckets=[wire.activity_to_pb(b) for b in buckets])

    # ---- waiting, on the event loop -------------------------------------------------------

    async def wait_job(self, raw: bytes, context: Context) -> pb.Job:
        """The job once final, or as it is after the request's timeout (capped): a long poll
        that holds no thread while it waits."""
        request: pb.WaitRequest = parse(pb.WaitRequest, raw)
        job_id = _id(request.id)
        check_wait_timeout(request.timeout)
        waker = LoopWaker(asyncio.get_running_loop())
        self.c.add_waiter(job_id, waker)  # before the read: an end in between still wakes us
        try:
            final, answer = await run_in(self.pools.client, self._look, job_id)
            if not final:
                await waker.wait(min(request.timeout, MAX_WAIT))
                if waker.job is not None:  # handed over by the commit that ended it
                    return wire.job_to_pb(waker.job)
                final, answer = await run_in(self.pools.client, self._look, job_id)
        finally:
            self.c.remove_waiter(job_id, waker)
        return answer

    def _look(self, job_id: int) -> tuple[bool, pb.Job]:
        """Whether the job is final, and its answer: one trip to the pool, not two."""
        job = self.c.get(job_id)
        return job.status.final, wire.job_to_pb(job)

    def end_streams(self) -> None:
        """The server is stopping: answer what each open SubmitStream has read, then end it;
        end FollowLogs streams. Runs on the event loop."""
        self._ended = True
        self.follows.ended = True
        for inbox in self._inboxes:
            inbox.put_nowait(END)

    async def submit_stream(
        self, raws: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[pb.SubmitResponse]:
        """Submits answered in order. A reader task takes requests off the wire as they come,
        so the ones that arrive while a group is being stored go together into the next
        group: one transaction, one commit."""
        inbox: asyncio.Queue[object] = asyncio.Queue()
        self._inboxes.add(inbox)
        if self._ended:
            inbox.put_nowait(END)
        reader = asyncio.create_task(_read_into(raws, inbox))
        try:
            while True:
                try:
                    first = await asyncio.wait_for(inbox.get(), STREAM_IDLE)
                except TimeoutError:
                    raise DeadlineExceeded(f"submit stream idle for {STREAM_IDLE:g}s") from None
                group, last = _group(first, inbox)
                if group:
                    answers, broken = await run_in(self.pools.client, self._store_group, group)
                    for answer in answers:
                        yield answer
                    if broken is not None:
                        raise broken
                if last is END:
                    return
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort(e, "SubmitStream", context)
        finally:
            reader.cancel()
            self._inboxes.discard(inbox)

    def _store_group(self, group: list[bytes]) -> tuple[list[pb.SubmitResponse], DtsError | None]:
        """Parse, store (one commit) and answer a group of submits, in an executor thread.
        A submit that does not parse ends the stream: the ones before it are stored and
        answered, and its error is returned for the stream to end with."""
        batches: list[list[JobSpec]] = []
        keys: list[str] = []
        broken: DtsError | None = None
        for raw in group:
            try:
                request = parse(pb.SubmitRequest, raw)
                batches.append([wire.spec_from_pb(s) for s in request.jobs])
                keys.append(request.key)
            except DtsError as e:
                broken = e
                break
        outcomes = self.c.store_submits(batches, keys) if batches else []
        self.c.queue_submitted([j for o in outcomes if not isinstance(o, DtsError) for j in o])
        answers = []
        for outcome in outcomes:
            answers.append(_lean_answer(outcome, self.c))
            self._tell_unserved(answers[-1], outcome)
        return answers, broken


class LoopWaker:
    """A waiter the coordinator wakes from any thread; the call awaits it on the loop. Woken
    by `take`, it holds the final job, read in the thread of the commit that ended it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        self.job: Job | None = None

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._event.set)

    def take(self, job: Job) -> None:
        self.job = job
        self.set()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


async def _read_into(raws: AsyncIterator[bytes], inbox: asyncio.Queue[object]) -> None:
    try:
        async for raw in raws:
            inbox.put_nowait(raw)
    except asyncio.CancelledError:
        raise
    except Exception:  # the call ended (cancelled, connection gone)
        pass
    inbox.put_nowait(END)


def _group(first: object, inbox: asyncio.Queue[object]) -> tuple[list[bytes], object]:
    """`first` and the requests already waiting behind it (up to MAX_GROUP); and what ended
    the group early if it was not a request (END), else None."""
    group: list[bytes] = []
    item: object = first
    while isinstance(item, bytes):
        group.append(item)
        if len(group) >= MAX_GROUP:
            return group, None
        try:
            item = inbox.get_nowait()
        except asyncio.QueueEmpty:
            return group, None
    return group, item


def _lean_answer(outcome: list[Job] | DtsError, c: Coordinator) -> pb.SubmitResponse:
    if isinstance(outcome, DtsError):
        return pb.SubmitResponse(code=wire.status_code(outcome).value[0], message=outcome.message)
    if any(j.spec.waits and j.status is not JobStatus.WAITING for j in outcome):
        # judged at once (a dependency was final): the client could not rebuild its status
        return pb.SubmitResponse(jobs=[wire.job_to_pb(j) for j in outcome])
    st = c.settings
    made = [j for j in outcome if not j.existing] or outcome
    return pb.SubmitResponse(
        ids=[j.id for j in outcome],
        created_at=made[0].created_at,
        default_retries=st.default_retries,
        default_backoff=st.default_backoff,
        default_timeout=st.default_timeout,
        existing=[wire.job_to_pb(j) for j in outcome if j.existing],
    )


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class WorkerServicer:
    """What workers call. A worker token bound to a name may act only as that worker."""

    def __init__(
        self, coordinator: Coordinator, pools: Pools, key_prefix: str, hub: LiveHub
    ) -> None:
        self.c = coordinator
        self.pools = pools
        self.hub = hub  # live output: which leases are followed; chunks passed on
        self.key_prefix = key_prefix  # of the Redis keys, told to each worker that registers

    def handler(self, identify: Identify) -> grpc.GenericRpcHandler:
        unary: dict[str, Unary] = {
            "Register": Unary(pb.RegisterRequest, self.register, self.pools.worker),
            "Heartbeat": Unary(pb.HeartbeatRequest, self.heartbeat, self.pools.lease),
            "Exchange": Unary(pb.ExchangeRequest, self.exchange, self.pools.worker),
            "Unregister": Unary(pb.UnregisterRequest, self.unregister, self.pools.worker),
            "SendOutput": Unary(pb.OutputRequest, self.send_output, self.pools.worker),
        }
        handlers = {name: unary_handler(name, m, identify) for name, m in unary.items()}
        return grpc.method_handlers_generic_handler(WORKER_SERVICE, handlers)

    def register(
        self, request: pb.RegisterRequest, caller: Credential | None
    ) -> pb.RegisterResponse:
        _as_worker(caller, request.name, "Register")
        session = self.c.register(
            request.name,
            request.host,
            request.pid,
            request.concurrency,
            list(request.queues),
            caller.id if caller is not None else "",
        )
        st = self.c.settings
        return pb.RegisterResponse(
            session=session,
            lease_seconds=st.worker_timeout,
            heartbeat_interval=st.heartbeat_interval,
            key_prefix=self.key_prefix,
        )

    def heartbeat(
        self, request: pb.HeartbeatRequest, caller: Credential | None
    ) -> pb.HeartbeatResponse:
        _as_worker(caller, request.name, "Heartbeat")
        leases = [wire.lease_from_pb(lease) for lease in request.leases]
        try:
            stale, held = self.c.heartbeat(request.name, request.session, leases, request.draining)
        except UnknownSession:
            return pb.HeartbeatResponse(reregister=True)
        return pb.HeartbeatResponse(
            cancel=[wire.lease_to_pb(s) for s in stale],
            paused_queues=held.paused,
            full_queues=held.full,
            followed=[wire.lease_to_pb(f) for f in self.hub.followed(leases)],
        )

    def exchange(
        self, request: pb.ExchangeRequest, caller: Credential | None
    ) -> pb.ExchangeResponse:
        _as_worker(caller, request.name, "Exchange")
        results = [wire.result_from_pb(r) for r in request.results]
        acks, assignments, held = self.c.exchange(
            request.name, request.session, results, list(request.claim)
        )
        return pb.ExchangeResponse(
            acks=[
                pb.Ack(job_id=r.job_id, attempt=r.attempt, accepted=ok, reason=why)
                for r, (ok, why) in zip(results, acks, strict=True)
            ],
            assignments=[wire.assignment_to_pb(a) for a in assignments],
            paused_queues=held.paused,
            full_queues=held.full,
            followed=[wire.lease_to_pb(f) for f in self.hub.followed(assignments)],
        )

    def send_output(
        self, request: pb.OutputRequest, caller: Credential | None
    ) -> pb.OutputResponse:
        _as_worker(caller, request.name, "SendOutput")
        chunks = [wire_live.chunk_from_pb(c) for c in request.chunks]
        stop = self.hub.accept(request.name, request.session, chunks)
        return pb.OutputResponse(unfollowed=[wire.lease_to_pb(lease) for lease in stop])

    def unregister(
        self, request: pb.UnregisterRequest, caller: Credential | None
    ) -> pb.UnregisterResponse:
        _as_worker(caller, request.name, "Unregister")
        self.c.unregister(request.name, request.session)
        return pb.UnregisterResponse()


def _as_worker(caller: Credential | None, claimed: str, call: str) -> None:
    """A worker token bound to a name may only act as that worker."""
    if caller is not None and caller.name and claimed != caller.name:
        raise PermissionDenied(
            f"this token belongs to worker {caller.name}; {call} as {claimed} refused"
        )
