"""Schedules end to end, through dts-client, dts-server and a dts-worker: the commands, due
times fired once each (also across a restart, under each catch-up policy), overlap skip,
apply from a TOML file, and bad input refused with nothing stored."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dts.errors import Unavailable
from tests.conftest import Cluster
from tests.harness import wait_until

ROOT = Path(__file__).resolve().parents[2]


def jobs_of(c: Cluster, name: str) -> list[dict[str, Any]]:
    r = c.cli("--json", "list", "--limit", "10000")
    if r.returncode == 3:  # the server did not answer this time: wait_until asks again
        raise Unavailable(r.stderr)
    assert r.returncode == 0, r.stderr
    return [j for j in json.loads(r.stdout) if j["schedule"] == name]


def due_times(c: Cluster, name: str) -> list[float]:
    """The due times of the schedule's jobs, as epoch seconds, each once (asserted)."""
    from datetime import datetime

    dues = [j["due_at"] for j in jobs_of(c, name) if j["due_at"]]
    assert all(n == 1 for n in Counter(dues).values()), f"a due time fired twice: {dues}"
    return sorted(datetime.fromisoformat(d.replace("Z", "+00:00")).timestamp() for d in dues)


def show(c: Cluster, name: str) -> dict[str, Any]:
    r = c.cli("--json", "schedule", "show", name)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_add_list_show_pause_resume_run_remove(cluster: Cluster) -> None:
    add = cluster.cli(
        "schedule", "add", "hourly", "--every", "1h", "--priority", "3", "--env", "A=1",
        "--name", "lbl", "--retries", "2", "--", "sh", "-c", "echo $A",
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    assert add.stdout.startswith("schedule hourly added; next due ")
    again = cluster.cli("schedule", "add", "hourly", "--every", "5m", "--", "true")
    assert again.returncode == 1 and "schedule hourly exists" in again.stderr
    assert "hourly" in cluster.cli("schedule", "list").stdout
    s = show(cluster, "hourly")
    assert s["every"] == 3600 and s["priority"] == 3 and s["env"] == {"A": "1"}
    assert s["max_retries"] == 2 and s["catchup"] == "last" and s["overlap"] == "allow"
    assert len(s["upcoming"]) == 5 and s["jobs"] == []
    assert "next:" in cluster.cli("schedule", "show", "hourly").stdout
    # run: one job now, its id printed; it carries the schedule's options
    run = cluster.cli("schedule", "run", "hourly")
    assert run.returncode == 0, run.stderr
    job_id = int(run.stdout)
    wait_until(lambda: cluster.client().get(job_id).status.final, what="the run job ends")
    status = cluster.cli("status", str(job_id)).stdout
    assert "schedule:    hourly" in status and "due_at:      (run by hand)" in status
    assert cluster.cli("logs", str(job_id)).stdout == "1\n"
    job = json.loads(cluster.cli("--json", "status", str(job_id)).stdout)
    assert job["priority"] == 3 and job["name"] == "lbl" and job["max_retries"] == 2
    assert show(cluster, "hourly")["jobs"][0]["id"] == job_id
    # pause, resume, remove
    assert cluster.cli("schedule", "pause", "hourly").stdout == "schedule hourly paused\n"
    paused = show(cluster, "hourly")
    assert paused["paused"] is True and paused["upcoming"] == [] and paused["next_due"] is None
    assert "paused" in cluster.cli("schedule", "list").stdout
    assert cluster.cli("schedule", "resume", "hourly").stdout == "schedule hourly resumed\n"
    assert show(cluster, "hourly")["paused"] is False
    assert cluster.cli("schedule", "remove", "hourly").returncode == 0
    gone = cluster.cli("schedule", "show", "hourly")
    assert gone.returncode == 1 and "no schedule named 'hourly'" in gone.stderr
    assert cluster.client().get(job_id).schedule == "hourly"  # its jobs stay


def test_every_second_fires_repeatedly_each_due_time_once(cluster: Cluster) -> None:
    assert cluster.cli("schedule", "add", "sec", "--every", "1s", "--", "true").returncode == 0
    try:
        dues = wait_until(lambda: (d := due_times(cluster, "sec")) and len(d) >= 4 and d)
        assert all(d == int(d) for d in dues)
        assert dues == [dues[0] + i for i in range(len(dues))]  # none missed, none twice
        job = jobs_of(cluster, "sec")[0]
        assert "due_at:" in cluster.cli("status", str(job["id"])).stdout
    finally:
        cluster.cli("schedule", "remove", "sec")


def test_a_cron_schedule_fires_at_its_times_in_its_zone(cluster: Cluster) -> None:
    # six fields, seconds first (cronsim's form): every second second
    add = cluster.cli(
        "schedule", "add", "cron2", "--cron", "*/2 * * * * *", "--tz", "America/New_York",
        "--", "true",
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    try:
        dues = wait_until(lambda: (d := due_times(cluster, "cron2")) and len(d) >= 3 and d)
        assert all(int(d) % 2 == 0 for d in dues)
        assert dues == [dues[0] + 2 * i for i in range(len(dues))]
        assert show(cluster, "cron2")["tz"] == "America/New_York"
    finally:
        cluster.cli("schedule", "remove", "cron2")


def test_a_paused_schedule_makes_no_jobs(cluster: Cluster) -> None:
    cluster.cli("schedule", "add", "still", "--every", "1s", "--", "true")
    cluster.cli("schedule", "pause", "still")
    try:
        before = len(jobs_of(cluster, "still"))
        # a tick comes every second: three of them pass without a job
        cluster.cli("schedule", "add", "marker", "--every", "1s", "--", "true")
        wait_until(lambda: len(due_times(cluster, "marker")) >= 3)
        assert len(jobs_of(cluster, "still")) == before
    finally:
        cluster.cli("schedule", "remove", "still")
        cluster.cli("schedule", "remove", "marker")


@pytest.mark.parametrize("policy", ["none", "last", "all"])
def test_a_restarted_server_catches_up_by_policy(fresh_cluster: Cluster, policy: str) -> None:
    c = fresh_cluster
    c.add_worker("w1")
    add = c.cli("schedule", "add", "s", "--every", "1s", "--catchup", policy, "--", "true")
    assert add.returncode == 0, add.stderr
    wait_until(lambda: len(due_times(c, "s")) >= 2)
    c.server.stop()
    down = time.time()
    last_before = max(due_times_offline(c))
    # the outage itself: five due times pass with no server
    wait_until(lambda: time.time() > down + 5, timeout=10)
    restart = time.time()
    c.restart_server("--worker-timeout", "2")
    up = time.time()
    wait_until(lambda: max(due_times(c, "s")) > up + 2, what="due times after the restart")
    dues = due_times(c, "s")  # each once (asserted there)
    after = [d for d in dues if d > last_before]
    missed = [d for d in after if d < restart]
    if policy == "all":
        assert after == [last_before + 1 + i for i in range(len(after))]  # each missed time
        assert len(missed) >= 4
    elif policy == "none":
        assert missed == [] and after[0] - last_before >= 5
    else:
        assert len(missed) <= 1 and after[0] - last_before >= 4 and after[0] < up
        assert after == [after[0] + i for i in range(len(after))]
    if policy != "all":
        assert "schedule s missed" in c.server.output()


def due_times_offline(c: Cluster) -> list[float]:
    """The due times of schedule s read from the store file (the server is down)."""
    import sqlite3

    from dts.server.store.url import parse_store_url

    url = parse_store_url(str(c.server.db))
    if url.kind == "postgres":
        import psycopg

        with psycopg.connect(url.target) as conn:
            rows = conn.execute("SELECT due_at FROM jobs WHERE schedule = 's'").fetchall()
    else:
        conn = sqlite3.connect(url.target)
        rows = conn.execute("SELECT due_at FROM jobs WHERE schedule = 's'").fetchall()
        conn.close()
    return [r[0] for r in rows if r[0] is not None]


def test_overlap_skip_starts_no_tick_while_the_last_job_runs(cluster: Cluster) -> None:
    add = cluster.cli(
        "schedule", "add", "slow", "--every", "1s", "--overlap", "skip", "--", "sleep", "4"
    )
    assert add.returncode == 0, add.stderr
    try:
        s = wait_until(lambda: (x := show(cluster, "slow"))["skips"] >= 2 and x)
        assert s["last_skip_at"] is not None
        assert "skips:      " in cluster.cli("schedule", "show", "slow").stdout
        jobs = jobs_of(cluster, "slow")
        assert len([j for j in jobs if j["status"] in ("queued", "running")]) <= 1
    finally:
        cluster.cli("schedule", "remove", "slow")
    assert "tick(s) skipped, its last job is not final (overlap skip)" in cluster.server.output()


def test_apply_adds_changes_prunes_and_dry_run_changes_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    sample = ROOT / "etc" / "dts" / "schedules.toml"
    dry = cluster.cli("schedule", "apply", str(sample), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "added     heartbeat",
        "added     nightly-report",
        "dry run: nothing changed",
    ]
    assert "heartbeat" not in cluster.cli("schedule", "list").stdout
    assert cluster.cli("schedule", "apply", str(sample)).returncode == 0
    assert show(cluster, "nightly-report")["tz"] == "Europe/Paris"
    same = cluster.cli("schedule", "apply", str(sample))
    assert same.stdout.split() == ["unchanged", "heartbeat", "unchanged", "nightly-report"]
    mine = tmp_path / "mine.toml"
    mine.write_text('[schedules.heartbeat]\nevery = "10m"\ncommand = "echo alive"\n')
    out = cluster.cli("--json", "schedule", "apply", str(mine), "--prune")
    assert json.loads(out.stdout)["changes"] == [
        {"name": "heartbeat", "change": "changed"},
        {"name": "nightly-report", "change": "removed"},
    ]
    assert show(cluster, "heartbeat")["every"] == 600
    assert "nightly-report" not in cluster.cli("schedule", "list").stdout
    cluster.cli("schedule", "remove", "heartbeat")


BAD_ADDS = [
    (["--cron", "61 * * * *"], "invalid cron expression"),
    (["--cron", "* * *"], "invalid cron expression"),
    (["--every", "0"], "a duration must be more than 0"),
    (["--every", "soon"], "not a duration"),
    (["--cron", "* * * * *", "--tz", "Mars/Olympus"], "unknown time zone"),
    (["--every", "1m", "--catchup", "some"], "invalid choice"),
    (["--every", "1m", "--overlap", "never"], "invalid choice"),
    (["--every", "1m", "--delay", "5"], "--delay makes no sense for a schedule"),
    (["--every", "1m", "--cron", "* * * * *"], "not allowed with"),
    ([], "one of the arguments --cron --every is required"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ADDS)
def test_bad_adds_are_one_line_exit_2_and_store_nothing(
    cluster: Cluster, args: list[str], message: str
) -> None:
    r = cluster.cli("schedule", "add", "bad", *args, "--", "true")
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1
    assert "bad" not in cluster.cli("schedule", "list").stdout


BAD_FILES = [
    ('[schedules.x]\nevery = "1m"\ncommand = "true"\noops = 1\n', "unknown key 'oops'"),
    ('[schedules.x]\nevery = "1m"\n', "no command"),
    ('[schedules.x]\nevery = "1m"\ncommand = "true"\n[schedules.y\n', "(at line 7"),
    ('[schedules.x]\ncron = "bad"\ncommand = "true"\n', "invalid cron expression"),
    ('[schedules.x]\nevery = "1m"\ntz = "No/Where"\ncommand = "true"\n', "unknown time zone"),
    ("[other]\nx = 1\n", "unknown table or key 'other'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_a_bad_file_is_one_line_exit_2_and_applies_nothing(
    cluster: Cluster, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[schedules.good]\nevery = "1h"\ncommand = "true"\n' + text)
    r = cluster.cli("schedule", "apply", str(path))
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1
    assert "good" not in cluster.cli("schedule", "list").stdout


@pytest.mark.single_store  # PostgreSQL: several servers share it
def test_two_servers_on_one_database_fire_each_due_time_once(
    tmp_path: Path, postgres_url: str
) -> None:
    from tests.harness import RedisProcess, ServerProcess, WorkerProcess, run_cli

    redis = RedisProcess(tmp_path)
    redis.start()
    servers = [ServerProcess(tmp_path, redis.url, db=postgres_url) for _ in range(2)]
    worker = None
    try:
        for s in servers:
            s.start()
        worker = WorkerProcess(tmp_path, servers[0].address, redis.url, "w1")
        worker.start()
        a, b = servers
        added = run_cli(b.address, "schedule", "add", "s", "--every", "1s", "--", "true")
        assert added.returncode == 0, added.stderr

        def dues() -> list[str]:
            r = run_cli(a.address, "--json", "list", "--limit", "10000")
            return [j["due_at"] for j in json.loads(r.stdout) if j["schedule"] == "s"]

        wait_until(lambda: len(dues()) >= 4, 20, what="jobs of the schedule")
        # When the leading server is killed, the other one's ticker takes over
        leader = wait_until(
            lambda: [s for s in servers if "this server now leads" in s.output()], 10
        )[0]
        other = b if leader is a else a
        before = len(dues())
        leader.kill()
        if leader is a:
            worker.stop(timeout=15)
            worker = WorkerProcess(tmp_path, other.address, redis.url, "w2")
            worker.start()
        got = wait_until(
            lambda: (
                (r := run_cli(other.address, "--json", "list", "--limit", "10000"))
                and len([j for j in json.loads(r.stdout) if j["schedule"] == "s"]) >= before + 4
                and [j["due_at"] for j in json.loads(r.stdout) if j["schedule"] == "s"]
            ),
            30,
            what="jobs fired by the other server",
        )
        # Then every due time has exactly one job, whichever server fired it
        assert all(n == 1 for n in Counter(got).values()), got
        assert "this server now leads" in other.output()
    finally:
        if worker is not None:
            worker.stop(timeout=15)
        for s in servers:
            s.stop(timeout=15)
        redis.kill()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression"),
        ({"cron": "* * * * *", "tz": "Nowhere/Land"}, "unknown time zone"),
        ({"every": 0.0}, "either a cron expression or an interval"),
        ({"every": 60.0, "catchup": "sometimes"}, "catchup must be none, last or all"),
        ({"every": 60.0, "overlap": "maybe"}, "overlap must be allow or skip"),
        ({"every": 60.0, "delay": 5.0}, "delay is not allowed"),
    ],
)
def test_the_server_refuses_bad_schedules_of_any_client(
    cluster: Cluster, fields: dict[str, Any], message: str
) -> None:
    import grpc

    from dts.v1 import dts_pb2 as pb
    from dts.v1 import dts_pb2_grpc as pb_grpc

    fields = dict(fields)  # the parameter is shared by both stores' runs
    delay = fields.pop("delay", 0.0)
    spec = pb.JobSpec(argv=["true"], delay=delay)
    req = pb.ScheduleAddRequest(schedule=pb.Schedule(name="raw", spec=spec, **fields))
    with grpc.insecure_channel(cluster.server.address) as channel:
        stub = pb_grpc.SchedulesStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.AddSchedule(req, timeout=10)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in (e.value.details() or "")
        apply = pb.ScheduleApplyRequest(schedules=[req.schedule])
        with pytest.raises(grpc.RpcError) as e:
            stub.ApplySchedules(apply, timeout=10)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "raw" not in cluster.cli("schedule", "list").stdout


def test_schedules_take_a_client_or_admin_token_not_a_workers(tmp_path: Path) -> None:
    from dts.channel import ChannelSecurity
    from tests.harness import RedisProcess, ServerProcess, run_cli

    client, worker = "client-token-" + "c" * 20, "worker-token-" + "w" * 20
    tokens = tmp_path / "tokens"
    tokens.write_text(f"client {client}\nworker {worker}\n")
    for name, token in (("client", client), ("worker", worker)):
        (tmp_path / name).write_text(token + "\n")
    redis = RedisProcess(tmp_path)
    redis.start()
    probe = ChannelSecurity(token=client, plaintext_token=True)
    server = ServerProcess(
        tmp_path, redis.url, "--tokens-file", str(tokens), "--plaintext-tokens", probe=probe
    )
    try:
        server.start()

        def cli(who: str, *args: str) -> Any:
            creds = ("--token-file", str(tmp_path / who), "--plaintext-token") if who else ()
            return run_cli(server.address, *creds, "schedule", *args)

        added = cli("client", "add", "s", "--every", "1h", "--", "true")
        assert added.returncode == 0, added.stderr
        refused = cli("worker", "add", "t", "--every", "1h", "--", "true")
        assert refused.returncode == 1
        assert "a worker token may not call AddSchedule" in refused.stderr
        assert "a token is required" in cli("", "list").stderr
        assert cli("client", "list").stdout.splitlines()[1].startswith("s ")
    finally:
        server.stop()
        redis.kill()
