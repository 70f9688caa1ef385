"""Sluice in the test's own event loop: end-to-end tests without a process boundary.

The parts ``sluice serve`` assembles (the aiohttp app, a delivery ``Worker``, the inbound
SMTP server, the ``WebhookDispatcher``) started here on real loopback ports against the
test Redis, nothing mocked. The worker delivers in burst mode (``Worker.run_until_idle``):
it returns when nothing is ready or in flight, so a test looks at the outcome without
polling. A webhook receiver (a small aiohttp app) stands in for the user's endpoint.

``tests/conftest.py`` turns these into fixtures; whole ``sluice serve`` process groups
(``serve_factory``) stay for what needs processes: signals, kill -9, the embedded Redis,
the CLI.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiosmtplib
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from core.casts import parse_hostport
from core.clock import Clock
from core.datadir import load_or_create_secret
from core.settings import HostPort, Secret, Settings, WebhookSettings
from core.store import Store
from gateway.app import RUNNER_OPTIONS, create_app
from gateway.webhooks import WebhookDispatcher
from loadtests.harness import API_KEY
from mta.inbound import start_inbound
from mta.message_ids import MessageIds
from mta.verp import Verp
from mta.worker import Worker
from tests.bounce_reports import YAHOO_ARF

Client = TestClient[Any, Any]

DISPATCH_SECONDS = 15.0  # a webhook run's bound: batches arrive in well under a second
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


# --- the gateway's parts ------------------------------------------------------------------


@asynccontextmanager
async def running_api(
    settings: Settings, redis_url: str, *, port: int | None = None, clock: Clock = time.time
) -> AsyncIterator[Client]:
    """The real aiohttp app on ``port`` (0: any free one; by default the port of
    ``settings.http.listen``, where tracking links point), sending the test API key;
    ``clock``: the time of day it accepts at."""
    app = create_app(settings, redis_url, Secret(API_KEY), clock=clock)
    listen = settings.http.listen
    server = TestServer(
        app, host=listen.host, port=listen.port if port is None else port, **RUNNER_OPTIONS
    )
    client: Client = TestClient(server)
    await client.start_server()
    client.session.headers["Authorization"] = f"Bearer {API_KEY}"
    try:
        yield client
    finally:
        await client.close()


def verp_key(settings: Settings) -> Secret:
    """The data dir's VERP and Message-ID key, as ``sluice serve`` loads it."""
    key, _ = load_or_create_secret(settings.data_dir, "verp-key")
    return key


@asynccontextmanager
async def running_worker(
    settings: Settings, store: Store, name: str = "w0", *, clock: Clock = time.time
) -> AsyncIterator[Worker]:
    """A delivery worker on ``store``; deliver with ``await worker.run_until_idle()``.
    ``clock``: the time of day it delivers at."""
    worker = Worker(settings, store, name, verp_key(settings), clock=clock)
    try:
        yield worker
    finally:
        await worker.aclose()


@asynccontextmanager
async def running_inbound(
    settings: Settings, store: Store, *, clock: Clock = time.time
) -> AsyncIterator[HostPort]:
    """The inbound SMTP server (bounces, complaints) on ``settings.delivery.inbound``, set up
    as ``sluice serve`` does; ``clock``: the time of day it records reports at."""
    listen = settings.delivery.inbound
    assert listen is not None, "the settings turn the inbound server off"
    key = verp_key(settings)
    server = await start_inbound(
        store,
        Verp(key),
        listen,
        settings.delivery.ehlo_name,
        Verp(key, prefix="unsubscribe+"),
        MessageIds(key),
        settings.warmup,
        settings.delivery.soft_bounce_limit,
        clock,
    )
    try:
        yield listen
    finally:
        server.close()
        await server.wait_closed()


async def sleep_until(timestamp: float) -> None:
    """Until a moment the system named (a retry's ``next_attempt_at``, a ``send_at``), when
    ``Worker.run_until_idle`` finds that job due."""
    await asyncio.sleep(max(0.0, timestamp - time.time()) + 0.01)  # stored to the millisecond


# --- webhooks -------------------------------------------------------------------------------


