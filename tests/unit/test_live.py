"""Live output without a server: offsets and the stored output's remainder, the worker's tap
on a running job, and the live sender, which does nothing while nobody follows."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from dts.domain import Assignment, JobSpec
from dts.live import Chunk, fresh, joined, marker, rest, split
from dts.v1 import dts_pb2 as pb
from dts.worker.live import LiveSender
from dts.worker.runner import Capture, Execution, RunOptions
from dts.worker.tap import Tap
from tests.harness import wait_until

FAST = RunOptions(max_output=1 << 20, kill_grace=0.5)


def stored(data: bytes, limit: int) -> bytes:
    c = Capture(limit)
    c.feed(data)
    return c.value()


# ---- offsets ------------------------------------------------------------------------------


def test_fresh_drops_what_the_follower_has_and_skips_a_gap() -> None:
    assert fresh(b"abcdef", 0, 4) == (b"ef", 6)
    assert fresh(b"abc", 0, 3) == (b"", 3)
    assert fresh(b"xyz", 10, 4) == (marker(6) + b"xyz", 13)  # a gap: said as stored ones are


def test_rest_of_a_whole_output_is_what_follows_the_offset() -> None:
    assert rest(b"hello world", 6) == b"world"
    assert rest(b"hello", 5) == b""


def test_rest_of_a_truncated_output_maps_back_to_stream_offsets() -> None:
    data = bytes(range(100))
    kept = stored(data, 10)  # head 5, 90 dropped, tail 5
    marker = kept[5:-5]
    assert rest(kept, 0) == kept
    assert rest(kept, 3) == data[3:5] + marker + data[-5:]
    assert rest(kept, 50) == marker + data[-5:]  # got some of the middle: no repeat
    assert rest(kept, 97) == data[97:]
    assert rest(kept, 100) == b""


def test_following_then_resuming_from_the_stored_output_gives_the_stored_bytes() -> None:
    data = os.urandom(3000)
    for cut in (0, 1, 999, 1000, 2999, 3000):
        live, have = fresh(data[:cut], 0, 0)
        assert live + rest(stored(data, 1 << 20), have) == data


def test_a_follow_of_a_capped_output_prints_what_is_stored() -> None:
    # the worker kept the head and the tail of a long output when the follow began
    data = bytes(range(100))
    kept = Capture(10)
    kept.feed(data)
    chunks = [Chunk(1, 1, piece, b"", offset) for offset, piece in kept.pieces()]
    live, _ = joined(chunks)
    assert live == kept.value() and rest(kept.value(), 100) == b""


def test_split_and_joined_keep_bytes_and_order() -> None:
    big = Chunk(1, 1, b"o" * 10, b"e" * 3, 5, 0)
    parts = split(big, 4)
    assert [p.stdout for p in parts] == [b"oooo", b"oooo", b"oo"]
    assert [p.stdout_offset for p in parts] == [5, 9, 13]
    assert b"".join(p.stderr for p in parts) == b"eee"
    dup = [Chunk(1, 1, b"ab", b"", 0, 0), Chunk(1, 1, b"abcd", b"x", 0, 0)]
    assert joined(dup) == (b"abcd", b"x")


# ---- the tap on a running job ------------------------------------------------------------


def test_a_tap_set_while_a_job_runs_gets_all_its_output_at_offsets(tmp_path: Any) -> None:
    flag = tmp_path / "go"
    script = f"printf one; printf E >&2; while [ ! -e {flag} ]; do sleep 0.02; done; printf two"
    exe = Execution(Assignment(7, 1, JobSpec(argv=(script,), shell=True)), FAST)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(exe.run()))
    t.start()
    got: list[Chunk] = []
    try:
        wait_until(lambda: exe.pid, 5, what="the job to start")
        exe.tap = Tap(7, 1)  # followed after its first output

        def collect() -> bool:
            got.extend(exe.tap.take() if exe.tap else [])
            out, err = joined(got)
            return out == b"one" and err == b"E"

        wait_until(collect, 5, what="the output kept before the tap")
    finally:
        flag.touch()
        t.join(10)
    got.extend(exe.tap.take())
    assert joined(got) == (b"onetwo", b"E") == (result[0].stdout, result[0].stderr)


# ---- the sender ---------------------------------------------------------------------------


@dataclass
class Stub:
    requests: list[pb.OutputRequest] = field(default_factory=list)

    def SendOutput(self, req: pb.OutputRequest, timeout: float) -> pb.OutputResponse:
        self.requests.append(req)
        return pb.OutputResponse()


@dataclass
class Session:
    stub: Stub
    id: str = "s"

    @dataclass
    class cfg:
        name = "w1"


class Held:
    """The worker's held attempts, as the sender sees them."""

    def __init__(self, exes: list[Execution]) -> None:
        self.exes = exes

    def running(self) -> list[Execution]:
        return list(self.exes)

    def get(self, job_id: int, attempt: int) -> Execution | None:
        return next((e for e in self.exes if e.assignment.job_id == job_id), None)


