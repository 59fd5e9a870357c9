"""dts-client's feedback on stderr, against a real server and worker: a submit to a queue no
live worker serves is stored and warned about (Submit and SubmitStream alike), and a large
--from-file shows its progress on a terminal, and nothing when stderr is not one."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from dts.client.sending import CHUNK
from dts.domain import JobSpec, JobStatus
from dts.v1 import dts_pb2 as pb
from tests.conftest import Cluster, make_cluster
from tests.harness import BIN, clean_env

WARNING = 'warning: no live worker serves queue "{}"; the job waits until one does\n'


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A server and one worker, serving queue cpu only."""
    c = make_cluster(tmp_path_factory.mktemp("feedback"), 0)
    c.add_worker("cpu-worker", "--queues", "cpu")
    yield c
    c.stop()


def test_a_submit_to_a_queue_nobody_serves_is_stored_and_warned_about(served: Cluster) -> None:
    r = served.cli("submit", "--queue", "gpu", "--", "true")
    assert (r.returncode, r.stderr) == (0, WARNING.format("gpu"))
    with served.client() as c:
        assert c.get(int(r.stdout)).status is JobStatus.QUEUED


def test_a_submit_to_a_served_queue_says_nothing(served: Cluster) -> None:
    r = served.cli("submit", "--wait", "--queue", "cpu", "--", "true")
    assert (r.returncode, r.stderr) == (0, "")


def test_many_jobs_of_an_unserved_queue_warn_once(served: Cluster) -> None:
    r = served.cli("submit", "--queue", "gpu", "--from-file", "-", input="true\n" * 5)
    assert (r.returncode, r.stderr, len(r.stdout.split())) == (0, WARNING.format("gpu"), 5)


def test_submit_stream_answers_name_the_unserved_queues(served: Cluster) -> None:
    requests = [
        pb.SubmitRequest(jobs=[pb.JobSpec(argv=["true"], queue=q)], ids_only=True)
        for q in ("gpu", "cpu", "gpu")
    ]
    with grpc.insecure_channel(served.server.address) as channel:
        call = channel.stream_stream(
            "/dts.v1.Scheduler/SubmitStream",
            request_serializer=pb.SubmitRequest.SerializeToString,
            response_deserializer=pb.SubmitResponse.FromString,
        )
        answers = list(call(iter(requests), timeout=30))
    assert [list(a.unserved_queues) for a in answers] == [["gpu"], [], ["gpu"]]
    assert all(a.ids for a in answers)


def test_the_client_library_keeps_the_unserved_queues_of_every_submit(served: Cluster) -> None:
    with served.client() as c:
        c.submit([JobSpec(argv=("true",), queue="cpu")])
        c.submit_one(JobSpec(argv=("true",), queue="cpu"))
        assert c.unserved_queues == set()
        c.submit_one(JobSpec(argv=("true",), queue="arm"))  # over the SubmitStream
        c.submit([JobSpec(argv=("true",), queue="gpu"), JobSpec(argv=("true",), queue="cpu")])
        assert c.unserved_queues == {"arm", "gpu"}


@pytest.mark.single_store  # the client's side: one store is enough
def test_a_large_from_file_shows_progress_on_a_terminal_only(
    served: Cluster, tmp_path: Path
) -> None:
    commands = tmp_path / "jobs.txt"
    commands.write_text("true\n" * (CHUNK + 1))
    argv = [str(BIN / "dts-client"), "--server", served.server.address, "submit"]
    argv += ["--queue", "bulk", "--from-file", str(commands)]
    # stderr a pipe: the warning only
    r = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), timeout=60)
    assert (r.returncode, r.stderr) == (0, WARNING.format("bulk"))
    assert len(r.stdout.split()) == CHUNK + 1
    # stderr a terminal: one line, rewritten after each chunk
    primary, secondary = os.openpty()
    try:
        p = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=secondary, env=clean_env(), timeout=60
        )
        os.close(secondary)
        said = _read_all(primary)
    finally:
        os.close(primary)
    assert p.returncode == 0
    total = f"{CHUNK + 1:,}"
    assert said == (
        f"\rsubmitted {CHUNK:,} / {total} jobs\rsubmitted {total} / {total} jobs\r\n"
        + WARNING.format("bulk").replace("\n", "\r\n")
    )


def _read_all(fd: int) -> str:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed and everything was read
            break
        if not chunk:
            break
        out += chunk
    return out.decode()
