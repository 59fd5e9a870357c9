"""The claim gate's rule (dts.controls), without a store: which claimed ids a queue's setting
lets run, and which queues a worker is told are held."""

from __future__ import annotations

import pytest

from dts.controls import Held, QueueSetting, gate, held_of, validate_run_limit
from dts.errors import InvalidArgument

QUEUE_OF = {1: "a", 2: "a", 3: "b", 4: "a", 5: "c"}


def test_ids_of_queues_without_a_setting_all_pass() -> None:
    decided = gate([1, 2, 3, 5], QUEUE_OF, {}, {})
    assert (decided.allowed, decided.refused, decided.held) == ([1, 2, 3, 5], [], Held())


def test_ids_of_a_paused_queue_are_refused_and_the_queue_is_held() -> None:
    decided = gate([1, 3, 2], QUEUE_OF, {"a": QueueSetting("a", paused=True)}, {})
    assert (decided.allowed, decided.refused) == ([3], [1, 2])
    assert decided.held == Held(paused=("a",))


def test_a_limit_grants_in_the_order_taken_while_there_is_room() -> None:
    settings = {"a": QueueSetting("a", limit=3)}
    decided = gate([4, 1, 3, 2], QUEUE_OF, settings, {"a": 1})
    assert (decided.allowed, decided.refused) == ([4, 1, 3], [2])
    assert decided.held == Held(full=("a",))
    # with room left after the claim, the queue is not held
    assert gate([1], QUEUE_OF, settings, {}).held == Held()


def test_a_queue_over_its_limit_grants_nothing() -> None:
    decided = gate([1, 2], QUEUE_OF, {"a": QueueSetting("a", limit=1)}, {"a": 5})
    assert (decided.allowed, decided.refused) == ([], [1, 2])


def test_an_id_taken_twice_uses_one_slot_and_unknown_ids_are_left_to_the_claim() -> None:
    decided = gate([1, 1, 99, 2], QUEUE_OF, {"a": QueueSetting("a", limit=2)}, {})
    assert (decided.allowed, decided.refused) == ([1, 99, 2], [])


def test_held_says_paused_before_full() -> None:
    settings = {
        "a": QueueSetting("a", paused=True, limit=1),
        "b": QueueSetting("b", limit=2),
        "c": QueueSetting("c", limit=2),
    }
    assert held_of(settings, {"a": 3, "b": 2, "c": 1}) == Held(paused=("a",), full=("b",))


@pytest.mark.parametrize("limit", [0, -1, 1_000_001])
def test_a_limit_is_between_1_and_a_million(limit: int) -> None:
    with pytest.raises(InvalidArgument, match="between 1 and 1000000"):
        validate_run_limit(limit)
    validate_run_limit(None)
    validate_run_limit(1)
