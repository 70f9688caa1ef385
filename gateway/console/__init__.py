"""The console at ``/ui/``: a server-rendered web page for the people who run Sluice, on the
gateway's own listener. No build step and no framework: Jinja2 templates
(``templates/``), one stylesheet and one small script (``static/``), SVG charts drawn on
the server (``charts``).

| module | holds |
|---|---|
| ``session`` | sign-in with the API key, the session cookie, CSRF tokens, security headers |
| ``common`` | the templates, the middleware every ``/ui/`` request passes, number formats |
| ``pages`` | the pages (GET), each answering one question |
| ``actions`` | sign-in/out and the changes made from the pages (POST) |
| ``charts`` | SVG line and bar charts with axes, units and a legend |

``docs/console.md`` shows each page.
"""

from __future__ import annotations

from aiohttp import web

from core.settings import Secret
from gateway.console import actions, pages
from gateway.console.common import HERE, SESSIONS, console_middleware
from gateway.console.session import Sessions

__all__ = ["console_middleware", "install"]


def install(app: web.Application, api_key: Secret) -> None:
    """The console's routes and static files on ``app`` (its middleware is in the app's list)."""
    app[SESSIONS] = Sessions(api_key)
    app.router.add_routes(ROUTES)
    app.router.add_static("/ui/static/", HERE / "static", append_version=False)


ROUTES = [
    web.get("/ui/login", actions.login_page),
    web.post("/ui/login", actions.login),
    web.post("/ui/logout", actions.logout),
    web.get("/ui/", pages.overview),
    web.get("/ui/providers", pages.providers),
    web.get("/ui/warmup", pages.warmup),
    web.post("/ui/warmup/{ip}/{action:pause|resume}", actions.warmup_pause),
    web.get("/ui/campaigns", pages.campaigns),
    web.get("/ui/campaigns/{campaign}", pages.campaign),
    web.post("/ui/campaigns/{campaign}/{action:pause|resume}", actions.campaign_pause),
    web.get("/ui/queue", pages.queue),
    web.post("/ui/queue", actions.queue_action),
    web.get("/ui/live", pages.live),
    web.get("/ui/live/stream", pages.live_stream),
    web.get("/ui/messages", pages.messages),
    web.get("/ui/suppressions", pages.suppressions),
    web.get("/ui/suppressions.csv", actions.suppression_export),
    web.post("/ui/suppressions/add", actions.suppression_add),
    web.post("/ui/suppressions/remove", actions.suppression_remove),
    web.post("/ui/suppressions/import", actions.suppression_import),
    web.get("/ui/policy", pages.policy),
    web.post("/ui/policy", actions.policy_save),
    web.get("/ui/checklist", pages.checklist),
    web.get("/ui/sandbox", pages.sandbox_list),
    web.get("/ui/sandbox/{message_id}", pages.sandbox_message),
    web.get("/ui/sandbox/{message_id}/preview", pages.sandbox_preview),
]
