"""The Schedules gRPC service: unpack a request, call the schedules' rules, pack the answer."""

from __future__ import annotations

import grpc

from dts import wire
from dts.server.api.auth import Credential
from dts.server.api.rpc import Pools, Unary, anonymous, unary_handler
from dts.server.schedules import Schedules
from dts.v1 import dts_pb2 as pb
from dts.wire_schedule import SERVICE, schedule_from_pb, schedule_to_pb


class SchedulesServicer:
    """What users and scripts call to manage schedules."""

    def __init__(self, schedules: Schedules, pools: Pools) -> None:
        self.s = schedules
        self.pools = pools

    def handler(self) -> grpc.GenericRpcHandler:
        pool = self.pools.client
        unary: dict[str, Unary] = {
            "AddSchedule": Unary(pb.ScheduleAddRequest, self.add, pool),
            "ListSchedules": Unary(pb.ScheduleListRequest, self.list_all, pool),
            "GetSchedule": Unary(pb.ScheduleGetRequest, self.get, pool),
            "PauseSchedule": Unary(pb.ScheduleRef, self.pause, pool),
            "ResumeSchedule": Unary(pb.ScheduleRef, self.resume, pool),
            "RemoveSchedule": Unary(pb.ScheduleRef, self.remove, pool),
            "RunSchedule": Unary(pb.ScheduleRef, self.run, pool),
            "ApplySchedules": Unary(pb.ScheduleApplyRequest, self.apply, pool),
        }
        handlers = {name: unary_handler(name, m, anonymous) for name, m in unary.items()}
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def add(self, request: pb.ScheduleAddRequest, caller: Credential | None) -> pb.Schedule:
        return schedule_to_pb(self.s.add(schedule_from_pb(request.schedule)))

    def list_all(
        self, request: pb.ScheduleListRequest, caller: Credential | None
    ) -> pb.ScheduleListResponse:
        return pb.ScheduleListResponse(schedules=[schedule_to_pb(s) for s in self.s.all()])

    def get(self, request: pb.ScheduleGetRequest, caller: Credential | None) -> pb.ScheduleDetail:
        s, times, jobs = self.s.detail(request.name, request.upcoming, request.jobs)
        return pb.ScheduleDetail(
            schedule=schedule_to_pb(s), upcoming=times, jobs=[wire.job_to_pb(j) for j in jobs]
        )

    def pause(self, request: pb.ScheduleRef, caller: Credential | None) -> pb.Schedule:
        return schedule_to_pb(self.s.pause(request.name))

    def resume(self, request: pb.ScheduleRef, caller: Credential | None) -> pb.Schedule:
        return schedule_to_pb(self.s.resume(request.name))

    def remove(self, request: pb.ScheduleRef, caller: Credential | None) -> pb.Schedule:
        return schedule_to_pb(self.s.remove(request.name))

    def run(self, request: pb.ScheduleRef, caller: Credential | None) -> pb.Job:
        return wire.job_to_pb(self.s.run(request.name))

    def apply(
        self, request: pb.ScheduleApplyRequest, caller: Credential | None
    ) -> pb.ScheduleApplyResponse:
        changes = self.s.apply(
            [schedule_from_pb(m) for m in request.schedules], request.prune, request.dry_run
        )
        return pb.ScheduleApplyResponse(
            changes=[pb.ScheduleChange(name=n, change=c) for n, c in changes]
        )
