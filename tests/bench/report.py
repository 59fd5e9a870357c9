"""`make bench`'s Markdown table of a report (tests/bench/run.py measures it)."""

from __future__ import annotations

from typing import Any

from tests.bench import servers

PIPELINE_WINDOW = 64  # single submits a client keeps on their way at once (run.py's pipelined)
SINGLES = f"single submits, one client: each waited for / {PIPELINE_WINDOW} on their way"
CPU = "CPU per job: server / worker / job processes / redis (1 worker, c2)"
ENDED = "latency submit→the job's command ended (the worker's clock) p50 / p99"
STEPS = "latency step by step, p50: submit / claim / to the command / command / report / answer"
FLOOR = (
    "floor, one step alone: gRPC round trip / Redis round trip / durable commit / "
    "thread hand-off / spawn and reap `true`; their sum on a job's way"
)
RELAXED = "with --sqlite-synchronous normal: submit→finished p50 / p99; waited-for single submits"
STEP_NAMES = ("submit", "claim", "to the command", "command", "report", "answer")


def render(r: dict[str, Any]) -> str:
    """The Markdown table; with a "postgres" section, a PostgreSQL column beside the result
    (the SQLite store's, for the measures that depend on the store), "—" where it has none.
    A report from before a measure existed shows "—" for it."""
    rows = _rows(r)
    head = f"dts benchmark, {r['date']}, {r['machine']}; medians of {r['reps']}, N={r['n']}\n\n"
    pg = r.get("postgres")
    if pg is None:
        return (
            head
            + "| measure | result |\n|---|---|\n"
            + "".join(f"| {a} | {b} |\n" for a, b in rows)
        )
    srv = pg["server"]
    head += (
        f"result: the SQLite store (synchronous=full) where the store matters; PostgreSQL: "
        f"PostgreSQL {srv['server_version']} on {srv['address']} (fsync {srv['fsync']}, "
        f"synchronous_commit {srv['synchronous_commit']}), a fresh database per measurement\n\n"
    )
    beside = {  # the PostgreSQL cell of each measure that has one
        "throughput, 1 worker, concurrency 2": f"{pg['throughput_c2']:,.0f} jobs/s "
        f"({pg['spawn_fraction_c2']:.0%} of spawn limit, {pg['throughput_ratio']:.0%} of SQLite's)",
        CPU: _cpu_cell(pg.get("cpu_us_per_job")),
        "throughput with 0 / 10% / 100% backlog queued": _backlog_cell(pg["backlog"]),
        "submit: batch call / --from-file": _submit_cell(pg["submit"]),
        SINGLES: _singles_cell(pg["submit"]),
        "latency submit→start p50 / p99": _latency_cell(pg["latency"], "start"),
        ENDED: _latency_cell(pg["latency"], "ended"),
        "latency submit→finished p50 / p99": _latency_cell(pg["latency"], "finish"),
        STEPS: _steps_cell(pg["latency"]),
        "status / list / list --queue with history": _history_cell(pg["history"]),
    }
    assert set(beside) <= {a for a, _ in rows}, set(beside) - {a for a, _ in rows}
    return (
        head
        + "| measure | result | PostgreSQL |\n|---|---|---|\n"
        + "".join(f"| {a} | {b} | {beside.get(a, '—')} |\n" for a, b in rows)
    )


