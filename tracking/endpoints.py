"""``/t/o/`` (open pixel), ``/t/c/`` (click redirect) and ``/t/u/`` (unsubscribe), no auth.

``/t/o/`` takes a message token (or an older open token). ``/t/c/`` takes a link
token, ``<message token>.<index>.<mac>`` (``tracking.tokens``): its URL is entry
``index`` of the batch's link table, read from Redis once per batch and process
(``_LinkTables``); or an older click token with the URL sealed inside.

Any token that does not open (forged, altered, truncated, unknown key, expired,
another kind, an index out of its table, a table gone) gets the same plain 404
page: never a redirect, never a 5xx. A
machine's open or click (``tracking.machines``) is recorded with ``machine:
true``, not dropped. ``GET /t/u/`` shows a confirmation page with a button and
never unsubscribes; ``POST /t/u/`` with ``List-Unsubscribe=One-Click`` (RFC 8058:
what Gmail and Yahoo send, and what the page's button sends) unsubscribes, once:
repeating it changes nothing and records no second event. Neither sets a cookie
or redirects.
"""

from __future__ import annotations

import asyncio
import base64
import html
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import msgpack
from aiohttp import web

from core.ids import is_sandbox, split_message_id
from core.logs import address
from core.settings import TrustedProxies
from core.store import Store
from tracking.machines import CLICK_WINDOW_SECONDS, client_ip, machine_reason
from tracking.tokens import TokenError, Tokens

