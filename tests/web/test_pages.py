"""The dashboard's pages and actions through Starlette's TestClient, against a real dts-server
and worker: what each page shows, filters and paging, escaping, CSRF, errors."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from dts.domain import JobSpec, JobStatus
from dts.web.app import create_app
from tests.conftest import Cluster
from tests.harness import free_port, wait_until
from tests.web.conftest import csrf_of, dashboard


def finished(c: Cluster, *ids: int) -> None:
    with c.client() as client:
        for job_id in ids:
            client.wait(job_id, timeout=30)


def test_overview_counts_chart_and_workers(web: TestClient, web_cluster: Cluster) -> None:
    # Given a job that succeeded and one that failed
    with web_cluster.client() as c:
        ok, bad = c.submit(
            [JobSpec(argv=("true",), name="ok"), JobSpec(argv=("false",), name="bad")]
        )
    finished(web_cluster, ok.id, bad.id)
    # When the overview is opened
    page = web.get("/")
    # Then it counts them, by status and by queue, charts the hour, and counts the worker
    assert page.status_code == 200
    html = page.text
    assert int(re.search(r'id="total-succeeded">(\d+)<', html).group(1)) >= 1  # type: ignore[union-attr]
    assert int(re.search(r'id="total-failed">(\d+)<', html).group(1)) >= 1  # type: ignore[union-attr]
    assert 'id="workers-up">1<' in html
    assert '<svg class="chart"' in html and 'class="ok"' in html and 'class="bad"' in html
    assert ">default</a>" in html
    assert int(re.search(r'id="hour-failed">(\d+)<', html).group(1)) >= 1  # type: ignore[union-attr]
    # And every response carries the security headers
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_jobs_filters_and_keyset_pages(web: TestClient, web_cluster: Cluster) -> None:
    # Given five delayed jobs named page-test in queue "pg", and others
    with web_cluster.client() as c:
        mine = c.submit([JobSpec(argv=("true",), queue="pg", name="page-test", delay=3600)] * 5)
        c.submit([JobSpec(argv=("true",), queue="pg", name="other", delay=3600)])
    ids = sorted((j.id for j in mine), reverse=True)

    def listed(html: str) -> list[int]:
        return [int(x) for x in re.findall(r'<tr class="job" data-id="(\d+)"', html)]

    # When filtered by name, two a page, then the pages go back through all five, newest first
    page = web.get("/jobs", params={"name": "page-test", "limit": "2"})
    assert listed(page.text) == ids[:2]
    seen = listed(page.text)
    while 'id="older"' in page.text:
        older = re.search(r'href="(/jobs\?[^"]+)" id="older"', page.text).group(1)  # type: ignore[union-attr]
        assert "before=" in older and "offset" not in older
        page = web.get(older.replace("&amp;", "&"))
        seen += listed(page.text)
    assert seen == ids
    # And the other filters narrow too
    assert listed(web.get("/jobs", params={"queue": "pg", "status": "failed"}).text) == []
    assert set(ids) <= set(listed(web.get("/jobs?queue=pg&status=scheduled").text))
    assert (
        listed(web.get("/jobs", params={"name": "page-test", "until": "2000-01-01 00:00"}).text)
        == []
    )
    since = listed(web.get("/jobs", params={"name": "page-test", "since": "2000-01-01T00:00"}).text)
    assert since == ids
    # And a filter that makes no sense is a 400 page saying why, not a traceback
    bad = web.get("/jobs", params={"since": "yesterday-ish"})
    assert bad.status_code == 400 and "since must be a UTC time" in bad.text
    assert web.get("/jobs?status=nope").status_code == 400
    assert web.get("/jobs?before=-1").status_code == 400


def test_a_job_page_shows_everything_escaped(web: TestClient, web_cluster: Cluster) -> None:
    # Given a job (with a hostile name) that prints markup, fails once, then ends
    script = "<script>alert(1)</script>"
    with web_cluster.client() as c:
        (job,) = c.submit(
            [
                JobSpec(
                    argv=(f"printf '%s' '{script}'; echo oops >&2; exit 3",),
                    shell=True,
                    name="<b>bold</b>",
                    env=(("SECRET_NAME", "v"),),
                    max_retries=1,
                    backoff=0.1,
                    timeout=30,
                )
            ]
        )
    finished(web_cluster, job.id)
    # When its page is opened
    page = web.get(f"/jobs/{job.id}")
    html = page.text
    # Then the output and name are text, never markup
    assert page.status_code == 200
    assert script not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    # And it shows each attempt with its outcome, exit code and output, and what it asked for
    assert 'id="attempt-1"' in html and 'id="attempt-2"' in html
    assert "exit 3" in html and "oops" in html
    assert "SECRET_NAME" in html and ">v<" not in html  # env names, not values
    assert 'id="job-status">failed<' in html
    assert 'id="retry"' in html and 'id="cancel"' not in html
    # And it stops polling once the job is final
    assert "hx-trigger" not in html
    # And a job that does not exist is a 404 page
    missing = web.get("/jobs/999999999")
    assert missing.status_code == 404 and "no job with id 999999999" in missing.text


def test_a_running_job_polls_its_live_part(web: TestClient, web_cluster: Cluster) -> None:
    # Given a running job
    with web_cluster.client() as c:
        (job,) = c.submit([JobSpec(argv=("echo started; sleep 30",), shell=True)])
        wait_until(lambda: c.get(job.id).status is JobStatus.RUNNING, 20, what="running")
    # Then its page polls its live part each second, and the live part is that part alone
    page = web.get(f"/jobs/{job.id}")
    assert f'hx-get="/jobs/{job.id}/live" hx-trigger="every 1s"' in page.text
    live = web.get(f"/jobs/{job.id}/live")
    assert live.text.lstrip().startswith('<section id="live"') and "<html" not in live.text
    assert 'id="cancel"' in live.text
    # When cancel is pressed (with the page's CSRF token), then the job is cancelled
    done = web.post(f"/jobs/{job.id}/cancel", data={"csrf": csrf_of(page.text)})
    assert done.status_code == 200 and f"job {job.id} is cancelled" in done.text
    with web_cluster.client() as c:
        assert c.get(job.id).status is JobStatus.CANCELLED


def test_actions_need_the_csrf_token(web: TestClient, web_cluster: Cluster) -> None:
    # Given a job waiting to run, and a visitor with a session
    with web_cluster.client() as c:
        (job,) = c.submit([JobSpec(argv=("true",), delay=3600)])
    page = web.get(f"/jobs/{job.id}")
    # When cancel is posted without the token, or with another, then it is refused, 403
    assert web.post(f"/jobs/{job.id}/cancel").status_code == 403
    assert web.post(f"/jobs/{job.id}/cancel", data={"csrf": "x" * 43}).status_code == 403
    # And another visitor's token does not do either
    other = TestClient(web.app)  # no `with`: its lifespan's end would close the dashboard
    theirs = csrf_of(other.get(f"/jobs/{job.id}").text)
    assert web.post(f"/jobs/{job.id}/cancel", data={"csrf": theirs}).status_code == 403
    with web_cluster.client() as c:
        assert c.get(job.id).status is JobStatus.SCHEDULED
    # And with its own token it acts, and retry brings the job back
    token = csrf_of(page.text)
    assert "is cancelled" in web.post(f"/jobs/{job.id}/cancel", data={"csrf": token}).text
    again = web.post(f"/jobs/{job.id}/retry", data={"csrf": token})
    assert f"job {job.id} is" in again.text and "again" in again.text
    # And an action the server refuses says why on the page
    said = web.post(f"/jobs/{job.id}/retry", data={"csrf": token}).text
    assert "refused:" in said and "only failed or cancelled jobs" in said


def test_queues_pause_resume_and_limit(web: TestClient, web_cluster: Cluster) -> None:
    with web_cluster.client() as c:
        c.submit([JobSpec(argv=("true",), queue="qctl", delay=3600)])
    page = web.get("/queues")
    assert 'data-queue="qctl"' in page.text
    token = csrf_of(page.text)
    assert "queue qctl paused" in web.post("/queues/qctl/pause", data={"csrf": token}).text
    assert (
        "at most 3 running"
        in web.post("/queues/qctl/limit", data={"csrf": token, "limit": "3"}).text
    )
    with web_cluster.client() as c:
        (q,) = [q for q in c.queues() if q.name == "qctl"]
        assert q.paused and q.limit == 3
    assert "queue qctl resumed" in web.post("/queues/qctl/resume", data={"csrf": token}).text
    assert "no limit" in web.post("/queues/qctl/limit", data={"csrf": token, "limit": ""}).text
    bad = web.post("/queues/qctl/limit", data={"csrf": token, "limit": "many"})
    assert "refused: the limit must be a whole number" in bad.text
    assert web.post("/queues/qctl/explode", data={"csrf": token}).status_code == 404
    with web_cluster.client() as c:
        (q,) = [q for q in c.queues() if q.name == "qctl"]
        assert not q.paused and q.limit is None


def test_schedules_pause_resume_and_run_now(web: TestClient, web_cluster: Cluster) -> None:
    added = web_cluster.cli("schedule", "add", "web-nightly", "--every", "1d", "--", "true")
    assert added.returncode == 0, added.stderr
    page = web.get("/schedules")
    assert 'data-schedule="web-nightly"' in page.text and "every 1d" in page.text
    token = csrf_of(page.text)
    said = web.post("/schedules/web-nightly/pause", data={"csrf": token}).text
    assert "schedule web-nightly paused" in said and ">paused<" in said
    assert "resumed" in web.post("/schedules/web-nightly/resume", data={"csrf": token}).text
    ran = web.post("/schedules/web-nightly/run", data={"csrf": token}).text
    job_id = int(re.search(r"schedule web-nightly ran: job (\d+)", ran).group(1))  # type: ignore[union-attr]
    with web_cluster.client() as c:
        assert c.get(job_id).schedule == "web-nightly"


def test_workers_page(web: TestClient, web_cluster: Cluster) -> None:
    page = web.get("/workers")
    assert page.status_code == 200 and "<td>w1</td>" in page.text and 'class="up"' in page.text


def test_an_unreachable_server_is_a_page_saying_so() -> None:
    # Given a dashboard for a server that is not there
    with TestClient(create_app(dashboard(f"127.0.0.1:{free_port()}", rpc_timeout=2.0))) as tc:
        page = tc.get("/jobs")
    # Then the page says the server is unavailable: a 503, no traceback
    assert page.status_code == 503
    assert "Unavailable" in page.text and "Traceback" not in page.text


@pytest.mark.parametrize("path", ["/", "/jobs", "/workers", "/queues", "/schedules"])
def test_static_files_and_pages_load(web: TestClient, path: str) -> None:
    assert web.get(path).status_code == 200
    htmx = web.get("/static/htmx.min.js")
    assert htmx.status_code == 200 and "htmx" in htmx.text[:200]


def test_the_servers_new_reads_check_their_arguments(web_cluster: Cluster) -> None:
    from dts.errors import InvalidArgument

    with web_cluster.client() as c:
        buckets = c.activity(0)  # 0: the last hour
        assert len(buckets) == 60 and buckets[-1].start - buckets[0].start == 59 * 60
        assert len(c.activity(1440)) == 1440
        for bad in (-1, 1441):
            with pytest.raises(InvalidArgument, match="minutes must be between 1 and 1440"):
                c.activity(bad)
        with pytest.raises(InvalidArgument, match="before_id must not be negative"):
            c.list_jobs(before_id=-1)


def test_several_servers_one_of_them_down(web_cluster: Cluster) -> None:
    # Given a dashboard for two servers, the first of which is not there
    both = f"127.0.0.1:{free_port()},{web_cluster.server.address}"
    with TestClient(create_app(dashboard(both, rpc_timeout=3.0))) as tc:
        # Then its pages come from the other
        page = tc.get("/workers")
        assert page.status_code == 200 and "<td>w1</td>" in page.text
