"""The standard grpc.health.v1 service, which needs no credential (load balancers, `ping`):
served so that no number of callers who never send their request, or who watch forever, can
hold the server's threads or unbounded memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TypeAlias

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

SERVICE = "grpc.health.v1.Health"
READ_TIMEOUT = 5.0  # seconds a health call may take to send its request
MAX_WATCHERS = 1000  # Watch calls open at once; more are refused (RESOURCE_EXHAUSTED)

Status: TypeAlias = "health_pb2.HealthCheckResponse.ServingStatus.ValueType"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class Health:
    """Serving status per service name ("" is the server as a whole). Runs on the server's
    event loop: `set` and `shutdown` must be called there."""

    def __init__(self, services: Iterable[str]) -> None:
        self._status: dict[str, Status] = {name: NOT_SERVING for name in ("", *services)}
        self._changed = asyncio.Event()
        self._watchers = 0
        self._final = False

    def set(self, status: Status) -> None:
        """Every service takes `status` (ignored once shut down)."""
        if self._final:
            return
        for name in self._status:
            self._status[name] = status
        self._changed.set()
        self._changed = asyncio.Event()

    def shutdown(self) -> None:
        """NOT_SERVING for good: the server is stopping."""
        self.set(NOT_SERVING)
        self._final = True

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's handlers. Both take their request through a stream-shaped handler,
        so the wait for it is bounded by READ_TIMEOUT instead of lasting as long as the
        caller likes."""
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
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> health_pb2.HealthCheckResponse:
        request = await _read(requests, context)
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def _watch(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        request = await _read(requests, context)
        if self._watchers >= MAX_WATCHERS:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many watchers ({MAX_WATCHERS})"
            )
        self._watchers += 1
        try:
            last = None
            while True:
                changed = self._changed
                status = self._status.get(request.service, UNKNOWN)
                if status != last:
                    yield health_pb2.HealthCheckResponse(status=status)
                    last = status
                if self._final:
                    return
                await changed.wait()
        finally:
            self._watchers -= 1


async def _read(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> health_pb2.HealthCheckRequest:
    try:
        raw = await asyncio.wait_for(anext(requests), READ_TIMEOUT)
    except TimeoutError:
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"no request within {READ_TIMEOUT:g}s"
        )
    except StopAsyncIteration:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request sent")
    try:
        return health_pb2.HealthCheckRequest.FromString(raw)
    except DecodeError as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request does not parse: {e}")
    raise AssertionError("unreachable")  # abort raises


def _serialize(message: health_pb2.HealthCheckResponse) -> bytes:
    data: bytes = message.SerializeToString()
    return data
