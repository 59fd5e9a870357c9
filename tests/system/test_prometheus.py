"""Prometheus as a user runs it: the shipped rules pass promtool (check and unit tests), and a
real Prometheus server scrapes a running dts-server and dts-worker and sees the jobs they ran.

Without Debian's prometheus package these tests skip locally and fail under CI=true
(tests/conftest.py turns a skip into a failure there)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dts.domain import JobSpec
from tests.conftest import make_cluster
from tests.harness import BIN, Proc, clean_env, free_port, wait_until

pytestmark = pytest.mark.single_store  # the metrics' store reads are tested on each store
# in tests/integration/test_metrics.py; here one run keeps Prometheus's start-ups few

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "etc" / "prometheus" / "dts.rules.yml"
RULES_TEST = REPO / "tests" / "prometheus" / "dts.rules.test.yml"
DASHBOARD = REPO / "etc" / "grafana" / "dts.json"


def tool(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else "")
    if not found:
        pytest.skip(f"{name} is not installed (Debian: apt-get install prometheus)")
    return found


def test_the_shipped_rules_pass_promtool_check() -> None:
    out = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 8 rules found" in out.stdout


def test_the_alerts_fire_on_synthetic_series() -> None:
    out = subprocess.run(
        [tool("promtool"), "test", "rules", str(RULES_TEST)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


class Prometheus(Proc):
    """A Prometheus server scraping `targets` (job name -> HOST:PORT) every second, with the
    shipped rules loaded; its data in a directory of its own, removed by close()."""

    def __init__(self, targets: dict[str, str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dts-prometheus-"))
        self.address = f"127.0.0.1:{free_port()}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (self.dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        super().__init__(
            [
                tool("prometheus"),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={self.address}",
            ],
            self.dir / "prometheus.log",
        )

    def get(self, path: str) -> object:
        with urllib.request.urlopen(f"http://{self.address}{path}", timeout=5) as resp:
            return json.loads(resp.read())

    def query(self, expr: str) -> float | None:
        """The value of an instant query that yields one sample (None: no sample yet)."""
        answer = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert isinstance(answer, dict) and answer["status"] == "success", answer
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=5) as resp:
                return resp.status == 200
        except urllib.error.HTTPError as e:  # 503 while starting: its answer must be closed
            e.close()
            return False

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def prometheus(targets: dict[str, str]) -> Iterator[Prometheus]:
    p = Prometheus(targets)
    try:
        p.start()
        wait_until(lambda: not p.alive() or p.ready(), 30, what="prometheus to be ready")
        assert p.alive(), p.output()
        yield p
    finally:
        p.close()


def metrics_address(log: str) -> str:
    """The address a daemon's log says its metrics are served at (it may be given port 0)."""
    found = re.search(r"metrics at http://([^/\s]+)/metrics", log)
    assert found, log
    return found.group(1)


