"""Templates (Jinja2, autoescaped: a job's output or name is text, never markup) and how a
response carries the session cookie and the security headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dts import __version__
from dts.web.dashboard import Visit
from dts.web.format import text, took, when
from dts.web.sessions import COOKIE, Session

HERE = Path(__file__).parent
ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every template, whatever its name
    undefined=jinja2.StrictUndefined,
)
ENV.filters.update(when=when, text=text, took=took)
ENV.globals["version"] = __version__

# Scripts and styles only from this origin (htmx is vendored), no framing, no sniffing.
HEADERS = {
    b"content-security-policy": b"default-src 'self'; img-src 'self' data:; "
    b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"same-origin",
}


def render(
    request: Request, visit: Visit | None, template: str, status: int = 200, **values: Any
) -> Response:
    """A page (or a part of one) of `template`, with what every page shows."""
    session = visit.session if visit else None
    flash = session.flash[:] if session else []
    if session:
        session.flash.clear()
    html = ENV.get_template(template).render(
        request=request,
        visit=visit,
        csrf=session.csrf if session else "",
        flash=flash,
        login=request.app.state.dash.login_required_known(),
        **values,
    )
    response = HTMLResponse(html, status_code=status)
    if visit and visit.new:
        set_cookie(request, response, visit.session)
    return response


def set_cookie(request: Request, response: Response, session: Session) -> None:
    """The session cookie: script cannot read it, no other site's page sends it, and over
    HTTPS (directly or behind a proxy that says so) it never goes over plain HTTP."""
    response.set_cookie(
        COOKIE,
        session.id,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


class SecurityHeaders:
    """ASGI middleware adding HEADERS to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS.items() if k not in have]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)
