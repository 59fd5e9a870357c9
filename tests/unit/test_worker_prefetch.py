"""How many jobs a worker slot claims at once: a fixed amount of work, not a fixed count."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

from dts import wire
from dts.daemon.process import Signals
from dts.domain import Assignment, JobSpec
from dts.v1 import dts_pb2 as pb
from dts.worker.config import WorkerConfig
from dts.worker.main import Worker
from dts.worker.slots import PREFETCH_MAX, PREFETCH_WORK, prefetch_count


def test_short_jobs_are_claimed_many_at_a_time_up_to_the_cap() -> None:
    assert prefetch_count(0.001) == min(PREFETCH_MAX, int(PREFETCH_WORK / 0.001))
    assert prefetch_count(0.001) > 1
    assert prefetch_count(0.0) == PREFETCH_MAX
    assert prefetch_count(1e-6) == PREFETCH_MAX


def test_a_slot_never_claims_more_than_its_work_window_ahead() -> None:
    for average in (0.002, 0.005, 0.01, 0.02):
        n = prefetch_count(average)
        assert n >= 1
        assert n == 1 or n * average <= PREFETCH_WORK + 1e-9


def test_jobs_longer_than_the_window_are_claimed_one_at_a_time() -> None:
    assert prefetch_count(PREFETCH_WORK * 2) == 1
    assert prefetch_count(10.0) == 1


def test_what_an_exchange_sent_ahead_claims_is_held_when_its_answer_arrives() -> None:
    """A slot sends its next claim while it runs a job; the claimed attempts must be held (in
    the heartbeat's leases) when the answer arrives, not when the slot is next free: behind a
    long job their leases would lapse and the server would give them to another worker."""
    worker = Worker(WorkerConfig(name="w"), Signals())
    answer: Future[pb.ExchangeResponse] = Future()
    stub = SimpleNamespace(Exchange=SimpleNamespace(future=lambda req, timeout: answer))
    worker.session.stub = stub  # type: ignore[assignment]
    slot = worker.slots.new()
    try:
        pending = slot._send_ahead([], [7])
        assert worker.attempts.leases() == []
        # When the answer arrives while the slot is busy
        spec = JobSpec(argv=("true",))
        answer.set_result(
            pb.ExchangeResponse(assignments=[wire.assignment_to_pb(Assignment(7, 1, spec))])
        )
        # Then the attempt is held at once, and the slot later takes that same execution
        assert [(lease.job_id, lease.attempt) for lease in worker.attempts.leases()] == [(7, 1)]
        slot._absorb(answer.result(), [], [7], pending[4])
        assert len(slot.ready) == 1 and slot.ready[0].assignment.job_id == 7
        assert len(worker.attempts.leases()) == 1
    finally:
        worker.session.close()