def _rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """(measure, result) of every row, in the table's order."""
    lat, sub, mem, hist = r["latency"], r["submit"], r["memory"], r["history"]
    return [
        ("spawn limit (subprocess.run true, 2 threads)", f"{r['spawn_limit_per_s']:,.0f} /s"),
        (
            "throughput, 1 worker, concurrency 2",
            f"{r['throughput_c2']:,.0f} jobs/s ({r['spawn_fraction_c2']:.0%} of spawn limit)",
        ),
        (CPU, _cpu_cell(r.get("cpu_us_per_job"))),
        ("throughput, 1 worker, concurrency 4", f"{r['throughput_c4']:,.0f} jobs/s"),
        (
            "throughput, 1 / 2 / 4 workers (c2)",
            " / ".join(f"{v:,.0f}" for v in r["workers"].values()),
        ),
        ("throughput with 0 / 10% / 100% backlog queued", _backlog_cell(r["backlog"])),
        ("submit: batch call / --from-file", _submit_cell(sub)),
        (SINGLES, _singles_cell(sub)),
        ("latency submit→start p50 / p99", _latency_cell(lat, "start")),
        (ENDED, _latency_cell(lat, "ended")),
        ("latency submit→finished p50 / p99", _latency_cell(lat, "finish")),
        (STEPS, _steps_cell(lat)),
        (FLOOR, _floor_cell(r.get("floor"))),
        (RELAXED, _relaxed_cell(r.get("relaxed"))),
        ("status / list / list --queue with history", _history_cell(hist)),
        (
            f"RSS server idle / load / {r.get('queued', 100_000):,} queued",
            f"{mem['server_idle_mb']:.0f} / "
            f"{mem['server_load_mb']:.0f} / {mem['server_queued_mb']:.0f} MB",
        ),
        ("RSS worker idle / load", f"{mem['worker_idle_mb']:.0f} / {mem['worker_load_mb']:.0f} MB"),
        ("SQLite bytes per job", f"{mem['sqlite_bytes_per_job']:,.0f}"),
        _storm_row(r["storm"], "idle", "ping / status / heartbeat p50 / p99, idle"),
        _storm_row(
            r["storm"],
            "storm",
            f"ping / status / heartbeat p50 / p99, {r['storm']['waiters']:,} waiting and "
            f"{r['storm']['hanging']:,} hanging calls",
        ),
        *servers.rows(r),  # two servers on one PostgreSQL, when there is one
    ]


def _cpu_cell(cpu: dict[str, float] | None) -> str:
    if cpu is None:
        return "—"
    return " / ".join(f"{cpu[k]:,.0f}" for k in ("server", "worker", "jobs", "redis")) + " µs"


def _backlog_cell(backlog: dict[str, float]) -> str:
    return (
        " / ".join(f"{v:,.0f}" for v in backlog.values()) + f" (backlog {max(map(int, backlog)):,})"
    )


def _submit_cell(sub: dict[str, float]) -> str:
    return f"{sub['batch_per_s']:,.0f} / {sub['from_file_per_s']:,.0f} per s"


def _singles_cell(sub: dict[str, float]) -> str:
    return f"{sub['single_per_s']:,.0f} / {sub.get('pipelined_per_s', 0):,.0f} per s"


def _latency_cell(lat: dict[str, float], to: str) -> str:
    if f"{to}_p50_ms" not in lat:
        return "—"
    return f"{lat[f'{to}_p50_ms']:.1f} / {lat[f'{to}_p99_ms']:.1f} ms"


def _steps_cell(lat: dict[str, float]) -> str:
    if f"step {STEP_NAMES[0]} p50 ms" not in lat:
        return "—"
    return " / ".join(f"{lat[f'step {name} p50 ms']:.2f}" for name in STEP_NAMES) + " ms"


def _floor_cell(fl: dict[str, float] | None) -> str:
    if fl is None:
        return "—"
    steps = ("grpc_ms", "redis_ms", "commit_ms", "hop_ms", "spawn_ms")
    return " / ".join(f"{fl[k]:.2f}" for k in steps) + f" ms; {fl['path_ms']:.1f} ms"


def _relaxed_cell(rel: dict[str, float] | None) -> str:
    if rel is None:
        return "—"
    return f"{_latency_cell(rel, 'finish')}; {rel['single_per_s']:,.0f} per s"


def _history_cell(hist: dict[str, float]) -> str:
    return f"{hist['status_ms']:.1f} / {hist['list_ms']:.1f} / {hist['list_queue_ms']:.1f} ms"


def _storm_row(st: dict[str, float], when: str, label: str) -> tuple[str, str]:
    calls = ("ping", "status", "heartbeat")
    cells = [f"{st[f'{when} {c} p50 ms']:.1f} / {st[f'{when} {c} p99 ms']:.1f}" for c in calls]
    return label, " · ".join(cells) + " ms"
