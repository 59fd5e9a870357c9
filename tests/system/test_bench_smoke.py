"""A smoke run of `make bench` with tiny sizes: every measurement runs against real processes
and the report renders (the figures themselves belong to `make bench`, not to tests)."""

from __future__ import annotations

from pathlib import Path

from tests.bench.run import Bench, render


def test_every_bench_measurement_runs_and_renders(tmp_path: Path) -> None:
    b = Bench(tmp_path)
    r = {
        "date": "today",
        "machine": "this one",
        "n": 50,
        "reps": 1,
        "queued": 100,
        "spawn_limit_per_s": 1000.0,
        "throughput_c2": b.throughput(50),
        "throughput_c4": b.throughput(50, 1, 4),
        "submit": b.submit_rates(200),
        "latency": b.latency(5),
        "workers": {"1": b.throughput(30, 1), "2": b.throughput(30, 2)},
        "backlog": {"0": b.throughput(30, 1, 2, 0), "100": b.throughput(30, 1, 2, 100)},
        "history": b.history_reads(1000),
        "memory": b.memory(100),
    }
    r["spawn_fraction_c2"] = r["throughput_c2"] / r["spawn_limit_per_s"]
    assert r["throughput_c2"] > 0 and r["submit"]["pipelined_per_s"] > 0
    assert r["latency"]["finish_p50_ms"] >= r["latency"]["start_p50_ms"] > 0
    table = render(r)
    assert "| throughput, 1 worker, concurrency 2 |" in table and "100 queued" in table
