"""The dts client library: a Scheduler connection speaking domain types and dts errors."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dts import wire
from dts.backoff import Backoff
from dts.channel import DEFAULT_SERVER, ChannelSecurity, open_channel
from dts.client.pipeline import PendingSubmit, StreamUnsupported, SubmitPipe
from dts.controls import QueueInfo
from dts.domain import (
    ActivityBucket,
    Attempt,
    Job,
    JobSpec,
    JobStatus,
    Output,
    StatCount,
    WorkerInfo,
)
from dts.errors import DeadlineExceeded, DtsError, ResourceExhausted, Unavailable
from dts.failover import FailoverChannel
from dts.schedule import Schedule
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from dts.wire_schedule import schedule_from_pb

T = TypeVar("T")


def new_key() -> str:
    """A submit's key: random, so no two submits share one."""
    return uuid.uuid4().hex


class Client:
    """A connection to dts-server. Every method raises a dts.errors.DtsError on failure."""

    def __init__(
        self,
        address: str = DEFAULT_SERVER,
        timeout: float = 10.0,
        security: ChannelSecurity | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.channel = open_channel(address, security or ChannelSecurity(), wire.grpc_options())
        self.stub = pb_grpc.SchedulerStub(self.channel)
        self.queues_stub = pb_grpc.QueuesStub(self.channel)
        self.schedules_stub = pb_grpc.SchedulesStub(self.channel)
        self._pipe: SubmitPipe | None = None
        self._pipe_lock = threading.Lock()
        self._streams = True  # False once the server turned out to know no SubmitStream
        # the queues Submit answers named as served by no live worker, for the caller to tell
        self.unserved_queues: set[str] = set()

    def close(self) -> None:
        with self._pipe_lock:
            if self._pipe is not None:
                self._pipe.close()
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise wire.error_from_rpc(e, self.address) from None

    # ---- jobs -----------------------------------------------------------------------------

    def submit(self, specs: Sequence[JobSpec], key: str = "") -> list[Job]:
        """Submit many jobs in one round trip; they are durable when this returns.

        The submit carries a key (`key`, else a new random one), so that when its answer is
        lost and it goes again (to the next server, when several are given) it is not stored
        twice."""
        req = pb.SubmitRequest(
            jobs=[wire.spec_to_pb(s) for s in specs], ids_only=True, key=key or new_key()
        )
        resp = self._call(self.stub.Submit, req, max(self.timeout, 60.0))
        self._note(resp)
        return wire.submitted_jobs(specs, resp)

    def _note(self, resp: pb.SubmitResponse) -> None:
        """Keep what a submit's answer says beside its jobs: the queues nobody serves."""
        self.unserved_queues.update(resp.unserved_queues)

    def submit_async(self, specs: Sequence[JobSpec]) -> PendingSubmit:
        """Send a submit without waiting for its answer; `result()` of what this returns waits.

        Submits made this way go over one SubmitStream call, in order, so a caller can keep
        many on their way (the server stores the ones that arrive together in one commit).
        Each is durable when its result() returns."""
        key = new_key()
        pending = PendingSubmit(specs, lambda: self.submit(specs, key), self._note)
        if not self._streams:
            pending._settle(None, StreamUnsupported())
            return pending
        request = pb.SubmitRequest(jobs=[wire.spec_to_pb(s) for s in specs], ids_only=True, key=key)
        with self._pipe_lock:
            if self._pipe is None or not self._pipe.send(request, pending):
                self._pipe = SubmitPipe(self.stub.SubmitStream, self.address, self._no_streams)
                self._pipe.send(request, pending)
                self._pipe.start()
        return pending

    def submit_one(self, spec: JobSpec) -> Job:
        """Submit one job and wait until it is stored (over the client's SubmitStream)."""
        return self.submit_async([spec]).result(self.timeout)[0]

    def _no_streams(self) -> None:
        self._streams = False

    def get(self, job_id: int) -> Job:
        return wire.job_from_pb(self._call(self.stub.GetJob, pb.JobRef(id=job_id)))

    def wait(self, job_id: int, timeout: float | None = None, reconnect: float = 60.0) -> Job:
        """Block until the job is final; raises DeadlineExceeded after `timeout` seconds.

        A server that goes away (a restart) is waited for, up to `reconnect` seconds at a time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = Backoff(base=0.1, cap=2.0)
        down_since: float | None = None
        while True:
            left = 25.0 if deadline is None else min(25.0, max(0.0, deadline - time.monotonic()))
            req = pb.WaitRequest(id=job_id, timeout=left)
            try:
                job = wire.job_from_pb(self._call(self.stub.WaitJob, req, left + self.timeout))
            except ResourceExhausted:  # the server's waiters are full: ask again in a while
                backoff.wait()
                continue
            except Unavailable:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > reconnect:
                    raise
                backoff.wait()
                continue
            down_since = None
            backoff.reset()
            if job.status.final:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(f"job {job_id} is still {job.status} after {timeout}s")

    def list_jobs(
        self,
        status: JobStatus | None = None,
        queue: str = "",
        limit: int = 50,
        name: str = "",
        before_id: int = 0,
        since: float = 0.0,
        until: float = 0.0,
    ) -> list[Job]:
        """The newest jobs matching, newest first; `before_id` pages on (ids below it), and
        `since`/`until` bound the submit time (0: any)."""
        req = pb.ListJobsRequest(
            status=wire.STATUS_TO_PB[status] if status else pb.JOB_STATUS_UNSPECIFIED,
            queue=queue,
            limit=limit,
            name=name,
            before_id=before_id,
            since=since,
            until=until,
        )
        return [wire.job_from_pb(j) for j in self._call(self.stub.ListJobs, req).jobs]

    def history(self, job_id: int) -> list[Attempt]:
        resp = self._call(self.stub.GetHistory, pb.JobRef(id=job_id))
        return [wire.attempt_from_pb(a) for a in resp.attempts]

    def logs(self, job_id: int, attempt: int = 0) -> Output:
        resp = self._call(self.stub.GetLogs, pb.LogsRequest(id=job_id, attempt=attempt))
        return Output(resp.attempt, resp.stdout, resp.stderr)

    def logs_now(self, job_id: int, attempt: int = 0) -> tuple[Output, bool]:
        """An attempt's output, and whether it is still running (then: its output so far)."""
        resp = self._call(self.stub.GetLogs, pb.LogsRequest(id=job_id, attempt=attempt))
        return Output(resp.attempt, resp.stdout, resp.stderr), resp.running

    def follow(self, request: pb.FollowRequest) -> Iterator[pb.FollowEvent]:
        """FollowLogs' events, as they come (no deadline: the call lasts as long as the job)."""
        try:
            yield from self.stub.FollowLogs(request)
        except grpc.RpcError as e:
            raise wire.error_from_rpc(e, self.address) from None

    def cancel(self, job_id: int) -> Job:
        return wire.job_from_pb(self._call(self.stub.CancelJob, pb.JobRef(id=job_id)))

    def retry(self, job_id: int) -> Job:
        return wire.job_from_pb(self._call(self.stub.RetryJob, pb.JobRef(id=job_id)))

    # ---- cluster --------------------------------------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        resp = self._call(self.stub.ListWorkers, pb.ListWorkersRequest())
        return [wire.worker_from_pb(w) for w in resp.workers]

    def stats(self) -> list[StatCount]:
        resp = self._call(self.stub.GetStats, pb.StatsRequest())
        return [wire.stat_from_pb(c) for c in resp.counts]

    def activity(self, minutes: int = 60) -> list[ActivityBucket]:
        """Jobs finished per minute over the last `minutes`, oldest minute first."""
        resp = self._call(self.stub.GetActivity, pb.ActivityRequest(minutes=minutes))
        return [wire.activity_from_pb(b) for b in resp.buckets]

    def purge(self, older_than: float, statuses: Sequence[JobStatus] = (), queue: str = "") -> int:
        """Delete final jobs (in `statuses`, of `queue`) that finished more than `older_than`
        seconds ago, with their attempts and output; how many. Needs the admin role. The
        server deletes for a few seconds a call: this calls again while it says more are left."""
        req = pb.PurgeRequest(
            older_than=older_than,
            statuses=[wire.STATUS_TO_PB[s] for s in statuses],
            queue=queue,
        )
        stub = pb_grpc.AdminStub(self.channel)
        total = 0
        while True:
            resp = self._call(stub.Purge, req, max(self.timeout, 30.0))
            total += resp.purged
            if not resp.more:
                return total

    # ---- queue controls -------------------------------------------------------------------

    def queues(self) -> list[QueueInfo]:
        """Every queue with jobs, a setting or a live worker, by name."""
        resp = self._call(self.queues_stub.ListQueues, pb.QueueListRequest())
        return [wire.queue_info_from_pb(q) for q in resp.queues]

    def pause_queue(self, name: str) -> QueueInfo:
        """Workers take no new job from the queue (running ones finish), until resumed."""
        resp = self._call(self.queues_stub.PauseQueue, pb.QueueRef(name=name))
        return wire.queue_info_from_pb(resp)

    def resume_queue(self, name: str) -> QueueInfo:
        resp = self._call(self.queues_stub.ResumeQueue, pb.QueueRef(name=name))
        return wire.queue_info_from_pb(resp)

    def set_queue_limit(self, name: str, limit: int | None) -> QueueInfo:
        """At most `limit` jobs of the queue run at once across all workers (None: any)."""
        req = pb.QueueLimitRequest(name=name, limit=limit)
        return wire.queue_info_from_pb(self._call(self.queues_stub.SetQueueLimit, req))

    # ---- schedules ------------------------------------------------------------------------

    def schedules(self) -> list[Schedule]:
        resp = self._call(self.schedules_stub.ListSchedules, pb.ScheduleListRequest())
        return [schedule_from_pb(m) for m in resp.schedules]

    def pause_schedule(self, name: str) -> Schedule:
        """It makes no jobs until resumed."""
        ref = pb.ScheduleRef(name=name)
        return schedule_from_pb(self._call(self.schedules_stub.PauseSchedule, ref))

    def resume_schedule(self, name: str) -> Schedule:
        ref = pb.ScheduleRef(name=name)
        return schedule_from_pb(self._call(self.schedules_stub.ResumeSchedule, ref))

    def run_schedule(self, name: str) -> Job:
        """One job of the schedule now, outside its due times."""
        ref = pb.ScheduleRef(name=name)
        return wire.job_from_pb(self._call(self.schedules_stub.RunSchedule, ref))

    def health_of_each(self) -> list[tuple[str, str | DtsError]]:
        """Each server's health status name, or the error asking it gave, in the order given
        (one entry when the client was given one server)."""
        channel = self.channel
        if not isinstance(channel, FailoverChannel):
            return [(self.address, self._health_or_error(channel, self.address))]
        return [
            (address, self._health_or_error(channel.channel(i), address))
            for i, address in enumerate(channel.addresses)
        ]

    def _health_or_error(self, channel: grpc.Channel, address: str) -> str | DtsError:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=self.timeout
            )
        except grpc.RpcError as e:
            return wire.error_from_rpc(e, address)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def health(self, service: str = "") -> str:
        """The server's gRPC health status name, e.g. SERVING."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
