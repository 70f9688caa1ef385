"""Signing in to the console, and what every console request must carry.

The API key is the password: ``POST /ui/login`` with it sets a session cookie, and nothing
else of the console answers without one (a signed-out browser is sent to the sign-in page).
The cookie is stateless: ``<expires>.<nonce>.<mac>``, the MAC keyed by a key derived from
the API key, so changing the API key signs every browser out. It is HttpOnly, SameSite=Strict,
limited to ``/ui/``, and Secure when the console is served over https.

Every action (a POST) carries a CSRF token derived from the session's nonce in a hidden
field, and must come from the console's own origin (``Origin``, and ``Sec-Fetch-Site`` where
the browser sends it). Every answer carries a Content-Security-Policy that allows no inline
script and no other origin, and forbids framing except of the sandbox's message preview by
the console itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from aiohttp import web

from core.errors import Forbidden
from core.settings import Secret

COOKIE = "sluice_console"
SESSION_SECONDS = 12 * 3600
CSRF_FIELD = "csrf"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)


class Sessions:
    def __init__(self, api_key: Secret) -> None:
        self._api_key = api_key.reveal().encode()
        self._key = hmac.new(self._api_key, b"sluice console session v1", hashlib.sha256).digest()

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def key_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self._api_key)

    def new(self, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + SESSION_SECONDS)
        head = f"{expires}.{secrets.token_hex(16)}"
        return f"{head}.{self._mac(head)}"

    def valid(self, cookie: str | None, now: float | None = None) -> str | None:
        """The session's nonce, or None for a missing, forged or expired cookie."""
        if not cookie or len(cookie) > 200:
            return None
        expires, _, rest = cookie.partition(".")
        nonce, _, mac = rest.partition(".")
        if not (cookie.isascii() and expires.isdigit() and nonce and mac):
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(f"{expires}.{nonce}").encode()):
            return None
        if int(expires) < (time.time() if now is None else now):
            return None
        return nonce

    def csrf(self, nonce: str) -> str:
        return self._mac(f"csrf.{nonce}")[:40]


def same_origin(request: web.Request) -> bool:
    """The request came from a page of this console: the browser's ``Origin`` (sent on every
    POST by current browsers) names this host, and ``Sec-Fetch-Site`` does not say another
    site. A request without either (a script, curl) still needs the cookie and the token."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin in (f"{request.scheme}://{request.host}", f"https://{request.host}")


def set_cookie(response: web.StreamResponse, request: web.Request, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path="/ui/",
        httponly=True,
        secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
        samesite="Strict",
    )


def check_action(
    request: web.Request, form_token: str | None, nonce: str, sessions: Sessions
) -> None:
    """An action's CSRF token and origin, or ``Forbidden``."""
    if not same_origin(request):
        raise Forbidden("refused: this action did not come from the console's own pages")
    given = (form_token or "").encode("utf-8", "surrogateescape")
    if not given or not hmac.compare_digest(given, sessions.csrf(nonce).encode()):
        raise Forbidden("refused: the form's CSRF token is missing or wrong; reload the page")


def secure_headers(response: web.StreamResponse, *, csp: str = CSP) -> None:
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = (
        "DENY" if "frame-ancestors 'none'" in csp else "SAMEORIGIN"
    )
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
