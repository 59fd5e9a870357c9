"""Screenshots of each dashboard page for the README (`make screenshots`): a redis-server,
dts-server, two workers and dts-web of their own in a temporary directory, some jobs of every
kind, then Debian's chromium saves docs/web/PAGE.png.

    python -m tests.web.screenshots [--out docs/web]"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from dts.client import Client
from dts.domain import JobSpec, JobStatus
from tests.harness import RedisProcess, ServerProcess, WorkerProcess, run_cli, wait_until
from tests.web.browser import CHROMIUM, chromium_missing, web_process

VIEWPORT = {"width": 1280, "height": 860}


def populate(c: Client, server: str) -> tuple[int, int]:
    """Jobs of every kind; the ids of a job that failed after a retry and of a running one."""
    c.submit([JobSpec(argv=("true",), name=f"report-{i}") for i in range(30)])
    c.submit([JobSpec(argv=("sh", "-c", "exit 2"), name="flaky-import")] * 3)
    c.submit([JobSpec(argv=("true",), queue="batch", delay=600, name="nightly-batch")] * 4)
    (failed,) = c.submit(
        [
            JobSpec(
                argv=("echo fetching https://example.com/data.csv; echo 'HTTP 503' >&2; exit 7",),
                shell=True,
                name="fetch-data",
                max_retries=1,
                backoff=0.2,
                timeout=60,
                env=(("DATA_URL", "https://example.com/data.csv"),),
            )
        ]
    )
    (running,) = c.submit(
        [JobSpec(argv=("echo training; sleep 300",), shell=True, name="train-model")]
    )
    c.pause_queue("batch")
    c.set_queue_limit("batch", 2)
    for args in (
        ("nightly-report", "--cron", "0 3 * * *", "--", "make", "report"),
        ("heartbeat", "--every", "5m", "--", "curl", "-fsS", "https://example.com/ping"),
    ):
        r = run_cli(server, "schedule", "add", *args)
        assert r.returncode == 0, r.stderr
    run_cli(server, "schedule", "pause", "heartbeat")
    c.wait(failed.id, timeout=60)
    wait_until(lambda: c.get(running.id).status is JobStatus.RUNNING, 30, what="running")
    return failed.id, running.id


def shoot(url: str, out: Path, failed: int) -> None:
    from playwright.sync_api import sync_playwright

    pages = {
        "overview": "/",
        "jobs": "/jobs",
        "job": f"/jobs/{failed}",
        "workers": "/workers",
        "queues": "/queues",
        "schedules": "/schedules",
    }
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport=VIEWPORT)
        for name, path in pages.items():
            page.goto(url + path)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(out / f"{name}.png"))
            print(out / f"{name}.png")
        browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/web", help="directory of the PNG files")
    ns = ap.parse_args()
    if chromium_missing():
        sys.stderr.write(f"screenshots: {chromium_missing()}\n")
        return 2
    with tempfile.TemporaryDirectory(prefix="dts-shots-") as tmp:
        d = Path(tmp)
        r = RedisProcess(d)
        r.start()
        s = ServerProcess(d, r.url)
        s.start()
        workers = [WorkerProcess(d, s.address, r.url, f"worker-{i}", "--concurrency", "4")
                   for i in (1, 2)]  # fmt: skip
        try:
            for w in workers:
                w.start()
            with Client(s.address) as c:
                failed, _ = populate(c, s.address)
            with web_process(d, s.address) as web:
                shoot(web.url, Path(ns.out), failed)
        finally:
            for w in workers:
                w.kill()
            s.stop()
            r.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
