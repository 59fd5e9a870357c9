"""A slot's overtime: while a job runs on, the results and claims behind it are seen to."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

from dts.daemon.process import Signals
from dts.domain import Assignment, JobSpec, Outcome, Result
from dts.v1 import dts_pb2 as pb
from dts.worker.config import WorkerConfig
from dts.worker.main import Worker
from dts.worker.overtime import Overtime
from dts.worker.slots import PREFETCH_BELOW


def test_the_watch_calls_when_due_again_as_asked_and_never_after_its_end() -> None:
    calls: list[float] = []
    more = threading.Event()

    def due() -> float | None:
        calls.append(time.monotonic())
        if len(calls) == 2:
            more.set()
        return 0.05

    watch = Overtime("test-overtime")
    begun = time.monotonic()
    watch.start(0.05, due)
    assert more.wait(5), calls
    watch.end()
    ended = len(calls)
    assert calls[0] - begun >= 0.05
    time.sleep(0.2)  # (nothing to poll: no call may come)
    assert len(calls) == ended
    # And a later job's start arms it again
    again = threading.Event()
    watch.start(0.0, lambda: again.set())  # type: ignore[func-returns-value]
    assert again.wait(5)
    watch.end()


def test_results_are_sent_behind_a_running_job_and_claims_handed_back_once_it_is_long() -> None:
    # Given a slot with an unsent result and an attempt claimed ahead, while a job runs
    worker = Worker(WorkerConfig(name="w"), Signals())
    sent: list[pb.ExchangeRequest] = []

    def exchange(req: pb.ExchangeRequest, timeout: float) -> Future[pb.ExchangeResponse]:
        sent.append(req)
        answer: Future[pb.ExchangeResponse] = Future()
        answer.set_result(pb.ExchangeResponse(acks=[pb.Ack(accepted=True)] * len(req.results)))
        return answer

    worker.session.stub = SimpleNamespace(Exchange=SimpleNamespace(future=exchange))  # type: ignore[assignment]
    slot = worker.slots.new()
    try:
        slot.done.append(Result(3, 1, Outcome.FAILED, 7, "exit 7"))
        ahead = Assignment(9, 1, JobSpec(argv=("true",)))
        slot.ready.append(worker.attempts.hold(ahead))
        # When the job has run MAX_RESULT_DELAY: the result goes, the claim stays
        after = slot._overtime(time.monotonic())
        assert after is not None and 0 < after <= PREFETCH_BELOW
        assert [(r.job_id, r.outcome) for r in sent[0].results] == [(3, pb.OUTCOME_FAILED)]
        assert list(sent[0].claim) == [] and len(slot.ready) == 1
        # When it has run PREFETCH_BELOW: the claimed attempt goes back, unstarted
        assert slot._overtime(time.monotonic() - PREFETCH_BELOW) is None
        assert slot.ready == [] and slot.done[-1].outcome is Outcome.RELEASED
        assert [(r.job_id, r.outcome) for r in sent[1].results][-1] == (9, pb.OUTCOME_RELEASED)
        assert slot.pending is not None  # its answer is the slot's to take after the job
    finally:
        worker.session.close()
