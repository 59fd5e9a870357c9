"""The dashboard's actions (POST): log in and out, cancel and retry a job, pause, resume and
limit a queue, pause, resume and run a schedule. Each needs the session's CSRF token (403
without it), is refused to a read-only session, and redirects to the page it came from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from dts.client.api import Client
from dts.errors import DtsError, InvalidArgument
from dts.web.dashboard import Dashboard, NeedLogin, Visit
from dts.web.render import render, set_cookie
from dts.web.sessions import COOKIE, Access

Act = Callable[[Client, dict[str, Any], FormData], str]  # does it; says what it did


def _safe_next(target: str) -> str:
    """Only a path of this site (no //host, no scheme): a login cannot send elsewhere."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


async def _form(request: Request) -> tuple[FormData, bool]:
    """The form, and whether its CSRF token is the session's."""
    form = await request.form()
    dash: Dashboard = request.app.state.dash
    session = dash.sessions.get(request.cookies.get(COOKIE, ""))
    given = form.get("csrf", "")
    ok = session is not None and isinstance(given, str) and bool(given) and session.csrf_ok(given)
    return form, ok


def forbidden(why: str) -> Response:
    return PlainTextResponse(why, status_code=403)


async def login_page(request: Request) -> Response:
    dash: Dashboard = request.app.state.dash
    needed = await run_in_threadpool(dash.login_required)
    if not needed:
        return RedirectResponse("/", status_code=303)
    session, new = dash.session(request)
    visit = Visit(session, new, dash.shared, Access.NONE)
    nxt = _safe_next(request.query_params.get("next", "/"))
    return render(request, visit, "login.html", next=nxt, error="")


async def login(request: Request) -> Response:
    dash: Dashboard = request.app.state.dash
    form, ok = await _form(request)
    if not ok:
        return forbidden("missing or wrong CSRF token: reload the page")
    old, _ = dash.session(request)
    nxt = _safe_next(str(form.get("next", "/")))
    try:
        session = await run_in_threadpool(dash.log_in, old, str(form.get("token", "")))
    except DtsError as e:  # the page again, in the same session
        visit = Visit(old, False, dash.shared, Access.NONE)
        return render(request, visit, "login.html", status=401, next=nxt, error=_why(e))
    response = RedirectResponse(nxt, status_code=303)
    set_cookie(request, response, session)
    return response


async def logout(request: Request) -> Response:
    dash: Dashboard = request.app.state.dash
    _, ok = await _form(request)
    if not ok:
        return forbidden("missing or wrong CSRF token: reload the page")
    dash.sessions.drop(request.cookies.get(COOKIE, ""))
    response = RedirectResponse("/login" if dash.login_required_known() else "/", 303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _why(e: DtsError) -> str:
    if e.code == "UNAUTHENTICATED":
        return "the server does not know this token"
    return e.message


def action(act: Act, back: Callable[[dict[str, Any]], str]) -> Callable[..., Awaitable[Response]]:
    """A POST endpoint doing `act` with the visit's client, then back to `back(params)`."""

    async def endpoint(request: Request) -> Response:
        dash: Dashboard = request.app.state.dash
        form, ok = await _form(request)
        if not ok:
            return forbidden("missing or wrong CSRF token: reload the page")
        visit: Visit = await run_in_threadpool(dash.visit, request)
        if not visit.can_act:
            return forbidden("this login may only look (a viewer token)")
        params = dict(request.path_params)
        try:
            said = await run_in_threadpool(act, visit.client, params, form)
        except DtsError as e:
            if e.code == "UNAUTHENTICATED":
                dash.forget_login(visit.session)
                raise NeedLogin() from None
            said = f"refused: {e.message}"
        visit.session.flash.append(said)
        return RedirectResponse(back(params), status_code=303)

    return endpoint


def _cancel(c: Client, p: dict[str, Any], form: FormData) -> str:
    job = c.cancel(p["job_id"])
    return f"job {job.id} is {job.status}"


def _retry(c: Client, p: dict[str, Any], form: FormData) -> str:
    job = c.retry(p["job_id"])
    return f"job {job.id} is {job.status} again"


def _pause_queue(c: Client, p: dict[str, Any], form: FormData) -> str:
    c.pause_queue(p["name"])
    return f"queue {p['name']} paused: workers take no new job from it"


def _resume_queue(c: Client, p: dict[str, Any], form: FormData) -> str:
    c.resume_queue(p["name"])
    return f"queue {p['name']} resumed"


def _queue_limit(c: Client, p: dict[str, Any], form: FormData) -> str:
    raw = str(form.get("limit", "")).strip()
    try:
        limit = int(raw) if raw else None
    except ValueError:
        raise InvalidArgument(f"the limit must be a whole number, got {raw!r}") from None
    c.set_queue_limit(p["name"], limit)
    return f"queue {p['name']}: " + (
        f"at most {limit} running" if limit is not None else "no limit"
    )


def _pause_schedule(c: Client, p: dict[str, Any], form: FormData) -> str:
    c.pause_schedule(p["name"])
    return f"schedule {p['name']} paused"


def _resume_schedule(c: Client, p: dict[str, Any], form: FormData) -> str:
    c.resume_schedule(p["name"])
    return f"schedule {p['name']} resumed"


def _run_schedule(c: Client, p: dict[str, Any], form: FormData) -> str:
    job = c.run_schedule(p["name"])
    return f"schedule {p['name']} ran: job {job.id}"


def _to_job(p: dict[str, Any]) -> str:
    return f"/jobs/{p['job_id']}"


cancel = action(_cancel, _to_job)
retry = action(_retry, _to_job)
pause_queue = action(_pause_queue, lambda p: "/queues")
resume_queue = action(_resume_queue, lambda p: "/queues")
queue_limit = action(_queue_limit, lambda p: "/queues")
pause_schedule = action(_pause_schedule, lambda p: "/schedules")
resume_schedule = action(_resume_schedule, lambda p: "/schedules")
run_schedule = action(_run_schedule, lambda p: "/schedules")
