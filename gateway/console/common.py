"""What every console page shares: the templates (Jinja2, autoescaped), the middleware that
keeps signed-out browsers on the sign-in page and checks every action's CSRF token and
origin, error pages, and the filters pages use to show numbers."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from core.errors import ClientError
from core.store import REDIS_ERRORS, StoreError
from gateway.console.session import (
    COOKIE,
    CSRF_FIELD,
    Sessions,
    check_action,
    secure_headers,
)
from gateway.middleware import Handler

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SESSIONS = web.AppKey("console_sessions", Sessions)
NONCE = web.RequestKey("console_nonce", str)
OPEN_PATHS = ("/ui/login", "/ui/static/")


NONE = "\N{EN DASH}"  # no value


def percent(value: float | None, digits: int = 1) -> str:
    if value is None:
        return NONE
    return f"{value * 100:.{digits}f}%"


def age(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    seconds = max(0.0, float(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def moment(stamp: float | str | None) -> str:
    if stamp is None or stamp == "":
        return NONE
    if isinstance(stamp, str):
        return stamp.replace("T", " ").replace("+00:00", "Z")
    return datetime.fromtimestamp(float(stamp), UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def count(value: int | float | None) -> str:
    return NONE if value is None else f"{value:,.0f}"


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(percent=percent, age=age, moment=moment, count=count)
ENV.filters["urlpart"] = lambda text: quote(str(text), safe="")


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """A page: the template with the session's CSRF token and the current path."""
    nonce = request.get(NONCE)
    csrf = request.app[SESSIONS].csrf(nonce) if nonce else ""
    body = ENV.get_template(template).render(
        csrf=csrf, csrf_field=CSRF_FIELD, path=request.path, now=time.time(), **context
    )
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def local_path(value: str | None, fallback: str = "/ui/") -> str:
    """A redirect target that stays in the console (no ``//host``, no scheme, no CR/LF)."""
    if (
        not value
        or not value.startswith("/ui/")
        or value.startswith("//")
        or any(c in value for c in "\r\n\\")
        or len(value) > 500
    ):
        return fallback
    return value


def see_other(location: str) -> web.Response:
    """A redirect after a form or to the sign-in page (303: the browser GETs it)."""
    return web.Response(status=303, headers={"Location": location})


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On ``/ui/``: signed out, every page is the sign-in page (a redirect, or 401 for an
    action); every POST checks its CSRF token and origin; a refusal, Redis being away or an
    unexpected failure becomes an error page (logged); every answer gets the console's
    security headers."""
    if not request.path.startswith("/ui"):
        return await handler(request)
    if request.path == "/ui":
        raise web.HTTPFound("/ui/")
    sessions = request.app[SESSIONS]
    try:
        if not request.path.startswith(OPEN_PATHS):
            nonce = sessions.valid(request.cookies.get(COOKIE))
            if nonce is None:
                if request.method == "GET":
                    target = "/ui/login?next=" + quote(request.path_qs, safe="/")
                    response: web.StreamResponse = see_other(target)
                    secure_headers(response)
                    return response
                return _error(request, 401, "Signed out", "sign in again, then repeat the action")
            request[NONCE] = nonce
            if request.method == "POST":
                form = await request.post()
                token = form.get(CSRF_FIELD)
                check_action(request, token if isinstance(token, str) else None, nonce, sessions)
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            secure_headers(exc)
            raise
        response = _error(request, exc.status, exc.reason, "")
    except ClientError as exc:
        response = _error(request, exc.status, exc.detail, "")
    except (StoreError, *REDIS_ERRORS) as exc:
        log.error("console: store unavailable: %s", exc)
        response = _error(request, 503, "Redis is unavailable", "reload in a few seconds")
    except Exception:
        log.exception("console: unexpected error on %s %s", request.method, request.path)
        response = _error(request, 500, "Unexpected error", "it was logged")
    if "Content-Security-Policy" not in response.headers:
        secure_headers(response)
    return response


def _error(request: web.Request, status: int, message: str, hint: str) -> web.Response:
    return render(request, "error.html", status, status_code=status, message=message, hint=hint)
