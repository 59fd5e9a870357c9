"""The dashboard in front of a server that requires tokens: login, the session cookie, the
viewer's read-only view, logout; and without tokens, no login at all."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dts.channel import ChannelSecurity
from dts.client import Client
from dts.domain import JobSpec, JobStatus
from dts.web.app import create_app
from dts.web.config import WebConfig
from dts.web.dashboard import Dashboard
from tests.conftest import Cluster, make_cluster
from tests.web.conftest import CLIENT, VIEWER, WORKER, csrf_of, dashboard, write_secret


@pytest.fixture
def app(token_cluster: Cluster) -> Iterator[TestClient]:
    with TestClient(create_app(dashboard(token_cluster.server.address))) as tc:
        yield tc


def as_client(c: Cluster) -> Client:
    return Client(c.server.address, security=ChannelSecurity(token=CLIENT, plaintext_token=True))


def log_in(tc: TestClient, token: str) -> str:
    page = tc.get("/login")
    return tc.post("/login", data={"csrf": csrf_of(page.text), "token": token}).text


def test_a_page_asks_for_a_login_first(app: TestClient) -> None:
    # Given a server that requires tokens, then a page sends to the login, remembering it
    page = app.get("/jobs?status=running", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=/jobs%3Fstatus%3Drunning"
    login = app.get("/login")
    assert 'name="token"' in login.text and 'type="password"' in login.text
    # A live part asked for by htmx has htmx go to the login page instead
    live = app.get("/jobs/1/live", headers={"HX-Request": "true"}, follow_redirects=False)
    assert live.headers.get("hx-redirect") == "/login"


def test_a_wrong_token_a_worker_token_or_no_csrf_is_refused(app: TestClient) -> None:
    said = app.post("/login", data={"csrf": csrf_of(app.get("/login").text), "token": "x" * 30})
    assert said.status_code == 401 and "the server does not know this token" in said.text
    said = app.post("/login", data={"csrf": csrf_of(said.text), "token": WORKER})
    assert said.status_code == 401 and "may not read jobs" in said.text
    assert app.post("/login", data={"token": CLIENT}).status_code == 403  # no CSRF token
    assert app.get("/", follow_redirects=False).status_code == 303  # still not logged in


def test_a_client_token_logs_in_and_acts(app: TestClient, token_cluster: Cluster) -> None:
    with as_client(token_cluster) as c:
        (job,) = c.submit([JobSpec(argv=("true",), delay=3600)])
    form = app.get("/login").text
    before = app.cookies.get("dts_session")
    page = app.post(
        "/login",
        data={"csrf": csrf_of(form), "token": CLIENT, "next": f"/jobs/{job.id}"},
        follow_redirects=False,
    )
    # The session cookie: a new random id (not the token), HttpOnly, SameSite=Strict
    cookie = page.headers["set-cookie"]
    assert page.status_code == 303 and page.headers["location"] == f"/jobs/{job.id}"
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert "Secure" not in cookie  # plain HTTP here; see the HTTPS test
    assert CLIENT not in cookie and app.cookies.get("dts_session") != before
    html = app.get(f"/jobs/{job.id}").text
    assert 'id="cancel"' in html and 'id="logout"' in html and "read-only" not in html
    said = app.post(f"/jobs/{job.id}/cancel", data={"csrf": csrf_of(html)}).text
    assert f"job {job.id} is cancelled" in said
    # Logout forgets the session: the next page asks for a login again
    app.post("/logout", data={"csrf": csrf_of(said)})
    assert app.get("/", follow_redirects=False).status_code == 303
    # And an action posted without a login (a session of the login page) is not done: the
    # login comes first, and then the page the action was posted from
    posted = app.post(
        f"/jobs/{job.id}/retry",
        data={"csrf": csrf_of(app.get("/login").text)},
        headers={"referer": f"http://testserver/jobs/{job.id}"},
        follow_redirects=False,
    )
    assert posted.status_code == 303
    assert posted.headers["location"] == f"/login?next=/jobs/{job.id}"


def test_a_viewer_sees_no_buttons_and_cannot_act(app: TestClient, token_cluster: Cluster) -> None:
    with as_client(token_cluster) as c:
        (job,) = c.submit([JobSpec(argv=("true",), delay=3600)])
    assert app.get(f"/jobs/{job.id}", follow_redirects=False).status_code == 303
    log_in(app, VIEWER)
    html = app.get(f"/jobs/{job.id}").text
    assert 'id="read-only"' in html and 'id="cancel"' not in html
    for path in ("/queues", "/schedules"):
        assert "<button" not in re.sub(
            r'<form method="post" action="/logout".*?</form>', "", app.get(path).text, flags=re.S
        )
    # Posting the action anyway (a crafted form) is refused, and the job is untouched
    refused = app.post(f"/jobs/{job.id}/cancel", data={"csrf": csrf_of(html)})
    assert refused.status_code == 403
    with as_client(token_cluster) as c:
        assert c.get(job.id).status is JobStatus.SCHEDULED


def test_over_https_the_cookie_is_secure(token_cluster: Cluster) -> None:
    dash = dashboard(token_cluster.server.address)
    with TestClient(create_app(dash), base_url="https://testserver") as tc:
        page = tc.get("/login")
        assert "Secure" in page.headers["set-cookie"]


def test_without_tokens_nobody_logs_in(web: TestClient) -> None:
    assert web.get("/", follow_redirects=False).status_code == 200
    assert web.get("/login", follow_redirects=False).headers["location"] == "/"
    assert 'id="logout"' not in web.get("/").text


def test_a_token_file_serves_every_visitor_without_login(token_cluster: Cluster) -> None:
    # Given dts-web --token-file with a viewer token
    security = ChannelSecurity(token=VIEWER, plaintext_token=True)
    shared = Dashboard(WebConfig(server=token_cluster.server.address, security=security))
    # Then every visitor reads as that token, without a login, and sees no buttons
    with TestClient(create_app(shared)) as tc:
        page = tc.get("/jobs", follow_redirects=False)
        assert page.status_code == 200 and 'id="read-only"' in page.text


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil"])
def test_a_login_never_sends_to_another_site(app: TestClient, target: str) -> None:
    form = app.get("/login").text
    page = app.post(
        "/login",
        data={"csrf": csrf_of(form), "token": VIEWER, "next": target},
        follow_redirects=False,
    )
    assert page.status_code == 303 and page.headers["location"] == "/"


def test_a_server_that_turns_tokens_on_gets_a_login_page(tmp_path: Path) -> None:
    # Given a dashboard in front of a server without tokens
    c = make_cluster(tmp_path, 0)
    try:
        with TestClient(create_app(dashboard(c.server.address))) as tc:
            assert tc.get("/jobs", follow_redirects=False).status_code == 200
            # When the server restarts requiring tokens
            tokens = write_secret(tmp_path / "tokens", f"client {CLIENT}\n")
            c.restart_server("--tokens-file", tokens, "--plaintext-tokens")
            # Then the next page says so, and the one after asks for a login, which works
            refused = tc.get("/jobs", follow_redirects=False)
            assert refused.status_code == 401 and "a token is required" in refused.text
            assert tc.get("/jobs", follow_redirects=False).status_code == 303
            assert 'id="logout"' in log_in(tc, CLIENT)
    finally:
        c.stop()
