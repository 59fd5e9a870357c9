"""The worker's conversation with the server (dts.worker.session) against a stand-in stub."""

from __future__ import annotations

from types import SimpleNamespace

import grpc

from dts.daemon.process import Signals
from dts.v1 import dts_pb2 as pb
from dts.worker.config import WorkerConfig
from dts.worker.main import Worker


class _Refusal(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_last_report_after_the_server_forgot_the_session_goes_under_the_new_one() -> None:
    """The report of a failed slot's results is tried once; if the server no longer knows
    the session (it forgot the worker), the worker registers again and the report must carry
    the new session: sent under the old one, the server would take it for another process
    that registered under this name, and the worker would stop as superseded."""
    worker = Worker(WorkerConfig(name="w"), Signals())
    sent: list[str] = []
    current = [""]  # the session the server has for this name: none, it forgot the worker

    def exchange(req: pb.ExchangeRequest, timeout: float) -> pb.ExchangeResponse:
        sent.append(req.session)
        if not current[0]:
            raise _Refusal(grpc.StatusCode.FAILED_PRECONDITION, "worker w is not registered")
        if req.session != current[0]:
            raise _Refusal(grpc.StatusCode.ALREADY_EXISTS, "worker name w was registered again")
        return pb.ExchangeResponse()

    def register(req: pb.RegisterRequest, **kw: object) -> pb.RegisterResponse:
        current[0] = "new"
        return pb.RegisterResponse(session="new", lease_seconds=30, heartbeat_interval=1)

    worker.session.stub = SimpleNamespace(Exchange=exchange, Register=register)  # type: ignore[assignment]
    worker.session.id = "old"
    try:
        resp = worker.session.exchange_once(worker.session.request([], []))
        assert resp is not None and sent == ["old", "new"]
        assert worker.ending.exit_code == 0  # not dismissed
    finally:
        worker.session.close()


def test_a_call_cut_off_by_a_stopping_server_is_tried_again() -> None:
    """A server that stops (a rolling restart) cuts off calls under way: the worker sees
    CANCELLED ("Received RST_STREAM with error code 8"), which it did not ask for. That must be
    tried again like UNAVAILABLE, not end the slot's thread (which stopped the worker, exit 70,
    in the cluster soak)."""
    worker = Worker(WorkerConfig(name="w"), Signals())
    calls: list[str] = []

    def exchange(req: pb.ExchangeRequest, timeout: float) -> pb.ExchangeResponse:
        calls.append(req.session)
        if len(calls) == 1:
            raise _Refusal(grpc.StatusCode.CANCELLED, "Received RST_STREAM with error code 8")
        return pb.ExchangeResponse()

    worker.session.stub = SimpleNamespace(Exchange=exchange)  # type: ignore[assignment]
    worker.session.id = "s"
    try:
        resp = worker.session.exchange(worker.session.request([], []))
        assert resp is not None and calls == ["s", "s"]
        assert worker.ending.exit_code == 0
    finally:
        worker.session.close()
