"""Who may reach what, end to end with the real programs: a worker claims only jobs of its own
queues, and a job enters its working directory with its own user's rights."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from dts.domain import JobSpec, JobStatus
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from tests.conftest import Cluster
from tests.harness import wait_until


def test_a_worker_cannot_claim_a_job_of_a_queue_it_does_not_serve(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    # Given a job of queue secretq with a secret in its environment, and no worker for it yet
    job_id = int(
        c.cli(
            "submit", "--queue", "secretq", "--env", "SECRET=s3cr3t", "--", "printenv", "SECRET"
        ).stdout.strip()
    )
    # And a worker registered for queue fq alone (speaking the protocol itself)
    with grpc.insecure_channel(c.server.address) as channel:
        work = pb_grpc.WorkerServiceStub(channel)
        session = work.Register(
            pb.RegisterRequest(name="fq-worker", host="h", pid=1, concurrency=1, queues=["fq"]),
            timeout=10,
        ).session
        # When it claims the secretq job's id with its own session, and reports it done
        claimed = work.Exchange(
            pb.ExchangeRequest(name="fq-worker", session=session, claim=[job_id]), timeout=10
        )
        faked = work.Exchange(
            pb.ExchangeRequest(
                name="fq-worker",
                session=session,
                results=[pb.Result(job_id=job_id, attempt=1, outcome=pb.OUTCOME_SUCCEEDED)],
            ),
            timeout=10,
        )
    # Then it gets no assignment (so no environment), and its made-up success is refused
    assert list(claimed.assignments) == []
    assert [a.accepted for a in faked.acks] == [False]
    assert f"claimed job(s) of other queues: {job_id} (secretq)" in c.server.output()
    assert _status(c, job_id) == "queued"
    # And the job runs as usual on a worker of secretq, once
    c.add_worker("secret-worker", "--queues", "secretq")
    wait_until(lambda: _status(c, job_id) == "succeeded", 20, what="the job to succeed")
    assert c.cli("logs", str(job_id)).stdout == "s3cr3t\n"
    history = json.loads(c.cli("--json", "history", str(job_id)).stdout)
    assert [(a["attempt"], a["worker"]) for a in history] == [(1, "secret-worker")]


def _status(c: Cluster, job_id: int) -> str:
    r = c.cli("--json", "status", str(job_id))
    assert r.returncode == 0, r
    return str(json.loads(r.stdout)["status"])


@pytest.fixture
def dirs() -> Iterator[Path]:
    """Under /tmp (pytest's own tree is root's alone): open/, and private/ of another user."""
    base = Path(tempfile.mkdtemp(prefix="dts-cwd-", dir="/tmp"))
    try:
        base.chmod(0o755)
        (base / "open").mkdir()
        (base / "open").chmod(0o755)  # whatever the umask
        (base / "private" / "exists").mkdir(parents=True)
        os.chown(base / "private", 12345, 12345)
        (base / "private").chmod(0o700)
        yield base
    finally:
        shutil.rmtree(base)


@pytest.fixture
def in_root() -> Iterator[Path]:
    """A directory that exists inside /root (root's alone)."""
    root = Path("/root")
    if not root.is_dir() or root.stat().st_mode & 0o001:
        pytest.skip("/root is not a closed directory here")
    made = Path(tempfile.mkdtemp(prefix="dts-cwd-", dir=root))
    try:
        yield made
    finally:
        shutil.rmtree(made)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (CI is)")
def test_a_run_as_job_enters_its_directory_with_its_own_users_rights(
    fresh_cluster: Cluster, dirs: Path, in_root: Path
) -> None:
    c = fresh_cluster
    c.add_worker("w1", "--run-as", "nobody", "--concurrency", "2")
    opened, missing = dirs / "open", dirs / "open" / "missing"
    closed = [
        dirs / "private",
        dirs / "private" / "exists",
        dirs / "private" / "missing",
        in_root,
        in_root.parent / "dts-no-such-directory",
    ]
    # When jobs run as nobody in directories it may and may not enter
    with c.client() as client:
        jobs = client.submit(
            [JobSpec(argv=("pwd",), cwd=str(d)) for d in (opened, missing, *closed)]
        )
        done = [client.wait(j.id, timeout=30) for j in jobs]
        first = client.logs(jobs[0].id)
    # Then a directory nobody may enter works as before
    said = [line for line in c.server.output().splitlines() if f"job {jobs[0].id} " in line]
    assert (done[0].status, first.stdout) == (JobStatus.SUCCEEDED, f"{opened}\n".encode()), (
        done[0].attempts,
        done[0].exit_code,
        done[0].error,
        first.stderr,
        said,
    )
    # A missing one that nobody could look for is missing, as for anyone
    assert (done[1].exit_code, done[1].error) == (
        127,
        f"cannot run pwd: cannot enter {missing}: No such file or directory",
    )
    # And a directory of another user nobody may not enter is refused, and so is everything
    # in it, whether it exists or not: the job learns nothing of what is there
    assert [(j.exit_code, j.error) for j in done[2:]] == [
        (126, f"cannot run pwd: cannot enter {d}: Permission denied") for d in closed
    ]
