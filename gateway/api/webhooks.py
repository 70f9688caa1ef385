"""``/v1/webhooks``: the webhook dispatcher's state, its dead letters, replaying them, and
enabling the endpoint again after a 410 (the dispatcher: ``gateway.webhooks``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from core.store import WebhookBatch, WebhookState
from gateway.api.common import SETTINGS, STORE, json_response
from gateway.api.openapi_parts import AUTH


def state_json(url: str | None, state: WebhookState) -> dict[str, Any]:
    pending = state.retrying
    return {
        "url": url,
        "disabled": state.disabled,
        "cursor": state.cursor,
        "delivered_batches": state.delivered_batches,
        "last_error": state.last_error,
        "retrying": None
        if pending is None
        else {
            "id": pending.id,
            "events": pending.count,
            "attempts": pending.attempts,
            "next_attempt_at": round(pending.due, 3) or None,
        },
        "dead_letters": state.dead_letters,
        "replay_queued": state.replay_queued,
    }


def dead_letter_json(batch: WebhookBatch) -> dict[str, Any]:
    return {
        "id": batch.id,
        "events": batch.count,
        "attempts": batch.attempts,
        "first_attempt_at": round(batch.first, 3),
        "error": batch.error,
    }


async def get_webhooks(request: web.Request) -> web.Response:
    url = request.app[SETTINGS].webhooks.url
    return json_response(state_json(url, await request.app[STORE].webhooks.state()))


async def get_dead_letters(request: web.Request) -> web.Response:
    letters = await request.app[STORE].webhooks.dead_letters()
    return json_response({"dead_letters": [dead_letter_json(b) for b in letters]})


async def replay_dead_letters(request: web.Request) -> web.Response:
    return json_response({"queued": await request.app[STORE].webhooks.replay_dead_letters()}, 202)


async def enable_webhooks(request: web.Request) -> web.Response:
    hooks = request.app[STORE].webhooks
    await hooks.enable()
    return json_response(state_json(request.app[SETTINGS].webhooks.url, await hooks.state()))


ROUTES = [
    web.get("/v1/webhooks", get_webhooks),
    web.post("/v1/webhooks/enable", enable_webhooks),
    web.get("/v1/webhooks/dead-letters", get_dead_letters),
    web.post("/v1/webhooks/dead-letters/replay", replay_dead_letters),
]

PATHS: dict[str, Any] = {
    "/v1/webhooks": {
        "get": {
            "summary": "Webhook delivery: cursor, batch being retried, last error, dead letters",
            "security": AUTH,
            "responses": {"200": {"description": "The dispatcher's state"}},
        }
    },
    "/v1/webhooks/enable": {
        "post": {
            "summary": "Resume after the endpoint answered 410 Gone",
            "security": AUTH,
            "responses": {"200": {"description": "The dispatcher's state"}},
        }
    },
    "/v1/webhooks/dead-letters": {
        "get": {
            "summary": "Batches that failed for the whole retry period",
            "security": AUTH,
            "responses": {"200": {"description": "Dead letters, oldest first"}},
        }
    },
    "/v1/webhooks/dead-letters/replay": {
        "post": {
            "summary": "Send every dead letter again, before new events",
            "security": AUTH,
            "responses": {"202": {"description": "How many were queued"}},
        }
    },
}
