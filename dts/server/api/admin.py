"""The Admin service: what operators call (the admin role when tokens are required), served
beside the Scheduler: Purge, the deletion of old final jobs now."""

from __future__ import annotations

import logging

import grpc

from dts import wire
from dts.server.api.auth import Credential
from dts.server.api.rpc import Pools, Unary, anonymous, unary_handler
from dts.server.retention import PurgeOrder, Retention
from dts.v1 import dts_pb2 as pb

ADMIN_SERVICE = "dts.v1.Admin"

log = logging.getLogger("dts.retention")


class AdminServicer:
    """Unpacks an operator's request, calls retention, packs the answer."""

    def __init__(self, retention: Retention, pools: Pools) -> None:
        self.retention = retention
        self.pools = pools

    def handler(self) -> grpc.GenericRpcHandler:
        purge = Unary(pb.PurgeRequest, self.purge, self.pools.client)
        return grpc.method_handlers_generic_handler(
            ADMIN_SERVICE, {"Purge": unary_handler("Purge", purge, anonymous)}
        )

    def purge(self, request: pb.PurgeRequest, caller: Credential | None) -> pb.PurgeResponse:
        order = PurgeOrder(
            request.older_than,
            frozenset(wire.status_from_pb(s) for s in request.statuses),
            request.queue,
        )
        purged, more = self.retention.purge(order)
        if purged:
            log.info("purge: deleted %d %s%s", purged, order, " (more to go)" if more else "")
        return pb.PurgeResponse(purged=purged, more=more)
