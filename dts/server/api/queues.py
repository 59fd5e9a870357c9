"""The Queues service: list queues, pause and resume them, set their run limits (thin: the
rules are the coordinator's queue controls)."""

from __future__ import annotations

import grpc

from dts import wire
from dts.server.api.auth import Credential
from dts.server.api.rpc import Pools, Unary, anonymous, unary_handler
from dts.server.coordinator import Coordinator
from dts.v1 import dts_pb2 as pb

QUEUES_SERVICE = "dts.v1.Queues"


class QueuesServicer:
    """What operators call to hold queues back (clients and admins, like the Scheduler)."""

    def __init__(self, coordinator: Coordinator, pools: Pools) -> None:
        self.controls = coordinator.controls
        self.pools = pools

    def handler(self) -> grpc.GenericRpcHandler:
        pool = self.pools.client
        unary: dict[str, Unary] = {
            "ListQueues": Unary(pb.QueueListRequest, self.list_queues, pool),
            "PauseQueue": Unary(pb.QueueRef, self.pause, pool),
            "ResumeQueue": Unary(pb.QueueRef, self.resume, pool),
            "SetQueueLimit": Unary(pb.QueueLimitRequest, self.set_limit, pool),
        }
        handlers = {name: unary_handler(name, m, anonymous) for name, m in unary.items()}
        return grpc.method_handlers_generic_handler(QUEUES_SERVICE, handlers)

    def list_queues(
        self, request: pb.QueueListRequest, caller: Credential | None
    ) -> pb.QueueListResponse:
        return pb.QueueListResponse(
            queues=[wire.queue_info_to_pb(q) for q in self.controls.listing()]
        )

    def pause(self, request: pb.QueueRef, caller: Credential | None) -> pb.QueueInfo:
        return wire.queue_info_to_pb(self.controls.pause(request.name))

    def resume(self, request: pb.QueueRef, caller: Credential | None) -> pb.QueueInfo:
        return wire.queue_info_to_pb(self.controls.resume(request.name))

    def set_limit(self, request: pb.QueueLimitRequest, caller: Credential | None) -> pb.QueueInfo:
        limit = request.limit if request.HasField("limit") else None
        return wire.queue_info_to_pb(self.controls.set_limit(request.name, limit))
