"""FailoverChannel's rules, on fake channels: which server a call goes to, and when it moves on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from dts.failover import FailoverChannel

State = grpc.ChannelConnectivity


class Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


class FakeChannel:
    """A server: answers its name, or fails with `error`; reports `state` to subscribers."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls
        self.error: grpc.StatusCode | None = None
        self.state = State.READY
        self.closed = False

    def subscribe(self, callback: Callable[[State], None], try_to_connect: bool = False) -> None:
        callback(self.state)

    def unary_unary(self, method: str, *args: Any) -> Callable[..., str]:
        def call(request: str, **kw: Any) -> str:
            self.calls.append(self.name)
            if self.error is not None:
                raise Refused(self.error)
            return f"{self.name}:{request}"

        return call

    def close(self) -> None:
        self.closed = True


def cluster(*names: str) -> tuple[FailoverChannel, dict[str, FakeChannel], list[str]]:
    calls: list[str] = []
    fakes = {n: FakeChannel(n, calls) for n in names}
    return FailoverChannel(list(names), lambda a: fakes[a]), fakes, calls  # type: ignore[arg-type, return-value]


def test_calls_stay_on_the_first_server_while_it_answers() -> None:
    ch, _, calls = cluster("a", "b", "c")
    method = ch.unary_unary("/x")
    assert [method("1"), method("2")] == ["a:1", "a:2"]
    assert calls == ["a", "a"] and ch.address == "a"


def test_an_unavailable_server_is_left_for_the_next_which_calls_then_stay_on() -> None:
    ch, fakes, calls = cluster("a", "b", "c")
    method = ch.unary_unary("/x")
    method("0")
    fakes["a"].error = grpc.StatusCode.UNAVAILABLE
    assert method("1") == "b:1"
    assert method("2") == "b:2"
    assert calls == ["a", "a", "b", "b"] and ch.address == "b"


def test_every_server_away_raises_the_last_error() -> None:
    ch, fakes, calls = cluster("a", "b")
    for f in fakes.values():
        f.error = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(Refused) as e:
        ch.unary_unary("/x")("1")
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE and calls == ["a", "b"]


def test_an_answered_error_is_not_taken_elsewhere() -> None:
    # NOT_FOUND, or a deadline on a connected server: the call reached its server
    ch, fakes, calls = cluster("a", "b")
    for code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED):
        fakes["a"].error = code
        with pytest.raises(Refused):
            ch.unary_unary("/x")("1")
    assert calls == ["a", "a"]


def test_a_deadline_without_a_connection_moves_on() -> None:
    ch, fakes, calls = cluster("a", "b")
    fakes["a"].state = State.CONNECTING  # a host that does not answer
    fakes["a"].error = grpc.StatusCode.DEADLINE_EXCEEDED
    assert ch.unary_unary("/x")("1") == "b:1"
    assert calls == ["a", "b"]


def test_a_server_known_to_be_down_is_tried_last() -> None:
    ch, fakes, calls = cluster("a", "b", "c")
    fakes["a"].state = State.TRANSIENT_FAILURE
    ch.channel(0)  # opened: its state is known
    assert ch.order() == [1, 2, 0]
    assert ch.unary_unary("/x")("1") == "b:1" and calls == ["b"]


def test_close_closes_every_opened_channel() -> None:
    ch, fakes, _ = cluster("a", "b")
    ch.unary_unary("/x")("1")
    ch.close()
    assert fakes["a"].closed and not fakes["b"].closed  # b was never opened
