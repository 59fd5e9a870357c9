"""The dashboard in a real browser (Debian's chromium, headless, driven by Playwright): submit
jobs, open the dashboard, filter, open a job, watch its output appear live, cancel it; with
tokens (a client logs in and acts, a viewer sees no buttons) and without.

Without chromium these skip locally and fail under CI=true."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dts.channel import ChannelSecurity
from dts.client import Client
from dts.domain import JobSpec, JobStatus
from tests.conftest import IN_CI, Cluster
from tests.web.browser import CHROMIUM, chromium_missing, web_process
from tests.web.conftest import CLIENT, VIEWER

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

LIVE_WAIT = 10_000  # ms for a line a running job printed to appear (polled each second)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = chromium_missing()
    if missing:
        if IN_CI:  # in CI the browser tests must run
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(10_000)
    p = context.new_page()
    yield p
    context.close()


def console_errors(page: Page) -> list[str]:
    """The errors the page's console will show (a script or a Content-Security-Policy
    violation), as they come."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def test_filter_open_watch_and_cancel(page: Page, web_cluster: Cluster, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    # Given jobs: three named browse-a waiting, one browse-b, and one that starts in 3 s,
    # prints a line, then sleeps
    with web_cluster.client() as c:
        waiting = c.submit([JobSpec(argv=("true",), name="browse-a", delay=3600)] * 3)
        c.submit([JobSpec(argv=("true",), name="browse-b", delay=3600)])
        (live,) = c.submit(
            [JobSpec(argv=("echo first line; sleep 60",), shell=True, name="browse-live", delay=3)]
        )
    errors = console_errors(page)
    with web_process(tmp_path, web_cluster.server.address) as web:
        # When the dashboard is opened, then the overview shows counts and the chart
        page.goto(web.url)
        expect(page.locator("h1")).to_have_text("Overview")
        expect(page.locator("svg.chart")).to_be_visible()
        # When the jobs are filtered by name, then exactly those are listed
        page.click("text=Jobs")
        page.fill("#f-name", "browse-a")
        page.click("#f-apply")
        rows = page.locator("tr.job")
        expect(rows).to_have_count(3)
        ids = sorted(int(x) for x in rows.evaluate_all("rs => rs.map(r => r.dataset.id)"))
        assert ids == sorted(j.id for j in waiting)
        # When the running job is opened (by its name filter, then its link)
        page.fill("#f-name", "browse-live")
        page.click("#f-apply")
        page.click(f"tr.job[data-id='{live.id}'] td.num a")
        # Then the page follows it without a reload: scheduled, then running
        expect(page.locator("#job-status")).to_have_text("scheduled")
        expect(page.locator("#job-status")).to_have_text("running", timeout=15_000)
        # Then its output appears while it runs (the page polls each second)
        live_output = True
        try:
            expect(page.locator("#stdout-1")).to_contain_text("first line", timeout=LIVE_WAIT)
        except AssertionError:
            live_output = False  # said at the end: the cancel is still tested
        # When cancel is clicked, then the job is cancelled, on the page and on the server
        page.click("#cancel")
        expect(page.locator("#job-status")).to_have_text("cancelled")
        expect(page.locator(".flash")).to_contain_text(f"job {live.id} is cancelled")
        expect(page.locator("#cancel")).to_have_count(0)
        with web_cluster.client() as c:
            assert c.get(live.id).status is JobStatus.CANCELLED
    assert errors == []  # no script error, nothing the Content-Security-Policy refused
    assert live_output, (
        "the running job's output did not appear within 10 s: GetLogs of a running job "
        "returned nothing captured so far"
    )


def test_with_tokens_a_client_acts_and_a_viewer_only_looks(
    page: Page, token_cluster: Cluster, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    security = ChannelSecurity(token=CLIENT, plaintext_token=True)
    with Client(token_cluster.server.address, security=security) as c:
        (job,) = c.submit([JobSpec(argv=("true",), name="<script>x</script>", delay=3600)])
    errors = console_errors(page)
    with web_process(tmp_path, token_cluster.server.address, "--plaintext-token") as web:
        # A visitor is asked for a token; with a client token they see and use the buttons
        page.goto(f"{web.url}/jobs/{job.id}")
        expect(page.locator("h1")).to_have_text("Log in")
        page.fill("#token", CLIENT)
        page.click("#log-in")
        expect(page.locator("h1")).to_contain_text(f"Job {job.id} · <script>x</script>")
        page.click("#cancel")
        expect(page.locator("#job-status")).to_have_text("cancelled")
        expect(page.locator("#retry")).to_be_visible()
        page.click("#logout")
        expect(page.locator("h1")).to_have_text("Log in")
        # With a viewer token: the same job, no buttons, a read-only badge
        page.fill("#token", VIEWER)
        page.click("#log-in")
        page.goto(f"{web.url}/jobs/{job.id}")
        expect(page.locator("#read-only")).to_be_visible()
        expect(page.locator("#retry")).to_have_count(0)
        page.goto(f"{web.url}/queues")
        expect(page.locator("table#queues button")).to_have_count(0)
    assert errors == []
