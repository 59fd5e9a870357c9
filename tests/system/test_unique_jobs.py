"""Unique jobs end to end: dts-client submit --unique (text, --json, the note on stderr, exit
codes), the Python client's unary and streaming submits, racing submits of one key through
one server and through two servers sharing a PostgreSQL database."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dts.client import Client
from dts.domain import Job, JobSpec, JobStatus
from dts.errors import FailedPrecondition, InvalidArgument
from tests.conftest import Cluster
from tests.harness import BIN, RedisProcess, ServerProcess, clean_env, run_cli, wait_until

# Queues no worker of the module's cluster serves: their jobs stay queued, holding their keys.
IDLE = "unique-idle"


def unserved(queue: str) -> str:
    """submit's warning: these tests' queues are served by no worker, on purpose."""
    return f'warning: no live worker serves queue "{queue}"; the job waits until one does\n'


def note(job_id: int, key: str, queue: str) -> str:
    return (
        f"dts-client: job {job_id} has unique key {key} in queue {queue} and is not final:"
        " not submitted again\n"
    )


def jobs_in(cluster: Cluster, queue: str) -> list[dict[str, object]]:
    r = cluster.cli("--json", "list", "--queue", queue, "--limit", "1000")
    assert r.returncode == 0, r.stderr
    listed: list[dict[str, object]] = json.loads(r.stdout)
    return listed


# ---- the CLI ----------------------------------------------------------------------------------


def test_a_second_submit_of_a_live_key_prints_the_first_id_and_a_note(cluster: Cluster) -> None:
    queue = f"{IDLE}-text"
    # Given a job submitted with a unique key: its id alone, as ever
    first = cluster.cli("submit", "--queue", queue, "--unique", "nightly", "--", "echo", "one")
    assert (first.returncode, first.stderr) == (0, unserved(queue))
    job_id = int(first.stdout)
    # When the key is submitted again while the job is queued
    again = cluster.cli("submit", "--queue", queue, "--unique", "nightly", "--", "echo", "two")
    # Then the same id is printed, with one line on stderr, and nothing is stored
    assert (again.returncode, again.stdout) == (0, f"{job_id}\n")
    assert again.stderr == unserved(queue) + note(job_id, "nightly", queue)
    listed = jobs_in(cluster, queue)
    assert [(j["id"], j["command"], j["unique"]) for j in listed] == [
        (job_id, "echo one", "nightly")
    ]
    # And status shows the key, in text and JSON
    text = cluster.cli("status", str(job_id))
    assert "\nunique:      nightly\n" in text.stdout, text.stdout
    shown = json.loads(cluster.cli("--json", "status", str(job_id)).stdout)
    assert shown["unique"] == "nightly"
    # and a job without a key has none
    plain = json.loads(cluster.cli("--json", "submit", "--queue", queue, "--", "true").stdout)
    assert plain["unique"] is None and plain["existing"] is False
    assert "unique:" not in cluster.cli("status", str(plain["id"])).stdout


def test_submit_json_says_whether_the_job_existed(cluster: Cluster) -> None:
    queue = f"{IDLE}-json"
    r = cluster.cli("--json", "submit", "--queue", queue, "--unique", "k", "--", "echo", "a")
    assert r.returncode == 0 and r.stderr == unserved(queue), r.stderr
    new = json.loads(r.stdout)
    assert (new["existing"], new["unique"], new["status"]) == (False, "k", "queued")
    r = cluster.cli("--json", "submit", "--queue", queue, "--unique", "k", "--", "echo", "b")
    old = json.loads(r.stdout)
    # the job that exists, not the command just sent
    assert (old["id"], old["existing"], old["command"]) == (new["id"], True, "echo a")
    assert r.stderr == unserved(queue) + note(new["id"], "k", queue)


def test_keys_are_per_queue_and_free_again_once_the_job_is_final(cluster: Cluster) -> None:
    a, b = f"{IDLE}-a", f"{IDLE}-b"
    in_a = int(cluster.cli("submit", "--queue", a, "--unique", "k", "--", "true").stdout)
    in_b = cluster.cli("submit", "--queue", b, "--unique", "k", "--", "true")
    assert in_b.stderr == unserved(b) and int(in_b.stdout) != in_a
    # When the job of queue a is cancelled, then its key makes a new job there
    assert cluster.cli("cancel", str(in_a)).returncode == 0
    again = cluster.cli("submit", "--queue", a, "--unique", "k", "--", "true")
    assert again.stderr == unserved(a) and int(again.stdout) > in_a
    assert len(jobs_in(cluster, a)) == 2


def test_submit_wait_waits_for_the_existing_job(cluster: Cluster, tmp_path: Path) -> None:
    # Given a running job with a key, which ends when a file appears
    flag = tmp_path / "go"
    script = f"until [ -e {flag} ]; do sleep 0.05; done; echo first-job"
    first = cluster.cli("submit", "--unique", "waited", "--shell", "--", script)
    job_id = int(first.stdout)
    # When the key is submitted again with --wait
    errors = tmp_path / "stderr"
    client = [str(BIN / "dts-client"), "--server", cluster.server.address]
    with errors.open("w") as err_file:
        waiting = subprocess.Popen(
            [*client, "submit", "--wait", "--unique", "waited", "--", "echo", "second"],
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
            env=clean_env(),
        )
    try:
        # (it has its answer once it says the job existed; only then may the job end)
        wait_until(errors.read_text, 20, what="the second submit's answer")
        flag.touch()
        out, _ = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    err = errors.read_text()
    # Then it ends with the first job: its output, its exit code, and the note
    assert (waiting.returncode, out) == (0, "first-job\n")
    assert err == note(job_id, "waited", "default")


def test_bad_unique_keys_are_usage_errors_and_store_nothing(cluster: Cluster) -> None:
    queue = f"{IDLE}-bad"
    cases = [
        (["--unique", ""], "--unique takes a key that is not empty"),
        (["--unique", "x" * 201], "unique key is longer than 200 characters"),
        (["--unique", "a\tb"], "unique key must be printable"),
        (["--unique", "  "], "unique key must be printable characters, not blank"),
        (["--unique", "k", "--from-file", "-"], "cannot be given with --from-file"),
    ]
    for extra, message in cases:
        command = [] if "--from-file" in extra else ["--", "true"]
        r = cluster.cli("submit", "--queue", queue, *extra, *command, input="true\ntrue\n")
        assert r.returncode == 2, (extra, r)
        assert r.stderr.count("\n") == 1 and message in r.stderr, (extra, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == ""
    assert jobs_in(cluster, queue) == []
    # the server refuses them too, from a client that does not check
    with Client(cluster.server.address) as c:
        with pytest.raises(InvalidArgument, match="unique key is longer than 200"):
            c.submit([JobSpec(argv=("true",), queue=queue, unique="x" * 201)])
        with pytest.raises(InvalidArgument, match="unique key must be printable"):
            c.submit_one(JobSpec(argv=("true",), queue=queue, unique="\x00"))
    assert jobs_in(cluster, queue) == []


def test_a_retry_is_refused_while_another_job_holds_the_key(cluster: Cluster) -> None:
    queue = f"{IDLE}-retry"
    old = int(cluster.cli("submit", "--queue", queue, "--unique", "r", "--", "true").stdout)
    assert cluster.cli("cancel", str(old)).returncode == 0
    new = int(cluster.cli("submit", "--queue", queue, "--unique", "r", "--", "true").stdout)
    r = cluster.cli("retry", str(old))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (
        f"dts-client: error: job {old} has unique key r in queue {queue}, which job {new}"
        " (queued) holds: retry it once that job is final\n"
    )
    # once the holder is final, the retry goes through
    assert cluster.cli("cancel", str(new)).returncode == 0
    assert cluster.cli("retry", str(old)).stdout == f"{old} queued\n"


# ---- the Python client ------------------------------------------------------------------------


def test_the_client_says_which_jobs_existed_over_both_submit_paths(cluster: Cluster) -> None:
    queue = f"{IDLE}-api"
    with Client(cluster.server.address) as c:
        first, plain = c.submit(
            [JobSpec(argv=("echo", "1"), queue=queue, unique="api"), JobSpec(argv=("true",))]
        )
        assert not first.existing and not plain.existing
        # the unary Submit (ids_only): the job found is the stored one, not the spec sent
        (unary,) = c.submit([JobSpec(argv=("echo", "2"), queue=queue, unique="api")])
        # the SubmitStream (ids_only too)
        streamed = c.submit_one(JobSpec(argv=("echo", "3"), queue=queue, unique="api"))
        for found in (unary, streamed):
            assert found.existing and found.id == first.id
            assert found.spec.argv == ("echo", "1") and found.status is JobStatus.QUEUED
        # a key twice in one submit: one job, the later spec answered with it
        a, b = c.submit([JobSpec(argv=("echo", "x"), queue=queue, unique="twice")] * 2)
        assert (a.existing, b.existing, b.id) == (False, True, a.id)
    assert len(jobs_in(cluster, queue)) == 2


# ---- races ------------------------------------------------------------------------------------


def race(addresses: list[str], queue: str, key: str, clients: int, submits: int) -> list[Job]:
    """`clients` threads, each with a client of its own (alternating between `addresses`),
    submitting the key `submits` times, alternately unary and over the stream, all starting
    together; every answer."""
    gate = threading.Barrier(clients)
    answers: list[Job] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with Client(addresses[i % len(addresses)]) as c:
                gate.wait(20)
                for n in range(submits):
                    spec = JobSpec(argv=("echo", f"{i}-{n}"), queue=queue, unique=key)
                    answers.append(c.submit([spec])[0] if n % 2 else c.submit_one(spec))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and not any(t.is_alive() for t in threads)
    return answers


def one_job(answers: list[tuple[int, bool]], total: int) -> int:
    """Every answer (id, existing) names one job, and exactly one answer made it: its id."""
    assert len(answers) == total
    assert len({job_id for job_id, _ in answers}) == 1, sorted(set(answers))
    assert sorted(existing for _, existing in answers) == [False] + [True] * (total - 1)
    return answers[0][0]


def test_racing_submits_of_one_key_store_one_job(cluster: Cluster) -> None:
    queue = f"{IDLE}-race"
    # Given 8 clients submitting one key 20 times each, and 4 CLIs at the same time
    clis: list[subprocess.CompletedProcess[str]] = []
    argv = ("--json", "submit", "--queue", queue, "--unique", "race", "--", "true")
    cli_threads = [threading.Thread(target=lambda: clis.append(cluster.cli(*argv))) for _ in "1234"]
    for t in cli_threads:
        t.start()
    answers = [(j.id, j.existing) for j in race([cluster.server.address], queue, "race", 8, 20)]
    for t in cli_threads:
        t.join(60)
    assert [r.returncode for r in clis] == [0] * 4, clis
    answers += [(obj["id"], obj["existing"]) for obj in (json.loads(r.stdout) for r in clis)]
    # Then one job is stored, and every answer is that job
    made = one_job(answers, 164)
    assert [j["id"] for j in jobs_in(cluster, queue)] == [made]


@pytest.fixture
def two_servers(tmp_path: Path, postgres_url: str) -> Iterator[list[ServerProcess]]:
    redis = RedisProcess(tmp_path)
    redis.start()
    servers = [ServerProcess(tmp_path, redis.url, db=postgres_url) for _ in range(2)]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop(timeout=15)
        redis.kill()
    for s in servers:
        assert "Traceback" not in s.output(), s.output()


@pytest.mark.single_store  # PostgreSQL: the one store several servers share
def test_racing_submits_through_two_servers_on_one_database_store_one_job(
    two_servers: list[ServerProcess],
) -> None:
    addresses = [s.address for s in two_servers]
    made = one_job([(j.id, j.existing) for j in race(addresses, "shared", "across", 8, 20)], 160)
    # read through each server: one job with the key
    for address in addresses:
        r = run_cli(address, "--json", "list", "--queue", "shared")
        assert [j["id"] for j in json.loads(r.stdout)] == [made]
    # And a retry through one server of a job whose key the other gave away is refused
    with Client(addresses[0]) as a, Client(addresses[1]) as b:
        a.cancel(made)
        (new,) = b.submit([JobSpec(argv=("true",), queue="shared", unique="across")])
        assert not new.existing
        with pytest.raises(FailedPrecondition, match=f"which job {new.id}"):
            a.retry(made)
