"""What a job gets from its worker, end to end through the real CLI, server and worker: a clean
environment, and resource limits the operator sets and a job can lower but not raise."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from dts.worker.sandbox import find_prlimit
from tests.conftest import Cluster, make_cluster
from tests.harness import clean_env

pytestmark = pytest.mark.skipif(find_prlimit() is None, reason="util-linux prlimit is missing")


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory, dts_store: object) -> Iterator[Cluster]:
    """One worker with secrets in its environment, a --pass-env glob and operator limits."""
    c = make_cluster(tmp_path_factory.mktemp("sandbox"), 0)
    c.add_worker(
        "w1",
        "--pass-env",
        "TEAM_*",
        "--max-files",
        "128",
        "--max-output",
        "2K",
        "--max-timeout",
        "20",
        "--concurrency",
        "2",
        env=clean_env(
            WORKER_SECRET="hunter2", TEAM_REGION="eu", TEAM_BUCKET="logs", LANG="C.UTF-8"
        ),
    )
    yield c
    c.stop()


def run_job(c: Cluster, *args: str) -> tuple[int, dict[str, object], str]:
    """Submit with --wait; the exit code, the job as `status --json` shows it, and its stdout."""
    r = c.cli("--json", "submit", "--wait", *args)
    assert r.returncode in (0, 1) or r.returncode > 1, r.stderr
    job = json.loads(r.stdout)
    return r.returncode, job, str(job["stdout"])


def test_a_job_sees_only_the_allow_list_what_pass_env_names_and_its_own(
    sandboxed: Cluster,
) -> None:
    # Given a worker with WORKER_SECRET and TEAM_* in its environment, passing TEAM_*
    # When a job prints its environment
    code, _, out = run_job(sandboxed, "--env", "MINE=1", "--", "env")
    assert code == 0
    names = {line.split("=", 1)[0] for line in out.splitlines()}
    # Then the secret and the worker's own settings are not there; the rest is
    assert "WORKER_SECRET" not in names and not any(n.startswith("DTS_R") for n in names)
    assert {
        "PATH",
        "LANG",
        "HOME",
        "USER",
        "LOGNAME",
        "TEAM_REGION",
        "TEAM_BUCKET",
        "MINE",
    } <= names
    assert {"DTS_JOB_ID", "DTS_ATTEMPT"} <= names
    assert "TEAM_REGION=eu" in out.splitlines()


def test_limits_a_job_asks_for_are_shown_and_enforced(sandboxed: Cluster) -> None:
    code, job, out = run_job(
        sandboxed,
        "--max-files",
        "64",
        "--max-cpu",
        "30",
        "--max-memory",
        "1G",
        "--",
        "cat",
        "/proc/self/limits",
    )
    assert code == 0
    assert job["limits"] == {
        "cpu_seconds": 30,
        "memory_bytes": 1 << 30,
        "open_files": 64,
        "processes": None,
        "output_bytes": None,
    }
    assert re.search(r"Max open files\s+64\s", out)
    assert re.search(r"Max cpu time\s+30\s", out)
    assert re.search(rf"Max address space\s+{1 << 30}\s", out)
    status = sandboxed.cli("status", str(job["id"]))
    assert "limits:      cpu 30s, memory 1G, files 64" in status.stdout


def test_a_job_cannot_raise_the_workers_limits(sandboxed: Cluster) -> None:
    # Given a worker that allows 128 open files and keeps 2K of output
    # When a job asks for more of both
    code, _, out = run_job(
        sandboxed,
        "--max-files",
        "100000",
        "--max-output",
        "1M",
        "--shell",
        "--",
        "grep 'Max open files' /proc/self/limits; head -c 5000 /dev/zero | tr '\\\\0' x",
    )
    # Then it gets the worker's
    assert code == 0
    assert re.search(r"Max open files\s+128\s", out)
    assert "bytes dropped" in out and len(out) < 2300


def test_a_job_over_its_cpu_limit_fails_saying_why(sandboxed: Cluster, tmp_path: Path) -> None:
    code, job, _ = run_job(sandboxed, "--max-cpu", "1", "--shell", "--", "while :; do :; done")
    assert job["status"] == "failed"
    assert str(job["error"]).startswith("CPU time limit of 1s reached")
    assert code in (128 + 24, 128 + 9)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-memory", "12X"), ("--max-files", "-3"), ("--max-cpu", "1.5"), ("--max-output", "")],
)
def test_a_bad_limit_is_one_line_and_exit_2(sandboxed: Cluster, flag: str, value: str) -> None:
    r = sandboxed.cli("submit", flag, value, "--", "true")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and flag in r.stderr and "Traceback" not in r.stderr


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_a_job_printing_a_gigabyte_grows_neither_worker_nor_server(sandboxed: Cluster) -> None:
    # Given the worker (2K of output kept) and server at their peak memory so far
    worker, server = sandboxed.workers[0].pid, sandboxed.server.pid
    before = (_peak_rss_mb(worker), _peak_rss_mb(server))
    # When a job writes 1 GiB to stdout and 64 MiB to stderr
    code, job, out = run_job(
        sandboxed, "--timeout", "120", "--shell", "--",
        "head -c 1073741824 /dev/zero; head -c 67108864 /dev/zero >&2",
    )  # fmt: skip
    # Then it succeeds, its head and tail are kept with the count of what was dropped
    assert code == 0 and job["status"] == "succeeded"
    assert f"[dts: output truncated, {(1 << 30) - 2048} bytes dropped]" in out
    # And neither process's peak memory grew by more than a few MB
    after = (_peak_rss_mb(worker), _peak_rss_mb(server))
    assert after[0] - before[0] < 20, (before, after)
    assert after[1] - before[1] < 20, (before, after)