def test_prometheus_scrapes_the_server_and_the_worker_and_sees_the_jobs(tmp_path: Path) -> None:
    tool("prometheus")
    # Given a server and a worker serving metrics (the worker on a port of its choosing)
    cluster = make_cluster(tmp_path, 0, "--metrics-listen", f"127.0.0.1:{free_port()}")
    try:
        worker = cluster.add_worker("w1", "--concurrency", "2", "--metrics-listen", "127.0.0.1:0")
        server_at = metrics_address(cluster.server.output())
        worker_at = metrics_address(worker.output())
        assert not worker_at.endswith(":0")
        # And a Prometheus server scraping both every second
        with prometheus({"dts-server": server_at, "dts-worker": worker_at}) as prom:
            # When four jobs succeed and two fail
            with cluster.client() as c:
                jobs = c.submit(
                    [JobSpec(("true",)) for _ in range(4)]
                    + [JobSpec(("sh", "-c", "exit 3")) for _ in range(2)]
                )
                for job in jobs:
                    assert c.wait(job.id, 20).status.final
            # Then Prometheus's counters show them, as the server and the worker counted them
            expected = {
                'sum(dts_jobs_submitted_total{queue="default"})': 6,
                'sum(dts_jobs_finished_total{status="succeeded"})': 4,
                'sum(dts_jobs_finished_total{status="failed"})': 2,
                "sum(dts_job_run_seconds_count)": 6,
                "sum(dts_job_queue_wait_seconds_count)": 6,
                'sum(dts_worker_jobs_total{result="succeeded"})': 4,
                'sum(dts_worker_jobs_total{result="failed"})': 2,
                'dts_worker_connected{peer="server"}': 1,
                'dts_worker_connected{peer="redis"}': 1,
                "dts_worker_slots": 2,
                'max(dts_jobs{queue="default",status="queued"})': 0,
                'max(dts_queue_workers{queue="default"})': 1,
                "sum(up)": 2,
            }
            wait_until(
                lambda: all(prom.query(q) == v for q, v in expected.items()),
                30,
                interval=0.5,
                what="prometheus to see " + str({q: prom.query(q) for q in expected}),
            )
            # And it loaded the shipped rules, none of them firing on a healthy cluster
            rules = prom.get("/api/v1/rules")
            assert isinstance(rules, dict)
            (group,) = rules["data"]["groups"]
            assert len(group["rules"]) == 8
            assert all(r["health"] == "ok" for r in group["rules"]), group["rules"]
            assert all(r["state"] == "inactive" for r in group["rules"]), group["rules"]
    finally:
        cluster.stop()


def test_the_daemons_metrics_text_parses_with_the_types_promised(tmp_path: Path) -> None:
    # Given a server and a worker serving metrics, and a job that ran
    cluster = make_cluster(tmp_path, 0, "--metrics-listen", "127.0.0.1:0")
    try:
        worker = cluster.add_worker("w1", "--concurrency", "3", "--metrics-listen", "127.0.0.1:0")
        with cluster.client() as c:
            (job,) = c.submit([JobSpec(("true",))])
            assert c.wait(job.id, 20).status.final
        # When each /metrics is read
        types = {}
        for proc in (cluster.server, worker):
            url = f"http://{metrics_address(proc.output())}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
            types.update({f.name: f.type for f in text_string_to_metric_families(text)})
    finally:
        cluster.stop()
    # Then every metric the README lists is there, with its type
    assert types == {
        "dts_jobs_submitted": "counter",
        "dts_jobs_finished": "counter",
        "dts_attempts_lost": "counter",
        "dts_job_queue_wait_seconds": "histogram",
        "dts_job_run_seconds": "histogram",
        "dts_redis_errors": "counter",
        "dts_db_errors": "counter",
        "dts_jobs": "gauge",
        "dts_workers": "gauge",
        "dts_queue_workers": "gauge",
        "dts_worker_slots": "gauge",
        "dts_worker_jobs_running": "gauge",
        "dts_worker_jobs": "counter",
        "dts_worker_connected": "gauge",
    }
    # And the dashboard and the rules use no metric that is not served
    used = set(re.findall(r"\b(dts_[a-z_]+)", DASHBOARD.read_text() + RULES.read_text()))
    suffixes = {"counter": ("_total",), "histogram": ("", "_bucket", "_count", "_sum")}
    served = {name + suffix for name, kind in types.items() for suffix in suffixes.get(kind, ("",))}
    assert used <= served, used - served


@pytest.mark.parametrize("prog", ["dts-server", "dts-worker"])
def test_a_bad_metrics_address_is_one_line_and_exit_2(prog: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [str(BIN / prog), "--metrics-listen", "localhost:http"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=30,
    )
    assert out.returncode == 2
    assert (
        out.stderr == f"{prog}: error: --metrics-listen must be HOST:PORT, got 'localhost:http'\n"
    )


def test_a_metrics_port_in_use_stops_the_server_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [
                str(BIN / "dts-server"),
                f"--listen=127.0.0.1:{free_port()}",
                f"--db={tmp_path / 'dts.db'}",
                f"--metrics-listen=127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=30,
        )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (--metrics-listen)" in out.stderr
    assert "Traceback" not in out.stderr
