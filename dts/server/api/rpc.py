"""How dts-server serves calls: an asyncio gRPC server on an event-loop thread of its own, so a
call that waits (a long poll, a stream between submits, a caller that never sends its
request) holds no thread; the work of each call (parsing, the store, the answer's bytes) runs
in a bounded executor, one per kind of caller, so no kind of call can take the threads
another needs; and a DtsError becomes the call's status in one place."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from dts import wire
from dts.errors import DtsError, InvalidArgument
from dts.server.api.auth import Credential, Handler

log = logging.getLogger("dts.rpc")

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]
Metadata = Iterable[tuple[str, str | bytes]]


class Pools:
    """The executors that do the calls' work: client calls, worker calls (register, exchange),
    and lease renewals (heartbeats) alone, so that neither users nor busy workers can delay
    the renewals that keep running jobs alive."""

    def __init__(self, threads: int) -> None:
        self.client = ThreadPoolExecutor(threads, thread_name_prefix="dts-client-call")
        self.worker = ThreadPoolExecutor(threads, thread_name_prefix="dts-worker-call")
        self.lease = ThreadPoolExecutor(2, thread_name_prefix="dts-lease-call")

    def shutdown(self) -> None:
        """Wait for the work already started; nothing new is taken."""
        for pool in (self.client, self.worker, self.lease):
            pool.shutdown(wait=True, cancel_futures=True)


async def run_in(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in `pool`, awaited without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))


def _ignore(e: BaseException) -> None:
    pass


# Told of the error of every call that ends with one: the one place calls fail, where the
# metrics count the database's errors (dts-server sets it when it serves metrics).
on_failure: Callable[[BaseException], None] = _ignore


async def abort(e: BaseException, name: str, context: Context) -> NoReturn:
    """End the call with the status of a dts error, or INTERNAL (logged) for anything else."""
    on_failure(e)
    if isinstance(e, DtsError):
        await context.abort(wire.status_code(e), e.message, wire.FROM_SERVER)
    log.error("internal error in %s", name, exc_info=e)
    await context.abort(grpc.StatusCode.INTERNAL, "internal server error (see the server log)")
    raise AssertionError("unreachable")  # abort raises


def parse(kind: type[Message], raw: bytes) -> Any:
    """A request from its bytes; INVALID_ARGUMENT (not gRPC's INTERNAL and a traceback in
    the log) for bytes that do not parse, such as invalid UTF-8 in a string field."""
    try:
        return kind.FromString(raw)
    except DecodeError as e:
        raise InvalidArgument(f"request does not parse: {e}") from None


# A unary method's work: the parsed request and the caller's credential (None without
# tokens) in, the answer out. It runs in an executor thread.
Work = Callable[[Any, Credential | None], Message]
Identify = Callable[[Metadata], Credential | None]


def anonymous(metadata: Metadata) -> None:
    """For calls whose work does not depend on who calls (tokens, if any, were checked)."""
    return None


@dataclass(frozen=True)
class Unary:
    """A unary method served in an executor: request type, work, and which pool runs it."""

    request: type[Message]
    work: Work
    pool: ThreadPoolExecutor


def unary_handler(name: str, method: Unary, identify: Identify) -> Handler:
    """The method's handler: raw bytes in and out, everything between in the executor."""

    def serve(raw: bytes, caller: Credential | None) -> bytes:
        return method.work(parse(method.request, raw), caller).SerializeToString()

    async def behavior(raw: bytes, context: Context) -> bytes:
        try:
            caller = identify(context.invocation_metadata() or ())
            return await run_in(method.pool, serve, raw, caller)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort(e, name, context)

    return grpc.unary_unary_rpc_method_handler(behavior)


def guarded(name: str, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """An async unary behavior whose DtsErrors become the call's status."""

    @functools.wraps(fn)
    async def behavior(request: Any, context: Context) -> T:
        try:
            return await fn(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort(e, name, context)

    return behavior


class EventLoop:
    """The thread that runs the asyncio event loop of the gRPC server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="dts-grpc", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()
