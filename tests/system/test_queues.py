"""Queue controls with real processes: `dts-client queues`, `queue pause|resume` (durable
across a server restart) and `queue limit` (never more running at once than the limit, across
workers, and a killed worker's slots come back when its lease is reaped)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dts.client import Client
from dts.domain import QUEUE_NAME_CHARS, JobSpec, JobStatus
from dts.errors import InvalidArgument
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from tests.conftest import Cluster
from tests.harness import RedisProcess, ServerProcess, WorkerProcess, run_cli, wait_until

CLIENT, WORKER, ADMIN = ("client-token-" + "c" * 20, "worker-token-" + "w" * 20, "adm-" + "a" * 20)


def sh(script: str, queue: str, **kw: object) -> JobSpec:
    return JobSpec(argv=(script,), shell=True, queue=queue, **kw)  # type: ignore[arg-type]


def statuses(c: Client, ids: list[int]) -> list[str]:
    return [c.get(i).status.value for i in ids]


def all_succeeded(c: Client, ids: list[int]) -> bool:
    return statuses(c, ids) == ["succeeded"] * len(ids)


def queues_json(cluster: Cluster) -> dict[str, dict[str, object]]:
    out = cluster.cli("--json", "queues")
    assert out.returncode == 0, out.stderr
    return {q["queue"]: q for q in json.loads(out.stdout)}


def told(cluster: Cluster, worker: int, text: str) -> bool:
    return text in cluster.workers[worker].output()


def test_queues_lists_counts_settings_and_the_workers_serving_each(
    fresh_cluster: Cluster,
) -> None:
    # Given a worker of two queues, a job of one scheduled for later, one queued in a queue
    # nobody serves, and a limit on a queue with no jobs
    fresh_cluster.add_worker("w1", "--queues", "alpha,beta")
    with fresh_cluster.client() as c:
        c.submit([sh("true", "alpha", delay=3600), sh("true", "orphan")])
    assert fresh_cluster.cli("queue", "limit", "empty", "3").stdout == "queue empty limit 3\n"
    # When the queues are listed, then each one has its counts, setting and workers
    text = fresh_cluster.cli("queues")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        "QUEUE   QUEUED  RUNNING  SCHEDULED  WAITING  PAUSED  LIMIT  WORKERS",
        "alpha   0       0        1          0        no      -      w1",
        "beta    0       0        0          0        no      -      w1",
        "empty   0       0        0          0        no      3      -",
        "orphan  1       0        0          0        no      -      -",
    ]
    assert queues_json(fresh_cluster)["empty"] == {
        "queue": "empty",
        "queued": 0,
        "running": 0,
        "scheduled": 0,
        "waiting": 0,
        "paused": False,
        "limit": 3,
        "workers": [],
    }
    # And a queue whose setting is lifted and that has nothing else is listed no more
    assert fresh_cluster.cli("queue", "limit", "empty", "none").stdout == "queue empty limit none\n"
    assert "empty" not in queues_json(fresh_cluster)


def test_a_paused_queue_keeps_its_jobs_queued_running_ones_finish_and_resume_runs_them(
    fresh_cluster: Cluster, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    fresh_cluster.add_worker("w1", "--queues", "p,other", "--concurrency", "2")
    with fresh_cluster.client() as c:
        # Given a job of queue p running (it waits for a file)
        (running,) = c.submit([sh(f"while [ ! -f {gate} ]; do sleep 0.05; done", "p")])
        wait_until(lambda: c.get(running.id).status is JobStatus.RUNNING, 20, what="job to run")
        # When p is paused and more jobs are submitted to it
        out = fresh_cluster.cli("queue", "pause", "p")
        assert (out.returncode, out.stdout) == (0, "queue p paused\n"), out.stderr
        held = [j.id for j in c.submit([sh("echo held", "p") for _ in range(3)])]
        # Then the worker learns it and takes none of them, though it has a free slot: a job
        # of its other queue submitted after them runs, while p's stay queued
        wait_until(lambda: told(fresh_cluster, 0, "queue p is paused"), 10, what="worker told")
        (other,) = c.submit([sh("echo other", "other")])
        wait_until(lambda: all_succeeded(c, [other.id]), 20, what="other queue's job")
        assert statuses(c, held) == ["queued"] * 3
        # And the job that was running finishes
        gate.touch()
        wait_until(lambda: all_succeeded(c, [running.id]), 20, what="running job to finish")
        (after,) = c.submit([sh("echo after", "other")])
        wait_until(lambda: all_succeeded(c, [after.id]), 20, what="a job after the finish")
        assert statuses(c, held) == ["queued"] * 3
        assert queues_json(fresh_cluster)["p"]["queued"] == 3
        # When p is resumed, then its jobs run
        out = fresh_cluster.cli("queue", "resume", "p")
        assert (out.returncode, out.stdout) == (0, "queue p resumed\n"), out.stderr
        wait_until(lambda: all_succeeded(c, held), 20, what="held jobs to run after resume")
    assert told(fresh_cluster, 0, "queue p is open again")


def test_a_pause_outlives_a_server_restart(fresh_cluster: Cluster) -> None:
    fresh_cluster.add_worker("w1", "--queues", "p,other")
    assert fresh_cluster.cli("queue", "pause", "p").returncode == 0
    assert fresh_cluster.cli("queue", "limit", "other", "5").returncode == 0
    fresh_cluster.restart_server("--worker-timeout", "2")
    listed = queues_json(fresh_cluster)
    assert (listed["p"]["paused"], listed["other"]["limit"]) == (True, 5)
    with fresh_cluster.client() as c:
        (held,) = c.submit([sh("echo p", "p")])
        (other,) = c.submit([sh("echo other", "other")])
        wait_until(lambda: all_succeeded(c, [other.id]), 30, what="other queue's job")
        assert statuses(c, [held.id]) == ["queued"]
        assert fresh_cluster.cli("queue", "resume", "p").returncode == 0
        wait_until(lambda: all_succeeded(c, [held.id]), 20, what="p's job after resume")


def most_at_once(ledger: Path) -> int:
    """The most jobs the ledger saw running at once (each line: start|end TIME JOB)."""
    events = []
    for line in ledger.read_text().splitlines():
        what, when, _ = line.split()
        events.append((float(when), 0 if what == "end" else 1))  # an end first at a tie
    most = now = 0
    for _, step in sorted(events):
        now += 1 if step else -1
        most = max(most, now)
    return most


def test_a_limit_of_2_holds_across_4_workers_and_lifts(
    fresh_cluster: Cluster, tmp_path: Path
) -> None:
    # Given a limit of 2 on queue lim, served by 4 workers of 2 slots each
    ledger = tmp_path / "ledger"
    assert fresh_cluster.cli("queue", "limit", "lim", "2").stdout == "queue lim limit 2\n"
    for i in range(4):
        fresh_cluster.add_worker(f"w{i + 1}", "--queues", "lim", "--concurrency", "2")
    # When 10 jobs that record their start and end are submitted
    script = (
        f'echo "start $(date +%s.%N) $DTS_JOB_ID" >> {ledger}; sleep 0.5;'
        f' echo "end $(date +%s.%N) $DTS_JOB_ID" >> {ledger}'
    )
    with fresh_cluster.client() as c:
        ids = [j.id for j in c.submit([sh(script, "lim") for _ in range(10)])]
        # Then they all finish, never more than 2 at once (and 2 at once at times)
        wait_until(lambda: all_succeeded(c, ids), 60, what="limited jobs to finish")
    assert most_at_once(ledger) == 2, ledger.read_text()
    assert len(ledger.read_text().splitlines()) == 20


def test_limit_none_lifts_a_limit(fresh_cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    fresh_cluster.add_worker("w1", "--queues", "one", "--concurrency", "2")
    assert fresh_cluster.cli("queue", "limit", "one", "1").returncode == 0
    with fresh_cluster.client() as c:
        wait_on_gate = f"while [ ! -f {gate} ]; do sleep 0.05; done"
        ids = [j.id for j in c.submit([sh(wait_on_gate, "one") for _ in range(2)])]
        wait_until(lambda: "running" in statuses(c, ids), 20, what="a job to run")
        wait_until(lambda: told(fresh_cluster, 0, "queue one is at its run limit"), 10)
        assert sorted(statuses(c, ids)) == ["queued", "running"]
        # When the limit is lifted, the other runs beside it
        assert fresh_cluster.cli("queue", "limit", "one", "none").stdout == "queue one limit none\n"
        wait_until(lambda: statuses(c, ids) == ["running"] * 2, 20, what="both to run")
        gate.touch()
        wait_until(lambda: all_succeeded(c, ids), 20, what="both to finish")


def test_a_killed_workers_limited_slots_come_back_when_its_lease_is_reaped(
    fresh_cluster: Cluster, tmp_path: Path
) -> None:
    # Given a limit of 2 on queue lim and a worker running two of its jobs
    done = tmp_path / "done"
    assert fresh_cluster.cli("queue", "limit", "lim", "2").returncode == 0
    doomed = fresh_cluster.add_worker("doomed", "--queues", "lim", "--concurrency", "2")
    with fresh_cluster.client() as c:
        wait_done = f"while [ ! -f {done} ]; do sleep 0.05; done"
        blockers = [j.id for j in c.submit([sh(wait_done, "lim")] * 2)]
        wait_until(lambda: statuses(c, blockers) == ["running"] * 2, 20, what="blockers to run")
        # And another worker, held back by the limit from the jobs submitted next
        fresh_cluster.add_worker("alive", "--queues", "lim", "--concurrency", "2")
        rest = [j.id for j in c.submit([sh("echo rest", "lim") for _ in range(3)])]
        wait_until(lambda: told(fresh_cluster, 1, "queue lim is at its run limit"), 10)
        assert statuses(c, rest) == ["queued"] * 3
        # When the first worker is killed with SIGKILL (its jobs' leases are never renewed)
        doomed.signal(signal.SIGKILL)
        doomed.wait(10)
        done.touch()  # (the blockers' next attempts end at once)
        # Then once its leases are reaped its slots come back: every job finishes
        wait_until(lambda: all_succeeded(c, blockers + rest), 60, what="all jobs to finish")
        for job_id in blockers:
            assert [a.outcome.value for a in c.history(job_id)] == ["lost", "succeeded"]
            assert c.get(job_id).worker == "alive"


def test_bad_queue_commands_say_so_in_one_line_and_store_nothing(fresh_cluster: Cluster) -> None:
    bad = [
        ("queue",),
        ("queue", "stop", "q"),
        ("queue", "pause"),
        ("queue", "pause", "q", "extra"),
        ("queue", "limit", "q"),
        ("queue", "limit", "q", "-1"),
        ("queue", "limit", "q", "0"),
        ("queue", "limit", "q", "abc"),
        ("queue", "limit", "q", "1.5"),
        ("queue", "pause", "a b"),
        ("queue", "pause", "x" * 65),
        ("queue", "resume", "q/1"),
        ("queue", "limit", "", "2"),
        ("queues", "extra"),
    ]
    for args in bad:
        out = fresh_cluster.cli(*args)
        assert out.returncode == 2, (args, out)
        assert out.stdout == "" and len(out.stderr.splitlines()) == 1, (args, out.stderr)
        assert "Traceback" not in out.stderr
    assert (
        "limit must be between 1 and 1000000 (or 'none'), got -1"
        in fresh_cluster.cli("queue", "limit", "q", "-1").stderr
    )
    assert queues_json(fresh_cluster) == {}
    # And the server refuses the same on its own (a client that does not check first)
    with fresh_cluster.client() as c:
        with pytest.raises(InvalidArgument, match="queue name must be"):
            c.pause_queue("a b")
        with pytest.raises(InvalidArgument, match="limit must be between 1 and 1000000"):
            c.set_queue_limit("q", -1)
    assert queues_json(fresh_cluster) == {}


def test_queue_controls_take_a_client_or_admin_token(tmp_path: Path) -> None:
    # Given a server that requires tokens
    r = RedisProcess(tmp_path)
    r.start()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"client {CLIENT}\nworker {WORKER}\nadmin {ADMIN}\n")
    tokens.chmod(0o600)
    s = ServerProcess(tmp_path, r.url, "--tokens-file", str(tokens), "--plaintext-tokens")
    s.start()
    try:
        for name, token in (("client", CLIENT), ("worker", WORKER), ("admin", ADMIN)):
            (tmp_path / name).write_text(token + "\n")
            (tmp_path / name).chmod(0o600)

        def cli(who: str, *args: str) -> subprocess.CompletedProcess[str]:
            auth = ("--token-file", str(tmp_path / who), "--plaintext-token") if who else ()
            return run_cli(s.address, *auth, *args)

        # Then a client or admin token pauses, lists and resumes; a worker token may not
        assert cli("client", "queue", "pause", "q").stdout == "queue q paused\n"
        assert (
            "a worker token may not call ResumeQueue"
            in cli("worker", "queue", "resume", "q").stderr
        )
        assert "a token is required" in cli("", "queues").stderr
        assert cli("admin", "queues").stdout.splitlines()[1].split()[:6] == ["q", *"0000", "yes"]
        assert cli("admin", "queue", "resume", "q").stdout == "queue q resumed\n"
    finally:
        s.stop()
        r.kill()


names = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=70),
    st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
)
run_limits = st.one_of(st.none(), st.integers(min_value=-(2**31), max_value=2**31 - 1))


@settings(
    max_examples=60,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=names, limit=run_limits, pause=st.booleans())
def test_any_queue_request_gets_a_proper_answer_and_only_valid_ones_are_stored(
    fresh_cluster: Cluster, name: str, limit: int | None, pause: bool
) -> None:
    valid_name = 1 <= len(name) <= 64 and all(ch in QUEUE_NAME_CHARS for ch in name)
    with grpc.insecure_channel(fresh_cluster.server.address) as channel:
        stub = pb_grpc.QueuesStub(channel)
        ref = pb.QueueRef(name=name)
        calls = [
            (
                lambda: stub.SetQueueLimit(
                    pb.QueueLimitRequest(name=name, limit=limit), timeout=10
                ),
                valid_name and (limit is None or 1 <= limit <= 10**6),
            ),
            (
                lambda: (stub.PauseQueue if pause else stub.ResumeQueue)(ref, timeout=10),
                valid_name,
            ),
        ]
        for call, valid in calls:
            try:
                call()
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
                assert "Traceback" not in (e.details() or "")
            assert code == (grpc.StatusCode.OK if valid else grpc.StatusCode.INVALID_ARGUMENT)
        listed = stub.ListQueues(pb.QueueListRequest(), timeout=10).queues
    for q in listed:
        assert 1 <= len(q.name) <= 64 and set(q.name) <= QUEUE_NAME_CHARS, q
        assert not q.HasField("limit") or 1 <= q.limit <= 10**6, q


@pytest.mark.single_store  # PostgreSQL only: several servers share one database
def test_two_servers_on_one_database_share_pauses_and_limits(
    tmp_path: Path, postgres_url: str
) -> None:
    redis = RedisProcess(tmp_path)
    redis.start()
    a, b = (
        ServerProcess(tmp_path, redis.url, "--worker-timeout", "2", db=postgres_url) for _ in "ab"
    )
    workers: list[WorkerProcess] = []
    try:
        a.start()
        b.start()
        # Given two workers of queues lim and other, one on each server
        for name, server in (("wa", a), ("wb", b)):
            w = WorkerProcess(
                tmp_path,
                server.address,
                redis.url,
                name,
                "--queues",
                "lim,other",
                "--concurrency",
                "4",
            )
            w.start()
            workers.append(w)
        # When lim is paused through server a, then a job of lim submitted through b waits
        assert run_cli(a.address, "queue", "pause", "lim").stdout == "queue lim paused\n"
        with Client(b.address) as c:
            (held,) = c.submit([sh("echo held", "lim")])
            others = [j.id for j in c.submit([sh("echo other", "other") for _ in range(4)])]
            wait_until(lambda: all_succeeded(c, others), 30, what="other queue's jobs")
            assert statuses(c, [held.id]) == ["queued"]
        # When it is resumed through b and limited to 2 through a, with jobs that keep a ledger
        ledger = tmp_path / "ledger"
        script = (
            f'echo "start $(date +%s.%N) $DTS_JOB_ID" >> {ledger}; sleep 0.5;'
            f' echo "end $(date +%s.%N) $DTS_JOB_ID" >> {ledger}'
        )
        assert run_cli(a.address, "queue", "limit", "lim", "2").returncode == 0
        with Client(a.address) as c:
            ids = [j.id for j in c.submit([sh(script, "lim") for _ in range(8)])]
            assert run_cli(b.address, "queue", "resume", "lim").returncode == 0
            # Then everything runs, never more than 2 of lim at once across both servers
            wait_until(lambda: all_succeeded(c, [held.id, *ids]), 60, what="lim's jobs")
        assert most_at_once(ledger) == 2, ledger.read_text()
    finally:
        for w in workers:
            w.stop(timeout=15)
        for s in (a, b):
            s.stop(timeout=15)
        redis.kill()


def test_a_limited_queues_failing_job_retries_and_ends_while_a_long_job_runs(
    fresh_cluster: Cluster, tmp_path: Path
) -> None:
    # Given a run limit of 8 on the default queue and a worker of 2 slots
    gate = tmp_path / "gate"
    assert fresh_cluster.cli("queue", "limit", "default", "8").returncode == 0
    fresh_cluster.add_worker("w1", "--queues", "default", "--concurrency", "2")
    # When short jobs, a failing one with a retry, and two long ones are submitted together
    # (a slot that ran short jobs claims several ahead: here all the rest, in one go)
    wait_on_gate = (
        f"touch {tmp_path}/started-$DTS_JOB_ID; while [ ! -f {gate} ]; do sleep 0.05; done"
    )
    short = [sh(f"echo short {i}", "default") for i in range(6)]
    failing = sh("echo failing; exit 7", "default", max_retries=1, backoff=0.2)
    with fresh_cluster.client() as c:
        jobs = c.submit([*short[:3], failing, *short[3:], *[sh(wait_on_gate, "default")] * 2])
        ids = [j.id for j in jobs]
        try:
            # Then the failing job's result does not wait behind a long job: it is retried
            # and ends failed while the long jobs run
            wait_until(lambda: c.get(ids[3]).status.final, 15, what="the failing job to end")
            assert [a.outcome.value for a in c.history(ids[3])] == ["failed", "failed"]
            # And the long jobs run side by side (neither waits claimed behind the other)
            wait_until(
                lambda: all((tmp_path / f"started-{i}").exists() for i in ids[-2:]),
                15,
                what="both long jobs to run",
            )
            assert statuses(c, ids[-2:]) == ["running"] * 2
            assert statuses(c, ids[:3] + ids[4:7]) == ["succeeded"] * 6
        finally:
            gate.touch()
        wait_until(lambda: all_succeeded(c, ids[-2:]), 20, what="the long jobs to end")
