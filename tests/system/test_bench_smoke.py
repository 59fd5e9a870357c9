"""`make bench`'s own entry point, run with its smallest sizes (--smoke): every figure of the
report is there and sane (rates positive and below what a 2-core machine can do, ratios
between 0 and 1, latencies of milliseconds, memory of megabytes).

The figures' values belong to `make bench`; this catches a measurement that is missing,
broken (zero, NaN, a unit off by a thousand) or inconsistent with the others.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import clean_env

pytestmark = pytest.mark.single_store  # names its store itself: runs once

REPO = Path(__file__).resolve().parents[2]
# the --smoke sizes, stated here: the report must say it ran them
N, QUEUED = 50, 200
WAITERS, HANGING = 50, 10
ROWS = 15  # measures in the Markdown table


def within(value: object, low: float, high: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and low < value < high


@pytest.mark.timeout(120)
def test_make_bench_entry_point_reports_every_figure_sanely(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tests.bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "dts.json").read_text())
    assert set(report) == {
        "date", "machine", "n", "reps", "queued", "spawn_limit_per_s", "throughput_c2",
        "throughput_c4", "spawn_fraction_c2", "submit", "latency", "workers", "backlog",
        "history", "memory", "storm",
    }  # fmt: skip
    assert (report["n"], report["reps"], report["queued"]) == (N, 1, QUEUED)
    assert report["date"] and "CPUs" in report["machine"]

    # rates: jobs (processes) per second; none beyond twice what this machine can spawn
    spawn = report["spawn_limit_per_s"]
    assert within(spawn, 10, 100_000), spawn
    rates = {
        "throughput_c2": report["throughput_c2"],
        "throughput_c4": report["throughput_c4"],
        **{f"{k} workers": v for k, v in report["workers"].items()},
        **{f"backlog {k}": v for k, v in report["backlog"].items()},
    }
    assert list(report["workers"]) == ["1", "2", "4"]
    assert list(report["backlog"]) == ["0", str(QUEUED // 10), str(QUEUED)]
    for name, rate in rates.items():
        assert within(rate, 1, 2 * spawn), (name, rate, spawn)
    assert report["spawn_fraction_c2"] == pytest.approx(report["throughput_c2"] / spawn)
    assert within(report["spawn_fraction_c2"], 0, 1), report["spawn_fraction_c2"]

    # submits per second: one batch call beats one call per job
    sub = report["submit"]
    assert set(sub) == {"batch_per_s", "from_file_per_s", "single_per_s", "pipelined_per_s"}
    for name, rate in sub.items():
        assert within(rate, 1, 1_000_000), (name, rate)
    assert sub["batch_per_s"] > sub["single_per_s"], sub

    # latencies in milliseconds (a submit, a claim and a process spawn take more than 0.1 ms),
    # a job starts before it has finished, p50 <= p99
    lat = report["latency"]
    assert set(lat) == {"start_p50_ms", "start_p99_ms", "finish_p50_ms", "finish_p99_ms"}
    for name, ms in lat.items():
        assert within(ms, 0.1, 10_000), (name, ms)
    assert lat["start_p50_ms"] <= lat["start_p99_ms"] and lat["start_p50_ms"] < lat["finish_p50_ms"]
    assert lat["finish_p50_ms"] <= lat["finish_p99_ms"], lat
    hist = report["history"]
    assert set(hist) == {"status_ms", "list_ms", "list_queue_ms"}
    for name, ms in hist.items():
        assert within(ms, 0.01, 5_000), (name, ms)  # a gRPC round trip at least

    # memory: resident sizes of Python processes, and SQLite bytes per stored job
    mem = report["memory"]
    rss = ("server_idle_mb", "worker_idle_mb", "server_load_mb", "worker_load_mb")
    assert set(mem) == {*rss, "server_queued_mb", "sqlite_bytes_per_job"}
    for name in (*rss, "server_queued_mb"):
        assert within(mem[name], 5, 2_000), (name, mem[name])
    assert within(mem["sqlite_bytes_per_job"], 50, 100_000), mem

    # calls through a storm of waiting and hanging calls: every one timed, every waiter
    # still waiting when they were
    st = report["storm"]
    timed = [f"{w} {c} {p} ms" for w in ("idle", "storm") for c in ("ping", "status", "heartbeat")
             for p in ("p50", "p99")]  # fmt: skip
    assert set(st) == {*timed, "waiters", "hanging", "storm still waiting"}, st
    assert (st["waiters"], st["hanging"], st["storm still waiting"]) == (WAITERS, HANGING, WAITERS)
    for name in timed:
        assert within(st[name], 0.05, 10_000), (name, st[name])
    for w in ("idle", "storm"):
        for c in ("ping", "status", "heartbeat"):
            assert st[f"{w} {c} p50 ms"] <= st[f"{w} {c} p99 ms"], (w, c, st)

    # and the table: on stdout and in dts.md, one row per measure, every cell a figure
    table = (tmp_path / "dts.md").read_text()
    assert table in r.stdout
    rows = [line.split(" | ") for line in table.splitlines()[3:] if line.startswith("| ")]
    assert len(rows) == ROWS, table
    for measure, result in rows:
        assert any(ch.isdigit() for ch in result), (measure, result)
        assert "nan" not in result and "inf" not in result, (measure, result)
