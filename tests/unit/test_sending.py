"""dts.client.sending: a large submit goes in chunks, with a progress line only on a terminal;
a chunk that fails leaves the ones before it stored and says which; each unserved queue is
warned about once."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import pytest

from dts.client import sending
from dts.domain import Job, JobSpec, JobStatus
from dts.errors import Unavailable


class FakeClient:
    def __init__(self, fail_at: int = -1) -> None:
        self.calls: list[int] = []
        self.fail_at = fail_at
        self.unserved_queues: set[str] = set()

    def submit(self, specs: Sequence[JobSpec]) -> list[Job]:
        if len(self.calls) == self.fail_at:
            raise Unavailable("server went away")
        first = sum(self.calls) + 1
        self.calls.append(len(specs))
        return [Job(first + i, s, JobStatus.QUEUED) for i, s in enumerate(specs)]


SPECS = [JobSpec(argv=("true",))] * 25


def test_chunks_in_order_and_no_progress_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sending, "CHUNK", 10)
    client, err = FakeClient(), io.StringIO()
    jobs = sending.submit_all(client, SPECS, err)  # type: ignore[arg-type]
    assert client.calls == [10, 10, 5] and [j.id for j in jobs] == list(range(1, 26))
    assert err.getvalue() == ""


def test_progress_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sending, "CHUNK", 10)
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as err:
        sending.submit_all(FakeClient(), SPECS, err)  # type: ignore[arg-type]
    said = b""
    while chunk := _read(primary):  # until the closed side is read out
        said += chunk
    os.close(primary)
    assert said.decode() == (
        "\rsubmitted 10 / 25 jobs\rsubmitted 20 / 25 jobs\rsubmitted 25 / 25 jobs\r\n"
    )


def test_a_failed_chunk_says_what_was_stored_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sending, "CHUNK", 10)
    err = io.StringIO()
    with pytest.raises(Unavailable):
        sending.submit_all(FakeClient(fail_at=2), SPECS, err)  # type: ignore[arg-type]
    assert err.getvalue() == "20 of 25 jobs were submitted before the error (ids 1 to 20)\n"


def test_each_unserved_queue_is_warned_about_once() -> None:
    client, err = FakeClient(), io.StringIO()
    client.unserved_queues.update({"gpu", "arm"})
    sending.warn_unserved(client, err)  # type: ignore[arg-type]
    sending.warn_unserved(client, err)  # type: ignore[arg-type]
    assert err.getvalue().splitlines() == [
        'warning: no live worker serves queue "arm"; the job waits until one does',
        'warning: no live worker serves queue "gpu"; the job waits until one does',
    ]


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the other side is closed and everything was read
        return b""