def test_the_worker_sends_nothing_while_nobody_follows(tmp_path: Any) -> None:
    # Given a worker's live sender and jobs that print a lot
    stub = Stub()
    flag = tmp_path / "go"
    script = f"seq 1 2000; while [ ! -e {flag} ]; do sleep 0.02; done; echo end"
    exes = [Execution(Assignment(i, 1, JobSpec(argv=(script,), shell=True)), FAST) for i in (1, 2)]
    sender = LiveSender(Session(stub), Held(exes))  # type: ignore[arg-type]
    sender.start()
    threads = [threading.Thread(target=e.run) for e in exes]
    for t in threads:
        t.start()
    try:
        # When heartbeats say nobody follows anything, and the jobs finish
        for _ in range(5):
            sender.followed([])
        wait_until(lambda: all(e.pid for e in exes), 5, what="the jobs to start")
        # Then no output is kept for sending and none is sent
        assert all(e.tap is None for e in exes)
        assert stub.requests == [] and sender.sends == 0
        # When one of them is followed, its output (from its first byte) goes, alone
        sender.followed([pb.Lease(job_id=2, attempt=1)])
        assert exes[0].tap is None and exes[1].tap is not None

        def sent() -> bytes:
            chunks = [c for r in stub.requests for c in r.chunks]
            assert all(c.job_id == 2 for c in chunks)
            return joined([Chunk(2, 1, c.stdout, c.stderr, c.stdout_offset) for c in chunks])[0]

        expected = "".join(f"{n}\n" for n in range(1, 2001)).encode()
        wait_until(lambda: sent() == expected, 5, what="the followed job's output")
        # and a heartbeat that no longer names it stops it
        sender.followed([])
        assert exes[1].tap is None
    finally:
        flag.touch()
        for t in threads:
            t.join(10)
        sender.stop()


# ---- what a follow says between attempts -------------------------------------------------


def test_retry_notes_say_why_and_when() -> None:
    from dts.domain import Attempt, Job, JobStatus, Outcome
    from dts.server.api.follow import retry_note

    spec = JobSpec(argv=("x",))
    waiting = Job(1, spec, JobStatus.SCHEDULED, attempts=1, run_at=12.0)
    failed = Attempt(1, 1, "w", 5.0, 10.0, 7, Outcome.FAILED, "exited with code 7")
    assert retry_note(failed, waiting, 1) == "attempt 1 failed (exit 7); retry in 2s"
    timed_out = Attempt(1, 1, "w", 5.0, 10.0, 124, Outcome.TIMED_OUT, "timed out after 5s")
    assert retry_note(timed_out, waiting, 1) == "attempt 1 failed (timed out after 5s); retry in 2s"
    moved_on = Job(1, spec, JobStatus.RUNNING, attempts=2)
    began = Attempt(1, 2, "w", 11.5)
    assert retry_note(failed, moved_on, 1, began) == "attempt 1 failed (exit 7); retry in 1.5s"
    lost = Attempt(1, 1, "w", 5.0, 10.0, None, Outcome.LOST, "worker w lost")
    queued = Job(1, spec, JobStatus.QUEUED, attempts=1)
    assert retry_note(lost, queued, 1) == "attempt 1 lost (worker w lost); retry now"
