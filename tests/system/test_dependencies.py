"""Dependencies and workflows end to end, on each store: dts-client submit --after,
--after-finished and --workflow against a real dts-server and dts-workers; the order jobs ran
in read from a ledger each job writes its start and end to; cancel cascades; status and list
of waiting jobs; bad input; a dependency that ends while the server is down."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest

from tests.conftest import Cluster
from tests.harness import ServerProcess, wait_until

ROOT = Path(__file__).resolve().parents[2]

# A queue no worker of the module's cluster serves: its jobs stay queued.
IDLE = "deps-idle"


def recorder(ledger: Path, name: str, body: str = "true") -> str:
    """A shell command that appends 'start NAME T' and 'end NAME T' around `body` (its exit
    code is the command's)."""
    led = shlex.quote(str(ledger))
    return (
        f'echo "start {name} $(date +%s.%N)" >> {led}; {body}; rc=$?;'
        f' echo "end {name} $(date +%s.%N)" >> {led}; exit $rc'
    )


def ledger_of(ledger: Path) -> list[tuple[str, str, float]]:
    """(event, name, time) in the order written."""
    if not ledger.exists():
        return []
    return [
        (e, n, float(t)) for e, n, t in (line.split() for line in ledger.read_text().splitlines())
    ]


def times(ledger: Path) -> dict[str, float]:
    return {f"{e} {n}": t for e, n, t in ledger_of(ledger)}


def submit(cluster: Cluster, *args: str) -> int:
    r = cluster.cli("submit", *args)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def show(cluster: Cluster, job_id: int) -> dict[str, object]:
    r = cluster.cli("--json", "status", str(job_id))
    assert r.returncode == 0, r.stderr
    shown: dict[str, object] = json.loads(r.stdout)
    return shown


def final(cluster: Cluster, job_id: int) -> dict[str, object]:
    """The job once final (polled with a deadline)."""
    return wait_until(
        lambda: (
            (s := show(cluster, job_id))["status"] in ("succeeded", "failed", "cancelled") and s
        ),
        30,
        what=f"job {job_id} to end",
    )


def all_ids(cluster: Cluster) -> list[int]:
    r = cluster.cli("--json", "list", "--limit", "10000")
    assert r.returncode == 0, r.stderr
    return [j["id"] for j in json.loads(r.stdout)]


def test_an_after_chain_runs_in_order(cluster: Cluster, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    a = submit(cluster, "--shell", "--", recorder(ledger, "a", "sleep 0.3"))
    b = submit(cluster, "--after", str(a), "--shell", "--", recorder(ledger, "b"))
    c = submit(cluster, "--after", f"{a},{b}", "--shell", "--", recorder(ledger, "c"))
    assert [final(cluster, j)["status"] for j in (a, b, c)] == ["succeeded"] * 3
    t = times(ledger)
    assert t["end a"] <= t["start b"] and t["end b"] <= t["start c"], ledger_of(ledger)
    assert [(e, n) for e, n, _ in ledger_of(ledger)] == [
        ("start", "a"),
        ("end", "a"),
        ("start", "b"),
        ("end", "b"),
        ("start", "c"),
        ("end", "c"),
    ]


def test_after_finished_runs_after_a_failure(cluster: Cluster, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    a = submit(cluster, "--retries", "0", "--shell", "--", recorder(ledger, "a", "false"))
    b = submit(cluster, "--after-finished", str(a), "--shell", "--", recorder(ledger, "b"))
    c = submit(cluster, "--after", str(a), "--shell", "--", recorder(ledger, "c"))
    assert final(cluster, a)["status"] == "failed"
    assert final(cluster, b)["status"] == "succeeded"
    gone = final(cluster, c)
    assert (gone["status"], gone["error"]) == ("cancelled", f"dependency {a} failed")
    t = times(ledger)
    assert t["end a"] <= t["start b"] and "start c" not in t


def test_a_workflow_whose_middle_step_fails_then_is_retried(
    cluster: Cluster, tmp_path: Path
) -> None:
    ledger, marker = tmp_path / "ledger", tmp_path / "failed-once"
    flaky = f"if [ -f {marker} ]; then true; else touch {marker}; false; fi"
    workflow = tmp_path / "wf.toml"
    workflow.write_text(
        f"""
[[step]]
name = "first"
command = {json.dumps(recorder(ledger, "first"))}

[[step]]
name = "middle"
command = {json.dumps(recorder(ledger, "middle", flaky))}
after = ["first"]
retries = 0

[[step]]
name = "last"
command = {json.dumps(recorder(ledger, "last"))}
after = ["middle"]
"""
    )
    r = cluster.cli("submit", "--workflow", str(workflow))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    steps = dict(line.split() for line in r.stdout.splitlines())
    assert list(steps) == ["first", "middle", "last"]
    first, middle, last = (int(steps[n]) for n in ("first", "middle", "last"))
    # the middle step fails the first time; the last is cancelled for it
    assert final(cluster, first)["status"] == "succeeded"
    assert final(cluster, middle)["status"] == "failed"
    gone = final(cluster, last)
    assert (gone["status"], gone["error"]) == ("cancelled", f"dependency {middle} failed")
    # retried, the middle step succeeds; the last, retried then, runs after it
    assert cluster.cli("retry", str(middle)).stdout == f"{middle} queued\n"
    assert final(cluster, middle)["status"] == "succeeded"
    assert show(cluster, last)["status"] == "cancelled"
    assert cluster.cli("retry", str(last)).stdout == f"{last} queued\n"
    assert final(cluster, last)["status"] == "succeeded"
    events = [(e, n) for e, n, _ in ledger_of(ledger)]
    assert events == [
        ("start", "first"),
        ("end", "first"),
        ("start", "middle"),
        ("end", "middle"),
        ("start", "middle"),
        ("end", "middle"),
        ("start", "last"),
        ("end", "last"),
    ]


def test_a_retry_before_its_dependency_waits_for_it(cluster: Cluster, tmp_path: Path) -> None:
    marker = tmp_path / "failed-once"
    flaky = f"if [ -f {marker} ]; then true; else touch {marker}; false; fi"
    a = submit(cluster, "--retries", "0", "--shell", "--", flaky)
    b = submit(cluster, "--after", str(a), "--", "true")
    assert final(cluster, b)["status"] == "cancelled"
    # retried while its dependency is still failed, it waits
    assert cluster.cli("retry", str(b)).stdout == f"{b} waiting\n"
    assert show(cluster, b)["status"] == "waiting"
    cluster.cli("retry", str(a))
    assert final(cluster, b)["status"] == "succeeded"


def test_the_sample_workflow_runs(cluster: Cluster) -> None:
    r = cluster.cli("--json", "submit", "--workflow", str(ROOT / "etc/dts/workflow.toml"))
    assert r.returncode == 0, r.stderr
    pairs = json.loads(r.stdout)
    assert [p["step"] for p in pairs] == ["extract", "transform", "load", "report"]
    ended = [final(cluster, p["id"]) for p in pairs]
    assert [e["status"] for e in ended] == ["succeeded"] * 4
    assert [e["name"] for e in ended] == ["extract", "transform", "load", "report"]
    started = [
        time.mktime(time.strptime(str(e["started_at"])[:19], "%Y-%m-%dT%H:%M:%S")) for e in ended
    ]
    assert started == sorted(started)


def test_cancel_cascades_and_status_shows_the_edges(cluster: Cluster) -> None:
    a = submit(cluster, "--queue", IDLE, "--", "true")
    b = submit(cluster, "--after", str(a), "--", "true")
    c = submit(cluster, "--after-finished", str(b), "--queue", IDLE, "--", "true")
    d = submit(cluster, "--after", str(b), "--", "true")
    # status shows what a job waits for and what waits for it
    text = cluster.cli("status", str(b)).stdout
    assert f"\nwaits_for:   {a} (queued)\n" in text, text
    assert f"\nwaited_by:   {c} (waiting, after-finished), {d} (waiting)\n" in text, text
    shown = show(cluster, b)
    assert shown["status"] == "waiting"
    assert shown["waits_for"] == [{"id": a, "status": "queued", "kind": "succeeded"}]
    assert [w["id"] for w in shown["waited_by"]] == [c, d]  # type: ignore[union-attr]
    # list --status waiting and stats count them
    waiting = json.loads(cluster.cli("--json", "list", "--status", "waiting").stdout)
    assert {b, c, d} <= {j["id"] for j in waiting}
    stats = json.loads(cluster.cli("--json", "stats").stdout)
    assert stats["by_status"]["waiting"] >= 3
    assert "waiting:" in cluster.cli("stats").stdout
    # cancelling a takes b and d with it; c asked only for b's end and is queued (IDLE)
    assert cluster.cli("cancel", str(a)).returncode == 0
    assert (show(cluster, b)["status"], show(cluster, b)["error"]) == (
        "cancelled",
        f"dependency {a} cancelled",
    )
    assert (show(cluster, d)["status"], show(cluster, d)["error"]) == (
        "cancelled",
        f"dependency {b} cancelled",
    )
    assert show(cluster, c)["status"] == "queued"
    cluster.cli("cancel", str(c))


BAD_WORKFLOWS = {
    "unknown step": ("[[step]]\nname='a'\ncommand='true'\nafter=['nope']\n", "unknown step 'nope'"),
    "duplicate": (
        "[[step]]\nname='a'\ncommand='true'\n[[step]]\nname='a'\ncommand='true'\n",
        "duplicate step name 'a'",
    ),
    "cycle": (
        "[[step]]\nname='a'\ncommand='true'\nafter=['c']\n"
        "[[step]]\nname='b'\ncommand='true'\nafter=['a']\n"
        "[[step]]\nname='c'\ncommand='true'\nafter=['b']\n",
        "dependency cycle: step 'a' -> step 'c' -> step 'b' -> step 'a'",
    ),
    "itself": ("[[step]]\nname='a'\ncommand='true'\nafter=['a']\n", "step 'a' depends on itself"),
    "10,000 steps": (
        "".join(f"[[step]]\nname='s{i}'\ncommand='true'\n" for i in range(10_000)),
        "a workflow has at most 1000 steps, this one has 10000",
    ),
}


@pytest.mark.parametrize("case", list(BAD_WORKFLOWS))
def test_a_bad_workflow_is_one_line_exit_2_and_nothing_stored(
    cluster: Cluster, tmp_path: Path, case: str
) -> None:
    text, message = BAD_WORKFLOWS[case]
    path = tmp_path / "wf.toml"
    path.write_text(text)
    before = all_ids(cluster)
    r = cluster.cli("submit", "--workflow", str(path))
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert r.stderr.startswith(f"dts-client submit: error: {path}: ")
    assert all_ids(cluster) == before


def test_bad_dependencies_are_one_line_exit_2_and_nothing_stored(cluster: Cluster) -> None:
    before = all_ids(cluster)
    missing = (max(before) if before else 0) + 1000
    cases = [
        (["--after", str(missing)], f"unknown dependency: no job with id {missing}"),
        (["--after-finished", f"1,{missing}"], f"no job with id {missing}"),
        (["--after", "x"], "not a job id: 'x'"),
        (["--after", "0"], "job id must be a positive integer"),
        (["--after", ",".join(map(str, range(1, 1002)))], "depends on at most 1000 jobs"),
    ]
    for args, message in cases:
        r = cluster.cli("submit", *args, "--", "true")
        assert r.returncode == 2 and r.stdout == "", (args, r)
        assert r.stderr.count("\n") == 1 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert all_ids(cluster) == before


def test_a_dependency_ending_while_the_server_is_down(
    fresh_cluster: Cluster, tmp_path: Path
) -> None:
    """The worker's result comes after the server is back; the dependent runs after that,
    never before."""
    cluster = fresh_cluster
    cluster.add_worker("w1")
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    hold = f"while [ ! -f {gate} ]; do sleep 0.05; done"
    a = submit(cluster, "--shell", "--", recorder(ledger, "a", hold))
    b = submit(cluster, "--after", str(a), "--shell", "--", recorder(ledger, "b"))
    wait_until(lambda: "start a" in times(ledger), 20, what="a to start")
    # When the server stops, and a ends while it is down
    cluster.server.stop()
    gate.touch()
    wait_until(lambda: "end a" in times(ledger), 20, what="a to end")
    assert "start b" not in times(ledger)
    # Then, the server back, a's result is taken and b runs after it
    server = ServerProcess(
        cluster.dir,
        cluster.redis.url,
        "--worker-timeout",
        "2",
        port=cluster.server.port,
        db=cluster.server.db,
    )
    server.start()
    cluster.server = server
    assert final(cluster, a)["status"] == "succeeded"
    assert final(cluster, b)["status"] == "succeeded"
    t = times(ledger)
    assert t["end a"] <= t["start b"]
    assert [n for e, n, _ in ledger_of(ledger) if e == "start"] == ["a", "b"]


def test_a_dependency_final_at_submit_is_judged_at_once(cluster: Cluster) -> None:
    ok = submit(cluster, "--", "true")
    bad = submit(cluster, "--retries", "0", "--", "false")
    assert final(cluster, ok)["status"] == "succeeded"
    assert final(cluster, bad)["status"] == "failed"
    # after a success: runs; after a failure: stored, and cancelled at once (the answer says so)
    r = cluster.cli("--json", "submit", "--after", str(ok), "--", "true")
    assert json.loads(r.stdout)["status"] in ("queued", "running", "succeeded"), r.stdout
    r = cluster.cli("--json", "submit", "--after", str(bad), "--", "true")
    gone = json.loads(r.stdout)
    assert (gone["status"], gone["error"]) == ("cancelled", f"dependency {bad} failed")
    assert show(cluster, gone["id"])["status"] == "cancelled"
