"""Several servers behind one channel: a call goes to the server last reached, and moves on to
the next when that one is unavailable, so a client or worker given every server's address
carries on when one of them dies or is cut off."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

log = logging.getLogger("dts.failover")

ConnState = grpc.ChannelConnectivity
DOWN = (ConnState.TRANSIENT_FAILURE, ConnState.SHUTDOWN)
# How a failed call shows that its server, not the call, was the problem: unavailable, or a
# deadline spent waiting for a connection that never came (a host that does not answer).
MOVE_ON = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _current_method(kind: str) -> Any:
    """A grpc.Channel method making multicallables of `kind` bound to the current server."""

    def make(
        self: FailoverChannel,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Current(self, kind, (method, request_serializer, response_deserializer))

    return make


class FailoverChannel(grpc.Channel):
    """A grpc.Channel over one channel per address (opened by `dial` when first used).

    Unary calls that fail because their server is away are made again on the next server;
    they must be safe to repeat (dts's are: submits carry a key, reports are fenced). Streams
    and `.future()` calls go to the current server only: their callers retry."""

    def __init__(self, addresses: Sequence[str], dial: Callable[[str], grpc.Channel]) -> None:
        if not addresses:
            raise ValueError("no server address")
        self.addresses = list(addresses)
        self._dial = dial
        self._channels: list[grpc.Channel | None] = [None] * len(addresses)
        self._states: list[ConnState] = [ConnState.IDLE] * len(addresses)
        self._current = 0
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """The server calls go to now."""
        return self.addresses[self._current]

    def channel(self, i: int) -> grpc.Channel:
        with self._lock:
            ch = self._channels[i]
            if ch is None:
                ch = self._channels[i] = self._dial(self.addresses[i])
                ch.subscribe(self._tracker(i), try_to_connect=False)
            return ch

    def _tracker(self, i: int) -> Callable[[ConnState], None]:
        def track(state: ConnState) -> None:
            self._states[i] = state

        return track

    def order(self) -> list[int]:
        """The servers to try, in turn: the current one first unless it is known to be down,
        then the others, those known to be down last."""
        n = len(self.addresses)
        turn = [(self._current + k) % n for k in range(n)]
        return sorted(turn, key=lambda i: self._states[i] in DOWN)

    def attempt(self, call: Callable[[grpc.Channel], Any]) -> Any:
        """`call` on each server in turn until one is not away; its answer, or the last error."""
        tried = self.order()
        for k, i in enumerate(tried):
            try:
                answer = call(self.channel(i))
            except grpc.RpcError as e:
                away = e.code() in MOVE_ON and (
                    e.code() is grpc.StatusCode.UNAVAILABLE
                    or self._states[i] is not ConnState.READY
                )
                if not away or k == len(tried) - 1:
                    raise
                log.debug("server %s is away (%s); trying the next", self.addresses[i], e.code())
                continue
            if i != self._current:
                self._current = i
                log.info("now talking to server %s", self.addresses[i])
            return answer
        raise AssertionError("unreachable")

    # ---- grpc.Channel -----------------------------------------------------------------------

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Unary(self, (method, request_serializer, response_deserializer))

    # the streaming kinds: each call goes to the server calls go to now (their callers retry)
    stream_stream = _current_method("stream_stream")
    unary_stream = _current_method("unary_stream")
    stream_unary = _current_method("stream_unary")

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self.channel(self._current).subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self.channel(self._current).unsubscribe(callback)

    def close(self) -> None:
        with self._lock:
            for ch in self._channels:
                if ch is not None:
                    ch.close()
            self._channels = [None] * len(self.addresses)

    def __enter__(self) -> FailoverChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Unary:
    """A unary method over every server: called, it tries each in turn."""

    def __init__(self, over: FailoverChannel, method: tuple[str, Any, Any]) -> None:
        self._over = over
        self._method = method

    def _on(self, ch: grpc.Channel) -> Any:
        return ch.unary_unary(*self._method)

    def __call__(self, request: Any, **kw: Any) -> Any:
        return self._over.attempt(lambda ch: self._on(ch)(request, **kw))

    def with_call(self, request: Any, **kw: Any) -> Any:
        return self._over.attempt(lambda ch: self._on(ch).with_call(request, **kw))

    def future(self, request: Any, **kw: Any) -> Any:
        return self._on(self._over.channel(self._over.order()[0])).future(request, **kw)


class _Current:
    """A streaming method: each call goes to the server calls go to now."""

    def __init__(self, over: FailoverChannel, kind: str, method: tuple[str, Any, Any]) -> None:
        self._over = over
        self._kind = kind
        self._method = method

    def _on(self) -> Any:
        ch = self._over.channel(self._over.order()[0])
        return getattr(ch, self._kind)(*self._method)

    def __call__(self, request: Any, **kw: Any) -> Any:
        return self._on()(request, **kw)

    def future(self, request: Any, **kw: Any) -> Any:
        return self._on().future(request, **kw)

    def with_call(self, request: Any, **kw: Any) -> Any:
        return self._on().with_call(request, **kw)
