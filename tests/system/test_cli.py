"""The dts-client contract, end to end: real CLI, real server, two real workers, real Redis."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest

from dts.domain import Outcome
from tests.conftest import Cluster
from tests.harness import BIN, clean_env, free_port, pid_alive, run_cli, wait_until


def submit(cluster: Cluster, *args: str) -> int:
    r = cluster.cli("submit", *args)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def status(cluster: Cluster, job_id: int) -> dict[str, object]:
    r = cluster.cli("--json", "status", str(job_id))
    assert r.returncode == 0, r.stderr
    obj: dict[str, object] = json.loads(r.stdout)
    return obj


def wait_status(
    cluster: Cluster, job_id: int, want: str, timeout: float = 20.0
) -> dict[str, object]:
    return wait_until(
        lambda: (s := status(cluster, job_id))["status"] == want and s,
        timeout,
        what=f"job {job_id} to be {want}",
    )


# ---- submit -----------------------------------------------------------------------------------


def test_submit_prints_the_new_id_and_the_job_succeeds(cluster: Cluster) -> None:
    # Given a cluster, when a command is submitted, then one line with the id is printed
    r = cluster.cli("submit", "--", "echo", "hello", "world")
    assert r.returncode == 0 and r.stderr == ""
    job_id = int(r.stdout)
    job = wait_status(cluster, job_id, "succeeded")
    assert job["exit_code"] == 0 and job["attempts"] == 1
    assert job["worker"] in ("w1", "w2")
    logs = cluster.cli("logs", str(job_id))
    assert logs.stdout == "hello world\n"


def test_submit_json_prints_the_job_object(cluster: Cluster) -> None:
    r = cluster.cli("--json", "submit", "--name", "nightly", "--queue", "default", "--", "true")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    for key in (
        "id",
        "status",
        "command",
        "queue",
        "priority",
        "attempts",
        "max_retries",
        "exit_code",
        "error",
        "worker",
        "created_at",
        "started_at",
        "finished_at",
    ):
        assert key in job
    assert job["name"] == "nightly" and job["status"] in ("queued", "running", "succeeded")
    assert job["created_at"].endswith("Z")


def test_wait_writes_stdout_and_stderr_and_exits_with_the_job_code(cluster: Cluster) -> None:
    r = cluster.cli("submit", "--wait", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    waiting, rest = r.stderr.split("\n", 1)  # first, on stderr: which job it waits for
    assert re.fullmatch(r"waiting for job \d+ \(Ctrl\+C stops waiting, not the job\)", waiting)
    assert (r.returncode, r.stdout, rest) == (3, "out\n", "err\n")


def test_shell_runs_the_single_string_with_sh(cluster: Cluster) -> None:
    r = cluster.cli("submit", "--wait", "--shell", "--", "echo a | tr a b; exit 0")
    assert (r.returncode, r.stdout) == (0, "b\n")


def test_argv_is_not_interpreted_by_a_shell(cluster: Cluster) -> None:
    r = cluster.cli("submit", "--wait", "--", "echo", "$HOME", "|", "*")
    assert (r.returncode, r.stdout) == (0, "$HOME | *\n")


def test_env_and_cwd_reach_the_job(cluster: Cluster, tmp_path: Path) -> None:
    r = cluster.cli(
        "submit",
        "--wait",
        "--env",
        "GREETING=hi there",
        "--env",
        "X=1=2",
        "--cwd",
        str(tmp_path),
        "--shell",
        "--",
        'echo "$GREETING/$X/$(pwd)"',
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"hi there/1=2/{tmp_path}\n"


def test_timeout_kills_the_process_group_and_exits_124(cluster: Cluster, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    r = cluster.cli(
        "submit",
        "--wait",
        "--timeout",
        "1",
        "--shell",
        "--",
        f"sleep 60 & echo $! > {pidfile}; wait",
    )
    assert r.returncode == 124
    child = int(pidfile.read_text())
    wait_until(lambda: not pid_alive(child), 10, what="background child to be killed")


def test_killed_by_signal_exits_128_plus_n(cluster: Cluster) -> None:
    r = cluster.cli("submit", "--wait", "--shell", "--", "kill -9 $$")
    assert r.returncode == 137


def test_retries_with_backoff_run_at_most_n_plus_one_attempts(cluster: Cluster) -> None:
    # Given a job that always fails, with 2 retries and a 0.3 s backoff
    start = time.monotonic()
    r = cluster.cli(
        "--json",
        "submit",
        "--wait",
        "--retries",
        "2",
        "--backoff",
        "0.3",
        "--shell",
        "--",
        "echo attempt $DTS_ATTEMPT; exit 5",
    )
    elapsed = time.monotonic() - start
    # Then it ran 3 times, failed with the last exit code, and waited between attempts
    assert r.returncode == 5
    job = json.loads(r.stdout)
    assert job["status"] == "failed" and job["attempts"] == 3 and job["max_retries"] == 2
    assert job["stdout"] == "attempt 3\n"
    hist = json.loads(cluster.cli("--json", "history", str(job["id"])).stdout)
    assert [a["attempt"] for a in hist] == [1, 2, 3]
    assert all(a["outcome"] == "failed" and a["exit_code"] == 5 for a in hist)
    # backoff ~0.3 s then ~0.6 s (+-25% jitter): at least 0.675 s in all
    assert elapsed >= 0.675
    gaps = [_ts(b["started_at"]) - _ts(a["finished_at"]) for a, b in pairwise(hist)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps


def test_a_retry_that_succeeds_ends_succeeded(cluster: Cluster, tmp_path: Path) -> None:
    flag = tmp_path / "second-time"
    r = cluster.cli(
        "--json",
        "submit",
        "--wait",
        "--retries",
        "3",
        "--backoff",
        "0.05",
        "--shell",
        "--",
        f"test -e {flag} || {{ touch {flag}; exit 1; }}",
    )
    assert r.returncode == 0
    assert json.loads(r.stdout)["attempts"] == 2


def test_delay_holds_the_job_scheduled_until_its_time(cluster: Cluster) -> None:
    before = time.time()
    job_id = submit(cluster, "--delay", "1.5", "--", "true")
    assert status(cluster, job_id)["status"] == "scheduled"
    job = wait_status(cluster, job_id, "succeeded")
    assert _ts(str(job["started_at"])) >= before + 1.5


def test_from_file_submits_a_thousand_jobs_in_one_call(cluster: Cluster, tmp_path: Path) -> None:
    commands = tmp_path / "jobs.txt"
    commands.write_text("".join(f"echo job-{i}\n" for i in range(1000)) + "\n# a comment\n")
    r = cluster.cli("submit", "--queue", "bulk", "--from-file", str(commands))
    assert r.returncode == 0, r.stderr
    ids = [int(x) for x in r.stdout.split()]
    assert len(ids) == 1000 and len(set(ids)) == 1000
    # The bulk queue has no worker yet: all 1000 wait; then a worker drains them
    with cluster.client() as c:
        stats = {(s.queue, s.status.value): s.count for s in c.stats()}
        assert stats[("bulk", "queued")] == 1000
        cluster.add_worker("bulk-worker", "--queues", "bulk", "--concurrency", "4")
        wait_until(
            lambda: (
                {(s.queue, s.status.value): s.count for s in c.stats()}.get(("bulk", "succeeded"))
                == 1000
            ),
            120,
            interval=0.2,
            what="1000 bulk jobs to succeed",
        )
        assert c.logs(ids[123]).stdout == b"job-123\n"


def test_from_file_reads_stdin(cluster: Cluster) -> None:
    r = cluster.cli("submit", "--from-file", "-", input="echo one\necho two\n")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 2


# ---- priorities -------------------------------------------------------------------------------


def test_higher_priority_runs_first_and_fifo_within_a_priority(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given jobs on a queue no worker serves yet, in mixed priorities, each noting its run
    ledger = tmp_path / "order"
    plan = [0, 5, 0, 9, 5, 9, 0]
    ids = [
        submit(
            cluster,
            "--queue",
            "prio",
            "--priority",
            str(p),
            "--shell",
            "--",
            f"echo $DTS_JOB_ID >> {ledger}",
        )
        for p in plan
    ]
    # When one single-slot worker starts on that queue
    cluster.add_worker("prio-worker", "--queues", "prio", "--concurrency", "1")
    with cluster.client() as c:
        for i in ids:
            c.wait(i, 30)
    # Then they ran by priority, and in submit order within a priority
    order = [int(x) for x in ledger.read_text().split()]
    expected = [i for p in (9, 5, 0) for i, q in zip(ids, plan, strict=True) if q == p]
    assert order == expected


# ---- cancel and retry -------------------------------------------------------------------------


def test_cancel_a_running_job_kills_its_process_group(cluster: Cluster, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    job_id = submit(cluster, "--shell", "--", f"sleep 120 & echo $! $$ > {pidfile}; wait")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, what="job to start")
    pids = [int(p) for p in pidfile.read_text().split()]
    r = cluster.cli("cancel", str(job_id))
    assert r.returncode == 0 and "cancelled" in r.stdout
    for pid in pids:
        wait_until(lambda pid=pid: not pid_alive(pid), 10, what=f"pid {pid} killed")  # type: ignore[misc]
    job = status(cluster, job_id)
    assert job["status"] == "cancelled"
    hist = json.loads(cluster.cli("--json", "history", str(job_id)).stdout)
    assert hist[-1]["outcome"] == "cancelled"
    # and the worker's late report of the killed command keeps when it ran
    with cluster.client() as c:
        last = wait_until(
            lambda: (a := c.history(job_id)[-1]).ran_until is not None and a,
            10,
            what="the cancelled attempt's report",
        )
    assert last.ran_from is not None and last.ran_from <= last.ran_until


def test_cancel_a_queued_job_means_it_never_starts(cluster: Cluster) -> None:
    job_id = submit(cluster, "--queue", "nobody-serves-this", "--", "true")
    assert cluster.cli("cancel", str(job_id)).returncode == 0
    assert status(cluster, job_id)["status"] == "cancelled"
    w = cluster.add_worker("late", "--queues", "nobody-serves-this")
    probe = submit(cluster, "--queue", "nobody-serves-this", "--", "true")
    wait_status(cluster, probe, "succeeded")
    job = status(cluster, job_id)
    assert job["status"] == "cancelled" and job["attempts"] == 0
    w.stop()


def test_cancel_a_scheduled_job(cluster: Cluster) -> None:
    # A delay no loaded machine can outlast before the cancelling CLI process is up (~0.4 s):
    # the job is still scheduled, not running, when the cancel arrives.
    job_id = submit(cluster, "--delay", "600", "--", "true")
    assert status(cluster, job_id)["status"] == "scheduled"
    assert cluster.cli("cancel", str(job_id)).returncode == 0
    with cluster.client() as c:
        job = c.wait(job_id, 5)
    assert job.status.value == "cancelled" and job.attempts == 0


def test_cancel_of_a_finished_job_is_refused(cluster: Cluster) -> None:
    r = cluster.cli("submit", "--wait", "--", "true")
    job_id = int(json.loads(cluster.cli("--json", "list", "--limit", "1").stdout)[0]["id"])
    assert r.returncode == 0
    r = cluster.cli("cancel", str(job_id))
    assert r.returncode == 1 and "already succeeded" in r.stderr


def test_wait_on_a_job_that_gets_cancelled_exits_1(cluster: Cluster) -> None:
    # Given a client blocked in `submit --wait` on a long job
    waiter = subprocess.Popen(
        [
            str(BIN / "dts-client"),
            "--server",
            cluster.server.address,
            "--json",
            "submit",
            "--wait",
            "--name",
            "to-be-cancelled",
            "--",
            "sleep",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    with cluster.client() as c:
        job = wait_until(
            lambda: next(
                (
                    j
                    for j in c.list_jobs(limit=20)
                    if j.spec.name == "to-be-cancelled" and j.status.value == "running"
                ),
                None,
            ),
            20,
        )
        # When the job is cancelled
        c.cancel(job.id)
    # Then the waiting client exits 1 and reports the cancelled job
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 1, err
    assert json.loads(out)["status"] == "cancelled"


def test_retry_requeues_a_failed_job(cluster: Cluster) -> None:
    r = cluster.cli("--json", "submit", "--wait", "--", "false")
    job = json.loads(r.stdout)
    assert job["status"] == "failed"
    r = cluster.cli("retry", str(job["id"]))
    assert r.returncode == 0
    with cluster.client() as c:
        again = c.wait(job["id"], 20)
    assert again.status.value == "failed" and again.attempts == 2
    r = cluster.cli("retry", str(job["id"]))
    assert r.returncode == 0
    ok = cluster.cli("submit", "--wait", "--", "true")
    assert ok.returncode == 0


def test_retry_of_a_succeeded_job_is_refused(cluster: Cluster) -> None:
    job = json.loads(cluster.cli("--json", "submit", "--wait", "--", "true").stdout)
    r = cluster.cli("retry", str(job["id"]))
    assert r.returncode == 1 and "only failed or cancelled" in r.stderr


# ---- reading ----------------------------------------------------------------------------------


def test_list_is_newest_first_and_filters(cluster: Cluster) -> None:
    ids = [submit(cluster, "--queue", "listing", "--", "true") for _ in range(3)]
    cluster.add_worker("lister", "--queues", "listing")
    with cluster.client() as c:
        for i in ids:
            c.wait(i, 20)
    r = cluster.cli("--json", "list", "--queue", "listing", "--limit", "2")
    listed = json.loads(r.stdout)
    assert [j["id"] for j in listed] == ids[::-1][:2]
    r = cluster.cli("--json", "list", "--status", "succeeded", "--queue", "listing")
    assert {j["id"] for j in json.loads(r.stdout)} == set(ids)
    text = cluster.cli("list", "--queue", "listing")
    assert text.stdout.splitlines()[0].split()[:2] == ["ID", "STATUS"]
    assert str(ids[-1]) in text.stdout.splitlines()[1]
    # --before pages on by id; --name keeps the jobs of that name
    r = cluster.cli("--json", "list", "--queue", "listing", "--before", str(ids[-1]))
    assert [j["id"] for j in json.loads(r.stdout)] == ids[::-1][1:]
    named = submit(
        cluster, "--queue", "listing", "--name", "list-by-name", "--delay", "3600", "--", "true"
    )
    r = cluster.cli("--json", "list", "--name", "list-by-name")
    assert [j["id"] for j in json.loads(r.stdout)] == [named]
    bad = cluster.cli("list", "--before", "0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr


def test_history_and_logs_of_each_attempt(cluster: Cluster) -> None:
    r = cluster.cli(
        "--json",
        "submit",
        "--wait",
        "--retries",
        "1",
        "--backoff",
        "0",
        "--shell",
        "--",
        "echo run $DTS_ATTEMPT; echo oops $DTS_ATTEMPT >&2; exit 1",
    )
    job = json.loads(r.stdout)
    text = cluster.cli("history", str(job["id"])).stdout.splitlines()
    assert text[0].split()[:4] == ["ATTEMPT", "OUTCOME", "WORKER", "STARTED"]
    assert len(text) == 3
    first = cluster.cli("logs", str(job["id"]), "--attempt", "1")
    assert (first.stdout, first.stderr) == ("run 1\n", "oops 1\n")
    latest = cluster.cli("logs", str(job["id"]))
    assert (latest.stdout, latest.stderr) == ("run 2\n", "oops 2\n")
    missing = cluster.cli("logs", str(job["id"]), "--attempt", "7")
    assert missing.returncode == 1 and "no attempt 7" in missing.stderr


def test_history_shows_when_and_how_long_each_command_ran(cluster: Cluster) -> None:
    # Given a job that sleeps 0.3 s and succeeds, one that fails with exit 3, and one whose
    # command cannot be spawned at all
    ok = submit(cluster, "--shell", "--", "sleep 0.3")
    bad = submit(cluster, "--retries", "0", "--shell", "--", "sleep 0.1; exit 3")
    never = submit(cluster, "--retries", "0", "--", "/nonexistent/dts-no-such-program")
    wait_status(cluster, ok, "succeeded")
    wait_status(cluster, bad, "failed")
    wait_status(cluster, never, "failed")
    with cluster.client() as c:
        ((done,), (failed,), (unrun,)) = (c.history(ok), c.history(bad), c.history(never))
    # Then the attempts that ran carry the worker's own start and end of the command, inside
    # the server's times of the attempt (the worker and server share this host's clock)
    for a, least in ((done, 0.3), (failed, 0.1)):
        assert a.ran_from is not None and a.ran_until is not None and a.finished_at is not None
        ran = a.ran_until - a.ran_from
        assert least <= ran < a.finished_at - a.started_at + 0.05, (a, ran)
        assert a.ran_from >= a.started_at - 1
    assert failed.outcome is Outcome.FAILED and failed.exit_code == 3
    # And the one never spawned has none
    assert (unrun.ran_from, unrun.ran_until) == (None, None) and unrun.outcome is Outcome.FAILED
    # And --json gives them (null when unknown); the table shows the run time, "-" if unknown
    (shown,) = json.loads(cluster.cli("--json", "history", str(ok)).stdout)
    assert _ts(shown["ran_until"]) - _ts(shown["ran_from"]) >= 0.299  # to the millisecond
    (none,) = json.loads(cluster.cli("--json", "history", str(never)).stdout)
    assert none["ran_from"] is None and none["ran_until"] is None
    for job_id, cell in ((ok, f"{done.ran_until - done.ran_from:.3f}s"), (never, "-")):
        head, row = cluster.cli("history", str(job_id)).stdout.splitlines()
        assert head.split()[7:9] == ["RAN", "EXIT"]
        at = head.index("RAN")
        assert row[at:].split()[0] == cell, (head, row)


def test_workers_lists_both_workers(cluster: Cluster) -> None:
    ws = json.loads(cluster.cli("--json", "workers").stdout)
    by_name = {w["name"]: w for w in ws}
    for name in ("w1", "w2"):
        w = by_name[name]
        assert w["state"] in ("idle", "busy") and w["concurrency"] == 2
        assert set(w) >= {"name", "host", "state", "running", "last_heartbeat"}
        assert w["server"] == cluster.server.address  # the server it talks to
    text = cluster.cli("workers").stdout
    assert text.splitlines()[0].split()[:3] == ["NAME", "HOST", "STATE"]
    assert text.splitlines()[0].split()[-1] == "SERVER"


def test_stats_counts_by_status_and_queue(cluster: Cluster) -> None:
    cluster.cli("submit", "--wait", "--queue", "default", "--", "true")
    obj = json.loads(cluster.cli("--json", "stats").stdout)
    assert set(obj["by_status"]) == {
        "waiting",
        "scheduled",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    }
    assert obj["by_queue"]["default"]["succeeded"] >= 1
    assert obj["total"] == sum(obj["by_status"].values())
    live = [w for w in cluster.client().workers() if w.state.value in ("idle", "busy")]
    assert obj["workers_by_server"] == {cluster.server.address: len(live)}
    text = cluster.cli("stats").stdout
    assert f"{cluster.server.address}  {len(live)}" in text


def test_ping_exits_0_while_serving(cluster: Cluster) -> None:
    r = cluster.cli("ping")
    assert (r.returncode, r.stdout.strip()) == (0, "SERVING")


def test_output_is_capped_with_a_marker(cluster: Cluster) -> None:
    cluster.add_worker("capped", "--queues", "capped", "--max-output", "1000")
    r = cluster.cli(
        "--json",
        "submit",
        "--wait",
        "--queue",
        "capped",
        "--shell",
        "--",
        "head -c 200000 /dev/zero | tr '\\0' x; echo END",
    )
    job = json.loads(r.stdout)
    assert job["status"] == "succeeded"
    out = job["stdout"]
    assert out.startswith("x" * 400) and out.endswith("END\n")
    assert "[dts: output truncated, 199004 bytes dropped]" in out
    assert len(out) < 1100


# ---- errors -----------------------------------------------------------------------------------


def test_unknown_job_id_is_one_line_and_nonzero(cluster: Cluster) -> None:
    for cmd in ("status", "history", "logs", "cancel", "retry"):
        r = cluster.cli(cmd, "987654321")
        assert r.returncode == 1, cmd
        assert r.stderr == "dts-client: error: no job with id 987654321\n", cmd


@pytest.mark.parametrize(
    "args, message",
    [
        (("submit", "--priority", "12", "--", "true"), "--priority must be between 0 and 9"),
        (("submit", "--timeout", "-1", "--", "true"), "--timeout must not be negative"),
        (("submit", "--env", "NOEQUALS", "--", "true"), "--env takes KEY=VALUE"),
        (("submit",), "no command given"),
        (("submit", "--", ""), "command must not be empty"),
        (("submit", "--retries", "-2", "--", "true"), "--retries must be between"),
        (("status", "abc"), "job id must be a positive integer"),
        (("list", "--status", "weird"), "invalid choice"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_invalid_input_is_a_usage_error(
    cluster: Cluster, args: tuple[str, ...], message: str
) -> None:
    r = cluster.cli(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_unreachable_server_answers_quickly_naming_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    r = run_cli(address, "list")
    assert time.monotonic() - start < 10
    assert r.returncode == 3
    assert address in r.stderr and len(r.stderr.strip().splitlines()) == 1
    ping = run_cli(address, "ping")
    assert ping.returncode != 0


def test_server_address_from_environment_and_config_file(cluster: Cluster, tmp_path: Path) -> None:
    r = subprocess.run(
        [str(BIN / "dts-client"), "ping"],
        capture_output=True,
        text=True,
        env=clean_env(DTS_SERVER=cluster.server.address),
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    conf = tmp_path / "client.conf"
    conf.write_text(f"server = {cluster.server.address}\n")
    r = subprocess.run(
        [str(BIN / "dts-client"), "-c", str(conf), "ping"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    # a flag beats the environment
    r = subprocess.run(
        [str(BIN / "dts-client"), "--server", cluster.server.address, "ping"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(DTS_SERVER="127.0.0.1:1"),
    )
    assert r.returncode == 0, r.stderr


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_submit_options_default_from_environment_and_config(
    cluster: Cluster, tmp_path: Path
) -> None:
    def queue_of(*args: str, env: dict[str, str]) -> str:
        r = subprocess.run(
            [str(BIN / "dts-client"), "--server", cluster.server.address, "--json", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        job = json.loads(r.stdout)
        cluster.cli("cancel", str(job["id"]))
        return str(job["queue"]) + f"/{job['priority']}"

    conf = tmp_path / "client.conf"
    conf.write_text("queue = fileq\npriority = 3\n")
    env = clean_env(DTS_QUEUE="envq")
    assert queue_of("submit", "--", "true", env=clean_env()) == "default/0"
    assert queue_of("-c", str(conf), "submit", "--", "true", env=clean_env()) == "fileq/3"
    assert queue_of("-c", str(conf), "submit", "--", "true", env=env) == "envq/3"
    assert queue_of("-c", str(conf), "submit", "--queue", "flagq", "--", "true", env=env) == (
        "flagq/3"
    )