class WebhookReceiver:
    """A webhook endpoint on loopback answering from a script (then 200 for ever)."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.calls: list[tuple[int, dict[str, str], bytes]] = []
        self.url = ""
        self._arrived = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.script.pop(0) if self.script else 200
        self.calls.append((status, dict(request.headers), body))
        async with self._arrived:
            self._arrived.notify_all()
        return web.Response(status=status, text="ok")

    def accepted(self) -> list[tuple[dict[str, str], bytes]]:
        return [(headers, body) for status, headers, body in self.calls if status == 200]

    def events(self) -> list[dict[str, Any]]:
        """Every event of the batches answered with a 200, in the order they came."""
        return [event for _, body in self.accepted() for event in json.loads(body)]

    async def wait_until(self, check: Callable[[], bool]) -> None:
        """Until ``check()`` holds, looked at after each request (bound it with a timeout)."""
        async with self._arrived:
            await self._arrived.wait_for(check)


@asynccontextmanager
async def webhook_receiver(script: list[int] | None = None) -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(script)
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}/hooks"
    try:
        yield receiver
    finally:
        await runner.cleanup()


@dataclass
class Webhooks:
    """A receiver and the webhook settings that point at it (signed, private target allowed,
    retries from 0.2 s, 10 events a batch)."""

    store: Store
    receiver: WebhookReceiver
    settings: WebhookSettings

    async def dispatch_until(self, check: Callable[[], bool]) -> None:
        """Run a ``WebhookDispatcher`` until ``check()`` holds for what the receiver got (at
        most ``DISPATCH_SECONDS``), then stop it as ``sluice serve`` does."""
        dispatcher = WebhookDispatcher(self.store, self.settings)
        task = asyncio.create_task(dispatcher.run(), name="webhooks")
        try:
            async with asyncio.timeout(DISPATCH_SECONDS):
                await self.receiver.wait_until(check)
        finally:
            dispatcher.stopping.set()
            await asyncio.wait_for(task, DISPATCH_SECONDS)


# --- the API, as a client uses it -------------------------------------------------------------


async def send(api: Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``POST /v1/messages``: the result per recipient (status, message id...)."""
    answer = await api.post("/v1/messages", json=body)
    assert answer.status == 202, await answer.text()
    results: list[dict[str, Any]] = (await answer.json())["results"]
    return results


async def get(api: Client, path: str) -> Any:
    answer = await api.get(path)
    assert answer.status == 200, (path, answer.status, await answer.text())
    return await answer.json()


async def message(api: Client, message_id: str) -> dict[str, Any]:
    """``GET /v1/messages/{id}``: its status and events."""
    found: dict[str, Any] = await get(api, f"/v1/messages/{message_id}")
    return found


async def suppressions(api: Client, email: str) -> list[dict[str, Any]]:
    """The suppression entries of ``email`` (none: 404)."""
    answer = await api.get(f"/v1/suppressions/{email}")
    if answer.status == 404:
        return []
    assert answer.status == 200, await answer.text()
    entries: list[dict[str, Any]] = (await answer.json())["suppressions"]
    return entries


async def report(inbound: HostPort | str, rcpt: str, raw: bytes) -> tuple[dict[str, Any], str]:
    """Send a report (a DSN, an ARF complaint) to Sluice's inbound SMTP server from the null
    sender, as a mailbox provider does: (refused recipients, the final reply's text)."""
    where = parse_hostport(inbound) if isinstance(inbound, str) else inbound
    async with aiosmtplib.SMTP(hostname=where.host, port=where.port, timeout=30) as smtp:
        errors, reply = await smtp.sendmail("", [rcpt], raw)
    return dict(errors), reply


async def complain(inbound: HostPort | str, message_id_header: str) -> tuple[dict[str, Any], str]:
    """A Yahoo feedback-loop complaint (ARF) about the message whose ``Message-ID`` header
    (angle brackets kept) is ``message_id_header``, to ``fbl@shop.example.com``."""
    raw = YAHOO_ARF.replace(b"<01HZX3J6Q3ARF@sluice.test>", message_id_header.strip().encode())
    return await report(inbound, "fbl@shop.example.com", raw)
