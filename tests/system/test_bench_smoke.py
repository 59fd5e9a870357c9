"""`make bench`'s own entry point, run with its smallest sizes (--smoke): every figure of the
report is there and sane (rates positive and below what a 2-core machine can do, ratios
between 0 and 1, latencies of milliseconds, memory of megabytes), the PostgreSQL store's
as well as SQLite's (without a PostgreSQL the bench must say so and report SQLite's; under
CI=true it must fail).

The figures' values belong to `make bench`; this catches a measurement that is missing,
broken (zero, NaN, a unit off by a thousand) or inconsistent with the others.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.bench import run as bench
from tests.bench.report import STEP_NAMES, render
from tests.harness import clean_env

pytestmark = pytest.mark.single_store  # names its store itself: runs once

REPO = Path(__file__).resolve().parents[2]
# the --smoke sizes, stated here: the report must say it ran them
N, QUEUED = 50, 200
WAITERS, HANGING = 50, 10
LATENCY_JOBS = 5
ROWS = 20  # measures in the Markdown table
SERVERS_ROWS = 2  # and with a PostgreSQL, two servers on it: throughput, failover
# those with a PostgreSQL figure beside SQLite's, by how they begin
PG_MEASURES = (
    "throughput, 1 worker, concurrency 2",
    "CPU per job: server / worker / job processes / redis",
    "throughput with 0 / 10% / 100% backlog",
    "submit: batch call / --from-file",
    "single submits, one client",
    "latency submit→start",
    "latency submit→the job's command ended",
    "latency submit→finished",
    "latency step by step",
    "status / list / list --queue",
)


def within(value: object, low: float, high: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and low < value < high


def check_submit(sub: dict[str, float]) -> None:
    """Submits per second: one batch call beats one call per job."""
    assert set(sub) == {"batch_per_s", "from_file_per_s", "single_per_s", "pipelined_per_s"}
    for name, rate in sub.items():
        assert within(rate, 1, 1_000_000), (name, rate)
    assert sub["batch_per_s"] > sub["single_per_s"], sub


def check_latency(lat: dict[str, float], samples: dict[str, list[float]]) -> None:
    """Latencies in milliseconds (a submit, a claim and a process spawn take more than 0.1 ms),
    a job starts before it has ended, and it has ended before Client.wait returns (in every
    sample of the run kept, which is one of the runs the figures are of), p50 <= p99."""
    kinds = ("start", "ended", "finish")
    steps = {f"step {name} p50 ms" for name in STEP_NAMES}
    assert set(lat) == {f"{k}_{p}_ms" for k in kinds for p in ("p50", "p99")} | steps, lat
    for name, ms in lat.items():
        assert within(ms, 0.001 if name in steps else 0.1, 10_000), (name, ms)
    # the steps of the way take about as long as the way (medians of each: not exactly)
    assert 0.3 * lat["finish_p50_ms"] < sum(lat[s] for s in steps) < 3 * lat["finish_p50_ms"]
    for k in kinds:
        assert lat[f"{k}_p50_ms"] <= lat[f"{k}_p99_ms"], (k, lat)
    assert lat["start_p50_ms"] <= lat["ended_p50_ms"] <= lat["finish_p50_ms"], lat
    assert set(samples) == set(kinds), samples
    assert all(len(samples[k]) == LATENCY_JOBS for k in kinds), samples
    assert all(within(ms, 0.1, 10_000) for k in kinds for ms in samples[k]), samples
    assert all(e <= f for e, f in zip(samples["ended"], samples["finish"], strict=True)), samples
    for k in kinds:  # one run (reps 1): the figures are the samples' own percentiles
        for p in (50, 99):
            assert bench.pct(samples[k], p) == pytest.approx(lat[f"{k}_p{p}_ms"], abs=0.006)


def check_floor(fl: dict[str, float]) -> None:
    """Each step alone takes some microseconds and under a second; the sum on a job's way is
    more than its commits and its spawn."""
    steps = ("grpc_ms", "redis_ms", "commit_ms", "hop_ms", "spawn_ms")
    assert set(fl) == {*steps, "path_ms"}, fl
    for name in steps:
        assert within(fl[name], 0.001, 1000), (name, fl)
    assert fl["path_ms"] > 3 * fl["commit_ms"] + fl["spawn_ms"], fl


def check_relaxed(rel: dict[str, float]) -> None:
    assert set(rel) >= {"finish_p50_ms", "finish_p99_ms", "single_per_s"}, rel
    assert within(rel["finish_p50_ms"], 0.1, 10_000) and within(rel["single_per_s"], 1, 1e6), rel


def check_cpu(cpu: dict[str, float]) -> None:
    """Microseconds of CPU per job (/proc ticks of 10 ms over N=50 jobs: 0 or 200 us and up
    for a process that did little; the job processes, one spawn of `true` each, cannot be 0)."""
    assert set(cpu) == {"server", "worker", "jobs", "redis"}, cpu
    for name, us in cpu.items():
        assert isinstance(us, float) and 0 <= us < 1e6, (name, us)
    assert cpu["jobs"] > 0 and cpu["worker"] + cpu["server"] > 0, cpu


def check_history(hist: dict[str, float]) -> None:
    assert set(hist) == {"status_ms", "list_ms", "list_queue_ms"}
    for name, ms in hist.items():
        assert within(ms, 0.01, 5_000), (name, ms)  # a gRPC round trip at least


@pytest.mark.timeout(180)
def test_make_bench_entry_point_reports_every_figure_sanely(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tests.bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "dts.json").read_text())
    with_pg = "postgres" in report
    if not with_pg:  # the bench says why; CI, which must have one, failed above
        assert "no PostgreSQL" in r.stderr, r.stderr[-3000:]
    assert set(report) == {
        "date", "machine", "n", "reps", "queued", "spawn_limit_per_s", "throughput_c2",
        "throughput_c4", "spawn_fraction_c2", "cpu_us_per_job", "submit", "latency",
        "latency_samples", "floor", "relaxed", "workers", "backlog", "history", "memory",
        "storm", *(["postgres", "servers"] if with_pg else []),
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

    check_cpu(report["cpu_us_per_job"])
    check_submit(report["submit"])
    check_latency(report["latency"], report["latency_samples"])
    check_history(report["history"])
    check_floor(report["floor"])
    check_relaxed(report["relaxed"])
    svg = ET.parse(tmp_path / "latency.svg").getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg", svg.tag
    curves = svg.findall("{http://www.w3.org/2000/svg}path")
    assert len(curves) == (6 if with_pg else 3), ET.tostring(svg)[:500]

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

    if with_pg:
        check_postgres(report["postgres"], report)
        check_servers(report["servers"], report)

    # and the table: on stdout and in dts.md, one row per measure, every cell a figure (or,
    # in the PostgreSQL column, "—" for a measure it has none of)
    table = (tmp_path / "dts.md").read_text()
    assert table in r.stdout
    lines = table.splitlines()
    body = lines[lines.index("|---|---|---|" if with_pg else "|---|---|") + 1 :]
    rows = [line.removeprefix("| ").removesuffix(" |").split(" | ") for line in body]
    expected = ROWS + (SERVERS_ROWS if with_pg else 0)
    assert len(rows) == expected and all(len(row) == (3 if with_pg else 2) for row in rows), table
    for measure, *cells in rows:
        if with_pg:
            assert (cells[1] != "—") == measure.startswith(PG_MEASURES), (measure, cells)
        for cell in (c for c in cells if c != "—"):
            assert any(ch.isdigit() for ch in cell), (measure, cell)
            assert "nan" not in cell and "inf" not in cell, (measure, cell)
    if with_pg:
        assert sum(row[2] != "—" for row in rows) == len(PG_MEASURES), table
        # the same report without its PostgreSQL section: the SQLite table as it always was
        alone = render({k: v for k, v in report.items() if k != "postgres"})
        assert alone.splitlines()[2:4] == ["| measure | result |", "|---|---|"], alone
        assert alone.splitlines()[4:] == [f"| {a} | {b} |" for a, b, _ in rows], alone


def test_without_postgresql_the_bench_says_so_and_in_ci_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def none() -> NoReturn:
        raise RuntimeError("no PostgreSQL answers and none could be started: test")

    monkeypatch.setattr(bench.postgres, "server", none)
    monkeypatch.delenv("CI", raising=False)
    with contextlib.ExitStack() as stack:
        assert bench._postgres_server(stack) is None
    assert "no PostgreSQL" in capsys.readouterr().err
    monkeypatch.setenv("CI", "true")
    with contextlib.ExitStack() as stack, pytest.raises(RuntimeError, match="CI must benchmark"):
        bench._postgres_server(stack)


def check_postgres(pg: dict[str, Any], report: dict[str, Any]) -> None:
    """The PostgreSQL store's figures: the same measures, as sane as SQLite's, and what they
    were measured on."""
    assert set(pg) == {
        "server", "throughput_c2", "spawn_fraction_c2", "throughput_ratio", "cpu_us_per_job",
        "submit", "latency", "latency_samples", "backlog", "history",
    }  # fmt: skip
    assert set(pg["server"]) == {"address", "server_version", "fsync", "synchronous_commit"}
    assert all(pg["server"].values()), pg["server"]
    spawn = report["spawn_limit_per_s"]
    rates = {"throughput_c2": pg["throughput_c2"], **pg["backlog"]}
    assert list(pg["backlog"]) == ["0", str(QUEUED // 10), str(QUEUED)]
    for name, rate in rates.items():
        assert within(rate, 1, 2 * spawn), (name, rate, spawn)
    assert pg["spawn_fraction_c2"] == pytest.approx(pg["throughput_c2"] / spawn)
    assert within(pg["spawn_fraction_c2"], 0, 1), pg["spawn_fraction_c2"]
    # one pair of runs (reps 1): the ratio is of the two figures reported
    assert pg["throughput_ratio"] == pytest.approx(pg["throughput_c2"] / report["throughput_c2"])
    assert within(pg["throughput_ratio"], 0.01, 100), pg["throughput_ratio"]
    check_cpu(pg["cpu_us_per_job"])
    check_submit(pg["submit"])
    check_latency(pg["latency"], pg["latency_samples"])
    check_history(pg["history"])


def check_servers(sv: dict[str, Any], report: dict[str, Any]) -> None:
    """Two servers on one PostgreSQL: their throughput a rate like the others; each failover
    time positive and within the bounds the cluster tier holds them to (a submit within 3 s,
    a worker's next start within 5 s; the duties within the 30 s the bench waits)."""
    assert set(sv) == {"throughput", "throughput_ratio", "failover", "feed_jobs_per_s"}, sv
    assert within(sv["throughput"], 1, 2 * report["spawn_limit_per_s"]), sv
    one = report["postgres"]["throughput_c2"]
    assert sv["throughput_ratio"] == pytest.approx(sv["throughput"] / one), sv
    assert within(sv["feed_jobs_per_s"], 1, 100_000), sv
    bounds = {"submit_s": 3, "worker_start_s": 5, "duties_s": 30}
    assert set(sv["failover"]) == set(bounds), sv["failover"]
    for name, high in bounds.items():
        assert within(sv["failover"][name], 0, high), (name, sv["failover"])
