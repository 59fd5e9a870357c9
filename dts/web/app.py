"""The dashboard as an ASGI application: its routes, and how errors become pages (a server's
refusal or absence is a page saying so, never a traceback)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dts.errors import DtsError
from dts.web import actions, pages
from dts.web.dashboard import Dashboard, NeedLogin
from dts.web.render import HERE, SecurityHeaders, render

log = logging.getLogger("dts.web")

# a dts error's code and the HTTP status of the page saying it
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 409,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "PERMISSION_DENIED": 403,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


async def need_login(request: Request, exc: Exception) -> Response:
    if request.headers.get("hx-request"):  # a live part: have htmx load the login page
        return Response(status_code=204, headers={"hx-redirect": "/login"})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":  # an action: back to the page it was on, after the login
        page = urlsplit(request.headers.get("referer", ""))
        same = page.netloc == request.url.netloc
        target = (page.path + (f"?{page.query}" if page.query else "")) if same else "/"
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


async def dts_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DtsError)
    dash: Dashboard = request.app.state.dash
    if exc.code == "UNAUTHENTICATED":
        if dash.login_required_known():  # the server no longer takes the login's token
            session, _ = dash.session(request)
            dash.forget_login(session)
            return await need_login(request, exc)
        dash.relearn_login()  # the servers now require tokens: the next page asks for one
    status = HTTP_STATUS.get(exc.code, 500)
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    return render(request, None, "error.html", status=status, error=exc)


async def health(request: Request) -> Response:
    return PlainTextResponse("ok\n")


def routes() -> list[Route | Mount]:
    post = ["POST"]
    return [
        Route("/", pages.overview),
        Route("/jobs", pages.jobs),
        Route("/jobs/{job_id:int}", pages.job),
        Route("/jobs/{job_id:int}/live", pages.job_live),
        Route("/jobs/{job_id:int}/cancel", actions.cancel, methods=post),
        Route("/jobs/{job_id:int}/retry", actions.retry, methods=post),
        Route("/workers", pages.workers),
        Route("/queues", pages.queues),
        Route("/queues/{name}/limit", actions.queue_limit, methods=post),
        Route("/queues/{name}/pause", actions.pause_queue, methods=post),
        Route("/queues/{name}/resume", actions.resume_queue, methods=post),
        Route("/schedules", pages.schedules),
        Route("/schedules/{name}/pause", actions.pause_schedule, methods=post),
        Route("/schedules/{name}/resume", actions.resume_schedule, methods=post),
        Route("/schedules/{name}/run", actions.run_schedule, methods=post),
        Route("/login", actions.login_page),
        Route("/login", actions.login, methods=post),
        Route("/logout", actions.logout, methods=post),
        Route("/healthz", health),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


def create_app(dash: Dashboard) -> Starlette:
    """The application over `dash` (closed when the application shuts down)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        dash.close()

    app = Starlette(
        routes=routes(),
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={NeedLogin: need_login, DtsError: dts_error},
        lifespan=lifespan,
    )
    app.state.dash = dash
    return app
