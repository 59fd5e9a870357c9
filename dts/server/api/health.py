"""The standard grpc.health.v1 service, which needs no credential (load balancers, `ping`).

It answers without reading the request: every service of dts-server shares one status, so
the server's status is the answer for any service name. A request that is never read is one
that no caller without credentials can make the server wait for or hold in memory (gRPC
takes in a request the server reads whole, up to its 64 MiB message limit, however many
arrive at once); Watch calls are capped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2

SERVICE = "grpc.health.v1.Health"
MAX_WATCHERS = 1000  # Watch calls open at once; more are refused (RESOURCE_EXHAUSTED)

Status: TypeAlias = "health_pb2.HealthCheckResponse.ServingStatus.ValueType"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class Health:
    """The server's serving status. Runs on the server's event loop: `set` and `shutdown`
    must be called there."""

    def __init__(self) -> None:
        self._status: Status = NOT_SERVING
        self._changed = asyncio.Event()
        self._watchers = 0
        self._final = False

    def set(self, status: Status) -> None:
        """The server's status is now `status` (ignored once shut down)."""
        if self._final:
            return
        self._status = status
        self._changed.set()
        self._changed = asyncio.Event()

    def shutdown(self) -> None:
        """NOT_SERVING for good: the server is stopping."""
        self.set(NOT_SERVING)
        self._final = True

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's handlers, shaped as streaming ones: the server reads a unary
        request before it calls a unary handler, and these never read theirs."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Check": grpc.stream_unary_rpc_method_handler(
                    self._check, response_serializer=_serialize
                ),
                "Watch": grpc.stream_stream_rpc_method_handler(
                    self._watch, response_serializer=_serialize
                ),
            },
        )

    async def _check(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=self._status)

    async def _watch(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        if self._watchers >= MAX_WATCHERS:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many watchers ({MAX_WATCHERS})"
            )
        self._watchers += 1
        try:
            last = None
            while True:
                changed = self._changed
                if self._status != last:
                    last = self._status
                    yield health_pb2.HealthCheckResponse(status=last)
                if self._final:
                    return
                await changed.wait()
        finally:
            self._watchers -= 1


def _serialize(message: health_pb2.HealthCheckResponse) -> bytes:
    data: bytes = message.SerializeToString()
    return data
