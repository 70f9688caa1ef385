"""The aiohttp application, assembled: middlewares, the API's routes, the tracking routes,
and the resources the handlers share (the Redis access layer, the prepare thread, the
intake, and SMTP submission, which takes the same intake), each opened by a cleanup
context so it is closed only if it was opened."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from core.clock import Clock
from core.datadir import load_or_create_secret
from core.metrics import ApiMetrics
from core.settings import Secret, Settings
from core.store import open_store
from gateway import api, console
from gateway.api.common import (
    API_KEY,
    CLOCK,
    INTAKE,
    METRICS,
    PREPARE,
    REDIS_URL,
    SANDBOX,
    SETTINGS,
    STORE,
)
from gateway.intake import Intake, Submitted
from gateway.middleware import MIDDLEWARES, RUNNER_OPTIONS
from gateway.rollups import Roller
from gateway.sandbox import Sandbox
from gateway.submission import start_submission, tls_context
from tracking.endpoints import Tracking
from tracking.tokens import Tokens, load_keys

log = logging.getLogger(__name__)

__all__ = ["RUNNER_OPTIONS", "create_app"]


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    wanted = app[SETTINGS].redis.min_replicas
    async with open_store(app[REDIS_URL], min_replicas=wanted) as store:
        if wanted and (connected := await store.connected_replicas()) < wanted:
            log.warning(
                "SLUICE_REDIS_MIN_REPLICAS is %d but the queue's master has %d replicas "
                "connected: every batch will be answered 503 until enough are",
                wanted,
                connected,
            )
        store.acceptor.pause_after_shards = app[SETTINGS].redis.test_pause_accept_after_shards
        app[STORE] = store
        yield


async def _prepare_ctx(app: web.Application) -> AsyncIterator[None]:
    """One thread validates and renders batches, one batch at a time: the event loop stays free
    for small requests (tracking, status) while a batch renders, and batches finish in arrival
    order instead of sharing the GIL and all finishing late (a measured p99 gain, see
    docs/performance.md)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-prepare") as executor:
        app[PREPARE] = executor
        metrics = app[METRICS]

        def accepted(submitted: Submitted, seconds: float) -> None:
            metrics.accepted(submitted.counts, seconds)

        verp_key, _ = load_or_create_secret(app[SETTINGS].data_dir, "verp-key")
        app[SANDBOX] = Sandbox(app[SETTINGS], app[STORE], verp_key, executor)
        app[INTAKE] = Intake(app[STORE], executor, app[SANDBOX], accepted, app[CLOCK])
        yield


async def _rollups_ctx(app: web.Application) -> AsyncIterator[None]:
    """The rollup counter (``gateway/rollups.py``): one per gateway, one of them counts."""
    roller = Roller(app[STORE], app[SETTINGS].stats)
    task = asyncio.create_task(roller.run(), name="rollups")
    yield
    roller.stopping.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


async def _submission_ctx(app: web.Application) -> AsyncIterator[None]:
    """SMTP submission (``--submission``), on the same intake as the API: the same prepare
    thread, policy and queue."""
    settings = app[SETTINGS]
    listen = settings.submission.listen
    if listen is None:
        yield
        return
    context = tls_context(settings, settings.submission.cert, settings.submission.key)
    server = await start_submission(
        app[INTAKE],
        settings,
        app[API_KEY],
        listen,
        context,
        insecure_loopback=settings.submission.insecure_loopback,
    )
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


def create_app(
    settings: Settings, redis_url: str, api_key: Secret, *, clock: Clock = time.time
) -> web.Application:
    """``clock``: the time of day batches are accepted at (``core.clock``)."""
    app = web.Application(
        middlewares=[*MIDDLEWARES, console.console_middleware],
        client_max_size=settings.http.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[API_KEY] = api_key
    app[REDIS_URL] = redis_url
    app[METRICS] = ApiMetrics()  # in files when serve chose multiprocess mode (core.metrics)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_prepare_ctx)
    app.cleanup_ctx.append(_submission_ctx)
    app.cleanup_ctx.append(_rollups_ctx)
    app.router.add_routes(api.routes())
    console.install(app, api_key)
    tracking = Tracking(
        lambda request: request.app[STORE],
        Tokens(load_keys(settings.data_dir), max_age_days=settings.tracking.token_max_age_days),
        settings.tracking.unsubscribe_scope,
        settings.http.trusted_proxies,
    )
    app.router.add_routes(tracking.routes())
    return app