log = logging.getLogger(__name__)

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}}
button{{font-size:1rem;padding:.6rem 1.2rem;border:0;border-radius:6px;background:#222;color:#fff;cursor:pointer}}</style>
</head><body><h1>{title}</h1>{body}</body></html>
"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=_PAGE.format(title=html.escape(title), body=body),
        status=status,
        content_type="text/html",
        headers=NO_STORE,
    )


def _not_found() -> web.Response:
    return web.Response(text="Not found\n", status=404, content_type="text/plain", headers=NO_STORE)


def _location(url: str) -> str | None:
    """The URL for a Location header: as it was, non-ASCII percent-encoded; None if it has
    control characters (never sealed by Sluice, refused anyway)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return None
    return "".join(c if c.isascii() and c != " " else quote(c, safe="") for c in url)


class _GroupCommit:
    """Engagement events from concurrent requests written together: each request waits for
    its event to be in Redis (durable, as before), but a burst of opens costs one round
    trip instead of one each."""

    MAX_BATCH = 256

    def __init__(self) -> None:
        self.pending: list[tuple[str, bytes, float, asyncio.Future[None]]] = []
        self.flushing: asyncio.Task[None] | None = None

    async def record(
        self, store: Store, message_id: str, event: bytes, click_window: float
    ) -> None:
        done = asyncio.get_running_loop().create_future()
        self.pending.append((message_id, event, click_window, done))
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.create_task(self._flush(store))
        await done

    async def _flush(self, store: Store) -> None:
        while self.pending:
            batch, self.pending = self.pending[: self.MAX_BATCH], self.pending[self.MAX_BATCH :]
            try:
                await store.engage_many([(m, e, w) for m, e, w, _ in batch])
            except Exception as exc:  # every waiter hears of it
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for *_, done in batch:
                if not done.done():
                    done.set_result(None)


class _LinkTables:
    """Link tables of recent batches, per process: a burst of clicks on a campaign costs one
    Redis read, shared by the requests that arrive while it is on its way. A missing table is
    not kept (it is not expected to appear, and only a genuine message token gets here)."""

    SIZE = 1024

    def __init__(self) -> None:
        self.items: OrderedDict[str, list[str]] = OrderedDict()
        self.loading: dict[str, asyncio.Task[list[str] | None]] = {}

    async def get(self, store: Store, batch_id: str) -> list[str] | None:
        table = self.items.get(batch_id)
        if table is not None:
            self.items.move_to_end(batch_id)
            return table
        task = self.loading.get(batch_id)
        if task is None:
            task = asyncio.create_task(self._load(store, batch_id))
            self.loading[batch_id] = task
        return await asyncio.shield(task)  # one waiter cancelled does not cancel the read

    async def _load(self, store: Store, batch_id: str) -> list[str] | None:
        try:
            table = await store.link_table(batch_id)
        finally:
            del self.loading[batch_id]
        if table is not None:
            self.items[batch_id] = table
            if len(self.items) > self.SIZE:
                self.items.popitem(last=False)
        return table


class Tracking:
    def __init__(
        self,
        store_of: Callable[[web.Request], Store],
        tokens: Tokens,
        unsubscribe_scope: str,
        trusted_proxies: TrustedProxies,
    ) -> None:
        self.store_of = store_of
        self.tokens = tokens
        self.unsubscribe_scope = unsubscribe_scope
        self.trusted_proxies = trusted_proxies
        self.events = _GroupCommit()
        self.link_tables = _LinkTables()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/t/o/{token}", self.opened),
            web.get("/t/c/{token}", self.clicked),
            web.get("/t/u/{token}", self.unsubscribe_page),
            web.post("/t/u/{token}", self.unsubscribe),
        ]

    def _event(self, request: web.Request, kind: str, message_id: str, **fields: Any) -> bytes:
        ip = client_ip(request.remote, request.headers.get("X-Forwarded-For"), self.trusted_proxies)
        agent = request.headers.get("User-Agent", "")
        body: dict[str, Any] = {
            "type": kind,
            "timestamp": round(time.time(), 3),
            "message_id": message_id,
            **fields,
        }
        if kind != "unsubscribed":  # a one-click POST comes from the mailbox provider by design
            reason = machine_reason(request.method, agent, ip)
            body.update(machine=reason is not None, machine_reason=reason)
        body.update(user_agent=agent[:256] or None, ip=ip)
        return msgpack.packb(body)  # type: ignore[no-any-return]

    async def opened(self, request: web.Request) -> web.Response:
        try:
            found = self.tokens.open(request.match_info["token"])
        except TokenError:
            return _not_found()
        if found.kind not in ("message", "open"):
            return _not_found()
        if not is_sandbox(found.message_id):  # a sandbox message's opens count nowhere
            event = self._event(request, "opened", found.message_id)
            await self.events.record(self.store_of(request), found.message_id, event, 0.0)
        return web.Response(body=PIXEL, content_type="image/gif", headers=NO_STORE)

    async def clicked(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        store = self.store_of(request)
        try:
            if "." in token:
                found, index = self.tokens.open_link(token)
                url = await self._link_url(store, found.message_id, index)
            else:
                found = self.tokens.open(token, expect="click")
                url = found.url
        except TokenError:
            return _not_found()
        location = _location(url or "")
        if not location:
            return _not_found()
        if not is_sandbox(found.message_id):
            event = self._event(request, "clicked", found.message_id, url=url)
            await self.events.record(store, found.message_id, event, CLICK_WINDOW_SECONDS)
        return web.Response(status=302, headers={"Location": location, **NO_STORE})

    async def _link_url(self, store: Store, message_id: str, index: int) -> str | None:
        """Entry ``index`` of the link table of the message's batch; None if there is none."""
        split = split_message_id(message_id)
        if split is None:
            return None
        table = await self.link_tables.get(store, split[0])
        if table is None or index >= len(table):
            return None
        return table[index]

    def _unsubscribe_token(self, request: web.Request) -> tuple[str, str, str | None] | None:
        try:
            found = self.tokens.open(request.match_info["token"], expect="unsubscribe")
        except TokenError:
            return None
        email, _, category = (found.url or "").partition("\n")
        if not email:
            return None
        return found.message_id, email, category or None

    async def unsubscribe_page(self, request: web.Request) -> web.Response:
        target = self._unsubscribe_token(request)
        if target is None:
            return _not_found()
        _, email, category = target
        what = (
            f"{html.escape(category)} emails"
            if category and self.unsubscribe_scope == "category"
            else "our emails"
        )
        return _page(
            "Unsubscribe",
            f"<p>Stop sending {what} to <strong>{html.escape(email)}</strong>?</p>"
            '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>',
        )

    async def unsubscribe(self, request: web.Request) -> web.Response:
        target = self._unsubscribe_token(request)
        if target is None:
            return _not_found()
        if request.content_length is not None and request.content_length > 4096:
            return _page("Unsubscribe", "<p>The request was too large.</p>", 413)
        form = await request.post()
        if form.get("List-Unsubscribe") != "One-Click":
            return _page("Unsubscribe", "<p>Send <code>List-Unsubscribe=One-Click</code>.</p>", 400)
        message_id, email, category = target
        if is_sandbox(message_id):
            return _page(
                "Unsubscribe",
                "<p>This link is from a sandbox test message: nothing was unsubscribed.</p>",
            )
        scope = category if self.unsubscribe_scope == "category" else None
        store = self.store_of(request)
        existing = await store.suppressions.check(email, scope)
        if existing is None or existing.reason != "unsubscribe":
            await store.suppressions.add(
                email, reason="unsubscribe", source=f"one-click:{message_id}", category=scope
            )
            event = self._event(
                request,
                "unsubscribed",
                message_id,
                email=email,
                category=category,
                scope=scope or "global",
                method="one-click",
            )
            await store.engage(message_id, event)
            log.info(
                "message=%s %s unsubscribed (%s)", message_id, address(email), scope or "global"
            )
        done = f" from {html.escape(scope)} emails" if scope else ""
        return _page(
            "Unsubscribed", f"<p><strong>{html.escape(email)}</strong> is unsubscribed{done}.</p>"
        )
