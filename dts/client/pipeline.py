"""The client's side of SubmitStream: submits go out over one call as they are made, without
waiting for the answers to the ones before, and the answers come back in order.

One pipe is one call. It ends itself after a second without work (so an idle client holds no
server thread), and a client opens a new one on its next submit. When a pipe breaks because its
server went away, every submit still waiting for its answer is sent again as a unary Submit
with the same key (on the next server, if the client knows several): one the server had stored
is answered with its jobs, not stored twice.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator, Sequence

import grpc

from dts import wire
from dts.domain import Job, JobSpec
from dts.errors import DeadlineExceeded, DtsError, Unavailable, from_code
from dts.v1 import dts_pb2 as pb

IDLE_CLOSE = 1.0  # seconds without a submit after which a pipe ends its call


class StreamUnsupported(Exception):
    """Raised (inside the client only) when the server knows no SubmitStream: use Submit."""


class PendingSubmit:
    """A submit on its way; `result()` waits for the jobs (or raises the submit's error)."""

    def __init__(
        self,
        specs: Sequence[JobSpec],
        fallback: Callable[[], list[Job]],
        noted: Callable[[pb.SubmitResponse], None] | None = None,
    ) -> None:
        self.specs = specs
        self._fallback = fallback
        self._noted = noted  # told each answer that stored the submit
        self._done = threading.Event()
        self._answer: pb.SubmitResponse | None = None
        self._error: BaseException | None = None
        self._again = False  # the stream broke before the answer: submit again (same key)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> list[Job]:
        if not self._done.wait(timeout):
            raise DeadlineExceeded(f"no answer to a submit within {timeout}s")
        if isinstance(self._error, StreamUnsupported) or self._again:
            return self._fallback()
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        if self._answer.code:
            name = grpc.StatusCode(_status(self._answer.code)).name
            raise from_code(name, self._answer.message)
        if self._noted is not None:
            self._noted(self._answer)
        return wire.submitted_jobs(self.specs, self._answer)

    def _settle(
        self, answer: pb.SubmitResponse | None, error: BaseException | None, again: bool = False
    ) -> None:
        self._answer, self._error, self._again = answer, error, again
        self._done.set()


def _status(code: int) -> tuple[int, str]:
    """The grpc.StatusCode value of a numeric code (UNKNOWN for one it does not know)."""
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.value  # type: ignore[no-any-return]
    return grpc.StatusCode.UNKNOWN.value  # type: ignore[no-any-return]


class SubmitPipe:
    """One SubmitStream call and the submits waiting for its answers."""

    def __init__(
        self,
        method: grpc.StreamStreamMultiCallable[pb.SubmitRequest, pb.SubmitResponse],
        address: str,
        on_unsupported: Callable[[], None] = lambda: None,
    ) -> None:
        self.address = address
        self._on_unsupported = on_unsupported
        self._outbox: queue.SimpleQueue[pb.SubmitRequest] = queue.SimpleQueue()
        self._waiting: collections.deque[PendingSubmit] = collections.deque()
        self._lock = threading.Lock()
        self.closed = False
        self._method = method
        self._call: grpc.RpcContext | None = None

    def start(self) -> None:
        """Open the call (after the first `send`, so its submit is waiting for an answer)."""
        call = self._method(self._requests())
        self._call = call
        threading.Thread(
            target=self._read, args=(call,), name="dts-submit-pipe", daemon=True
        ).start()

    def send(self, request: pb.SubmitRequest, pending: PendingSubmit) -> bool:
        """Queue a submit; False if this pipe has ended (open another)."""
        with self._lock:
            if self.closed:
                return False
            self._waiting.append(pending)
            self._outbox.put(request)
        return True

    def close(self) -> None:
        with self._lock:
            self.closed = True
        if self._call is not None:
            self._call.cancel()

    def _requests(self) -> Iterator[pb.SubmitRequest]:
        while True:
            try:
                yield self._outbox.get(timeout=IDLE_CLOSE)
            except queue.Empty:
                with self._lock:  # no send can slip in between the check and the close
                    if not self._waiting and self._outbox.empty():
                        self.closed = True
                        return

    def _read(self, call: Iterator[pb.SubmitResponse]) -> None:
        error: BaseException
        again = True  # the server went away or ended the call: its submits may go again
        try:
            for answer in call:
                with self._lock:
                    pending = self._waiting.popleft()
                pending._settle(answer, None)
            error = Unavailable(f"dts-server at {self.address} ended the submit stream")
        except grpc.RpcError as e:
            again = e.code() is grpc.StatusCode.UNAVAILABLE
            if e.code() is grpc.StatusCode.UNIMPLEMENTED:
                self._on_unsupported()
                error = StreamUnsupported()
            elif e.code() is grpc.StatusCode.CANCELLED and self.closed:
                error = Unavailable("the client was closed")
            else:
                error = wire.error_from_rpc(e, self.address)
        except IndexError:  # an answer nobody asked for: the server is not speaking dts
            error = DtsError(f"dts-server at {self.address} answered a submit never sent")
            again = False
        with self._lock:
            self.closed = True
            left = list(self._waiting)
            self._waiting.clear()
        for pending in left:
            pending._settle(None, error, again)
