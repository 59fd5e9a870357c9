"""`make bench-peers`: dts beside Celery, RQ, Dramatiq, huey and arq on one shell-job workload.

Every system runs the same job, `subprocess.run(["true"], check=True)`, with its own
redis-server (a free loopback port, no persistence) and ONE worker of concurrency 2, from one
run on one machine; the machine's spawn limit (tests/bench/run.py) is measured in the same run,
at the start and after each system (the median of all samples), so the ratios survive a change
of machine and, better, a load that comes and goes on this one. The peers run from .venv-peers
(tests/bench/peers-requirements.txt); their apps are tests/bench/peer_tasks, driven by
peer_tasks/driver.py in that venv. dts runs through tests/bench/run.py's Bench.

Throughput: N jobs are enqueued in bulk BEFORE the peer's worker starts (so the worker never
competes with the client for the CPU and starts with its whole backlog); each job appends one
"<start> <end>" line (time.time(), one os.write on an O_APPEND fd opened once per process) to a
file, and jobs/s = N / (last end - first start). dts is measured as `make bench` measures it
(jobs submitted in one call to a running worker, started_at/finished_at from its history).

Latency, with the worker idle: one long-lived client enqueues one job with the peer's own call
and polls the size of the lines file every 0.2 ms until the job's line is there (the same for
every peer; 2 warm-up jobs first, not counted). That stops the clock when the job's own code is
done, before the peer records an outcome. dts's figure is submit -> the end of the job's
command by the worker's clock (the attempt's ran_until, read from the history afterwards: the
same machine's clock as the client's); beside it, "answer", is submit -> `Client.wait`
returning, after the result is in the durable history. Every figure is
the median of --reps repetitions, each with a fresh redis-server and worker; no further
repetition of a system starts after --budget seconds (arq with its default poll_delay needs
minutes for one), and the table says so where that cut one short.

Output: bench-results/peers.json, peers.md (the table, also printed) and peers.svg.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench.run import Bench, pct, spawn_limit
from tests.harness import Proc, RedisProcess, clean_env

ROOT = Path(__file__).resolve().parents[2]
DTS_NAME = "dts (durable history, crash recovery)"
LINES_TIMEOUT = 600.0  # for all N lines of a throughput run (arq's defaults need 250 s for 1000)
WORKER_GRACE = 5.0  # SIGTERM to SIGKILL when tearing a worker down


@dataclass(frozen=True)
class Peer:
    key: str  # what --only names
    name: str  # the table's label
    kind: str  # the driver's client: celery, rq, dramatiq, huey, arq
    package: str  # whose version is reported
    argv: tuple[str, ...]  # the worker command in .venv-peers/bin; {redis} is the URL
    config: str


PEERS = (
    Peer(
        "celery",
        "Celery",
        "celery",
        "celery",
        (
            "celery",
            "-A",
            "peer_tasks.celery_app",
            "worker",
            "--concurrency",
            "2",
            "--pool",
            "prefork",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        ),
        "1 worker, prefork pool, concurrency 2, default prefetch (x4) and fair scheduling; "
        "--without-gossip --without-mingle --without-heartbeat; task_ignore_result",
    ),
    Peer(
        "rq",
        "RQ",
        "rq",
        "rq",
        ("rq", "worker-pool", "-n", "2", "-u", "{redis}", "-l", "WARNING"),
        "rq worker-pool -n 2: 2 worker processes (an RQ worker runs one job at a time), "
        "default Worker: a fork per job; result_ttl=0",
    ),
    Peer(
        "rq-simple",
        "RQ SimpleWorker",
        "rq",
        "rq",
        (
            "rq",
            "worker-pool",
            "-n",
            "2",
            "-u",
            "{redis}",
            "-l",
            "WARNING",
            "-w",
            "rq.worker.SimpleWorker",
        ),
        "rq worker-pool -n 2 -w rq.worker.SimpleWorker: 2 worker processes, no fork per job; "
        "result_ttl=0",
    ),
    Peer(
        "dramatiq",
        "Dramatiq",
        "dramatiq",
        "dramatiq",
        ("dramatiq", "peer_tasks.dramatiq_tasks", "--processes", "1", "--threads", "2"),
        "--processes 1 --threads 2, redis broker, default middleware (no Results)",
    ),
    Peer(
        "huey-process",
        "huey (processes)",
        "huey",
        "huey",
        ("huey_consumer", "peer_tasks.huey_tasks.huey", "-w", "2", "-k", "process", "-q"),
        "huey_consumer -w 2 -k process, RedisHuey (blocking dequeue), results=False",
    ),
    Peer(
        "huey-thread",
        "huey (threads)",
        "huey",
        "huey",
        ("huey_consumer", "peer_tasks.huey_tasks.huey", "-w", "2", "-k", "thread", "-q"),
        "huey_consumer -w 2 -k thread, RedisHuey (blocking dequeue), results=False",
    ),
    Peer(
        "arq",
        "arq",
        "arq",
        "arq",
        (
            "arq",
            "peer_tasks.arq_tasks.WorkerSettings",
            "--custom-log-dict",
            "peer_tasks.arq_tasks.LOG_CONFIG",
        ),
        "max_jobs=2, job in asyncio.to_thread, keep_result=0, default poll_delay 0.5 s",
    ),
    Peer(
        "arq-poll2ms",
        "arq (poll_delay 2 ms)",
        "arq",
        "arq",
        (
            "arq",
            "peer_tasks.arq_tasks.FastPollWorkerSettings",
            "--custom-log-dict",
            "peer_tasks.arq_tasks.LOG_CONFIG",
        ),
        "as arq, with poll_delay=0.002 (arq's default polling caps it at max_jobs per poll)",
    ),
)
KEYS = ("dts", *(p.key for p in PEERS))


class PeerError(Exception):
    """A peer could not be measured; the message says why."""


class PeerRun:
    """One repetition for one peer: its redis-server, a backlog, its worker, then latency."""

    def __init__(self, peer: Peer, venv: Path, root: Path) -> None:
        self.peer = peer
        self.venv = venv
        self.dir = Path(tempfile.mkdtemp(dir=root, prefix=f"{peer.key}-"))
        self.lines = self.dir / "lines"
        self.worker: Proc | None = None

    def env(self, redis_url: str) -> dict[str, str]:
        return clean_env(
            PYTHONPATH=str(ROOT / "tests" / "bench"),
            PEERS_BENCH_REDIS=redis_url,
            PEERS_BENCH_LINES=str(self.lines),
            PATH=f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
        )

    def run(self, n: int, latency_jobs: int) -> dict[str, float]:
        redis = RedisProcess(self.dir)
        try:
            redis.start()
            env = self.env(redis.url)
            enq = driver(self.venv, env, self.peer.kind, "enqueue", str(n), timeout=300)
            argv = [a.replace("{redis}", redis.url) for a in self.peer.argv]
            argv[0] = str(self.venv / "bin" / argv[0])
            self.worker = Proc(argv, self.dir / "worker.log", env=env)
            self.worker.start()
            starts, ends = self.wait_lines(n)
            time.sleep(0.5)  # the worker goes idle
            lat = driver(
                self.venv,
                env,
                self.peer.kind,
                "latency",
                str(latency_jobs),
                timeout=60 + 2 * latency_jobs,
            )
            if not self.worker.alive():
                raise PeerError(f"worker exited during the latency run: {self.tail()}")
            return {
                "throughput_per_s": n / (max(ends) - min(starts)),
                "enqueue_per_s": n / enq["seconds"],
                "latency_p50_ms": pct(lat["finish_ms"], 50),
                "latency_p99_ms": pct(lat["finish_ms"], 99),
                "start_p50_ms": pct(lat["start_ms"], 50),
                "start_p99_ms": pct(lat["start_ms"], 99),
            }
        finally:
            if self.worker is not None:
                kill_session(self.worker)
            redis.kill()

    def wait_lines(self, n: int) -> tuple[list[float], list[float]]:
        """All n lines of the backlog, or PeerError (worker gone, timeout, or extra lines)."""
        assert self.worker is not None
        deadline = time.monotonic() + LINES_TIMEOUT
        count = 0
        while True:
            data = self.lines.read_bytes() if self.lines.exists() else b""
            count = data.count(b"\n")
            if count >= n:
                break
            if not self.worker.alive():
                raise PeerError(f"worker exited after {count}/{n} jobs: {self.tail()}")
            if time.monotonic() > deadline:
                raise PeerError(f"only {count}/{n} jobs done after {LINES_TIMEOUT:.0f}s")
            time.sleep(0.05)
        time.sleep(0.2)
        data = self.lines.read_bytes()
        pairs = [line.split() for line in data.decode().splitlines()]
        if len(pairs) != n:
            raise PeerError(f"{len(pairs)} lines for {n} jobs: a job ran more than once")
        return [float(p[0]) for p in pairs], [float(p[1]) for p in pairs]

    def tail(self, lines: int = 5) -> str:
        text = self.worker.output() if self.worker is not None else ""
        return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"


def driver(venv: Path, env: dict[str, str], *args: str, timeout: float) -> dict[str, Any]:
    """Run peer_tasks.driver in .venv-peers; its JSON answer."""
    try:
        p = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "peer_tasks.driver", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise PeerError(f"driver {' '.join(args)} timed out after {timeout:.0f}s") from e
    except OSError as e:
        raise PeerError(f"cannot run {venv}/bin/python: {e}") from e
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise PeerError(f"driver {' '.join(args)} failed: {last}")
    answer: dict[str, Any] = json.loads(p.stdout)
    return answer


def session_pids(sid: int) -> list[int]:
    """Every process in session `sid` (a worker's children, forks that left its group too)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(d.name))
    return pids


def kill_session(worker: Proc) -> None:
    """SIGTERM the worker's session, SIGKILL what is left after WORKER_GRACE, reap the leader."""
    if worker.proc is None:
        return
    sid = worker.pid  # started with start_new_session=True: its pid is the session id
    for sig, grace in ((signal.SIGTERM, WORKER_GRACE), (signal.SIGKILL, 5.0)):
        pids = session_pids(sid)
        if worker.alive() and sid not in pids:
            pids.append(sid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if worker.alive():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(0.05)
            elif not session_pids(sid):
                return
            else:
                time.sleep(0.05)
    left = session_pids(sid)
    if left:
        print(f"warning: processes {left} of session {sid} survived SIGKILL", file=sys.stderr)


def median_of(
    reps: int, budget: float, fn: Callable[[], dict[str, float]]
) -> tuple[dict[str, float], int]:
    """Medians over `reps` runs of fn, and how many ran: none starts once `budget` s are spent."""
    start = time.monotonic()
    results = [fn()]
    while len(results) < reps and time.monotonic() - start < budget:
        results.append(fn())
    return {k: statistics.median(r[k] for r in results) for k in results[0]}, len(results)


def peer_versions(venv: Path) -> dict[str, str]:
    env = clean_env(PYTHONPATH=str(ROOT / "tests" / "bench"))
    return {k: str(v) for k, v in driver(venv, env, "versions", timeout=60).items()}


def select(only: str | None) -> list[str]:
    if not only:
        return list(KEYS)
    names = [s.strip() for s in only.split(",") if s.strip()]
    chosen = [k for k in KEYS if any(k == s or k.startswith(s + "-") for s in names)]
    unknown = [s for s in names if not any(k == s or k.startswith(s + "-") for k in KEYS)]
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(unknown)}; known: {', '.join(KEYS)}")
    return chosen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="jobs per throughput run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--latency-jobs", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="n=200, reps=1, latency 30 (smoke)")
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--only", help=f"comma-separated, of: {', '.join(KEYS)}")
    ap.add_argument("--venv", default=str(ROOT / ".venv-peers"), help="the peers' venv")
    ap.add_argument(
        "--budget",
        type=float,
        default=180.0,
        help="seconds per system after which no further repetition starts (arq's defaults)",
    )
    a = ap.parse_args()
    if a.quick:
        a.n, a.reps, a.latency_jobs = 200, 1, 30
    keys = select(a.only)
    venv = Path(a.venv).resolve()
    out = Path(a.out)
    out.mkdir(exist_ok=True)
    step = _progress()
    r: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "n": a.n,
        "reps": a.reps,
        "latency_jobs": a.latency_jobs,
    }
    # sampled at the start and after each system, so a load that comes and goes on the machine
    # moves the ratios less; the median of all samples is the figure
    spawns = [spawn_limit() for _ in range(a.reps)]
    step("spawn limit", f"{statistics.median(spawns):,.0f}/s")

    def done(x: dict[str, Any]) -> None:
        spawns.append(spawn_limit())
        step(x["name"], f"{_summary(x)}; spawn limit now {spawns[-1]:,.0f}/s")

    versions: dict[str, str] = {}
    if any(k != "dts" for k in keys):
        try:
            versions = peer_versions(venv)
        except PeerError as e:
            print(f"PEERS UNAVAILABLE: {venv} does not answer ({e})", file=sys.stderr)
        r["peer_packages"] = versions
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dts-bench-peers-") as tmp:
        root = Path(tmp)
        if "dts" in keys:
            results.append(measure_dts(root, a))
            done(results[-1])
        for peer in PEERS:
            if peer.key in keys:
                results.append(measure_peer(peer, venv, root, versions, a, out))
                done(results[-1])
    r["spawn_limit_per_s"] = statistics.median(spawns)
    r["spawn_limit_samples"] = spawns
    for x in results:
        if x["status"] == "ok":
            x["spawn_fraction"] = x["throughput_per_s"] / r["spawn_limit_per_s"]
    results.sort(key=lambda x: (x["status"] != "ok", -x.get("throughput_per_s", 0)))
    r["systems"] = results
    (out / "peers.json").write_text(json.dumps(r, indent=2) + "\n")
    table = render(r)
    (out / "peers.md").write_text(table)
    (out / "peers.svg").write_text(svg(r))
    print(table)
    failed = [x["name"] for x in results if x["status"] != "ok"]
    if failed:
        print(f"bench-peers: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def measure_dts(root: Path, a: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "key": "dts",
        "name": DTS_NAME,
        "version": importlib.metadata.version("dts"),
        "config": "1 dts-worker --concurrency 2, dts-server with its SQLite history "
        "(tests/bench/run.py Bench)",
    }
    b = Bench(root)

    def once() -> dict[str, float]:
        tput = b.throughput(a.n, 1, 2)
        lat = b.latency(a.latency_jobs)
        return {
            "throughput_per_s": tput,
            "latency_p50_ms": lat["ended_p50_ms"],
            "latency_p99_ms": lat["ended_p99_ms"],
            "answer_p50_ms": lat["finish_p50_ms"],
            "answer_p99_ms": lat["finish_p99_ms"],
            "start_p50_ms": lat["start_p50_ms"],
            "start_p99_ms": lat["start_p99_ms"],
        }

    try:
        medians, reps = median_of(a.reps, a.budget, once)
    except Exception as e:
        traceback.print_exc()
        print(f"{DTS_NAME} FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return {**res, "status": "failed", "error": f"{type(e).__name__}: {e}"}
    return {**res, "status": "ok", "reps": reps, **medians}


def measure_peer(
    peer: Peer, venv: Path, root: Path, versions: dict[str, str], a: Any, out: Path
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "key": peer.key,
        "name": peer.name,
        "version": versions.get(peer.package, ""),
        "config": peer.config,
    }
    runs: list[PeerRun] = []
    (out / f"peers-{peer.key}.log").unlink(missing_ok=True)  # a failed run's, from before

    def once() -> dict[str, float]:
        runs.append(PeerRun(peer, venv, root))
        return runs[-1].run(a.n, a.latency_jobs)

    try:
        if not res["version"]:
            raise PeerError(f"{peer.package} is not installed in {venv}")
        medians, reps = median_of(a.reps, a.budget, once)
        return {**res, "status": "ok", "reps": reps, **medians}
    except Exception as e:
        why = str(e) if isinstance(e, PeerError) else f"{type(e).__name__}: {e}"
        if runs and (runs[-1].dir / "worker.log").exists():
            log = out / f"peers-{peer.key}.log"
            log.write_bytes((runs[-1].dir / "worker.log").read_bytes())
            why += f" (worker log: {log})"
        if not isinstance(e, PeerError):
            traceback.print_exc()
        print(f"{peer.name} FAILED: {why}", file=sys.stderr)
        return {**res, "status": "failed", "error": why}


def _summary(x: dict[str, Any]) -> str:
    if x["status"] != "ok":
        return "FAILED"
    return (
        f"{x['throughput_per_s']:,.0f} jobs/s, latency {x['latency_p50_ms']:.1f} / "
        f"{x['latency_p99_ms']:.1f} ms"
    )


def _progress() -> Callable[[str, Any], None]:
    start = time.monotonic()

    def step(name: str, value: Any) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {name}: {value}", file=sys.stderr, flush=True)

    return step


def render(r: dict[str, Any]) -> str:
    head = (
        f"Peers benchmark, {r['date']}, {r['machine']}; N={r['n']} jobs of `true`, "
        f"1 worker of concurrency 2 each, medians of {r['reps']}, latency over "
        f"{r['latency_jobs']} jobs; spawn limit {r['spawn_limit_per_s']:,.0f}/s\n\n"
    )
    rows = [
        "| peer | version | configuration | jobs/s | % of spawn limit | latency p50 / p99 ms |",
        "|---|---|---|---:|---:|---:|",
    ]
    for x in r["systems"]:
        if x["status"] == "ok":
            short = f" ({x['reps']} of {r['reps']} runs: over the time budget)"
            rows.append(
                f"| {x['name']} | {x['version']} | {x['config']} | "
                f"{x['throughput_per_s']:,.0f}{short if x['reps'] < r['reps'] else ''} | "
                f"{x['spawn_fraction']:.0%} | "
                f"{x['latency_p50_ms']:.1f} / {x['latency_p99_ms']:.1f}{_answer(x)} |"
            )
        else:
            rows.append(
                f"| {x['name']} | {x['version'] or '?'} | {x['config']} | "
                f"failed: {x['error'].replace('|', '/')} | | |"
            )
    return head + "\n".join(rows) + "\n"


def _answer(x: dict[str, Any]) -> str:
    """dts's latency through the history, beside the one measured as the peers' is."""
    if "answer_p50_ms" not in x:
        return ""
    return f" (answer through the history: {x['answer_p50_ms']:.1f} / {x['answer_p99_ms']:.1f})"


def svg(r: dict[str, Any]) -> str:
    """A horizontal bar chart of jobs/s, dts highlighted, the spawn limit as a dashed line."""
    ok = [x for x in r["systems"] if x["status"] == "ok"]
    width, label_w, bar_w, row_h, top = 640, 270, 290, 26, 48
    height = top + row_h * max(len(ok), 1) + 34
    limit = r["spawn_limit_per_s"]
    scale = bar_w / max([limit, *(x["throughput_per_s"] for x in ok)])
    e = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="12" y="20" font-size="14" font-weight="bold">Jobs/s, `true` via subprocess, '
        "1 worker &#215; concurrency 2</text>",
        f'<text x="12" y="36" fill="#555">{e(r["date"])}; {e(r["machine"])}; N={r["n"]}, '
        f"median of {r['reps']}</text>",
    ]
    lx = label_w + limit * scale
    bottom = top + row_h * max(len(ok), 1)
    parts += [
        f'<line x1="{lx:.1f}" y1="{top}" x2="{lx:.1f}" y2="{bottom}" stroke="#333" '
        'stroke-dasharray="4 3"/>',
        f'<text x="{lx:.1f}" y="{bottom + 16}" text-anchor="end" fill="#333">'
        f"spawn limit {limit:,.0f}/s</text>",
    ]
    for i, x in enumerate(ok):
        y = top + i * row_h
        w = x["throughput_per_s"] * scale
        dts = x["key"] == "dts"
        weight = ' font-weight="bold"' if dts else ""
        parts += [
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" font-size="11"{weight}>'
            f"{e(x['name'])}</text>",
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{"#d9480f" if dts else "#4c6ef5"}"/>',
            f'<text x="{label_w + w + 6:.1f}" y="{y + 17}" stroke="white" stroke-width="3" '
            f'paint-order="stroke"{weight}>'
            f"{x['throughput_per_s']:,.0f}</text>",
        ]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
