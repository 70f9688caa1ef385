"""``GET /v1/queues`` (what waits and why, grouped) and ``POST /v1/queues/actions`` (bulk
release, retry now, cancel, with a dry run): ``gateway/queues.py``."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from core import validate
from core.errors import ValidationError
from gateway import queues
from gateway.api.common import STORE, json_body, json_response, query
from gateway.api.openapi_parts import AUTH, answered
from warmup.schedules import PROVIDERS

log = logging.getLogger(__name__)


async def get_queues(request: web.Request) -> web.Response:
    params = query(request, "group_by", *queues.FILTERS)
    filters = queues.filters_of(dict(params))
    answer = await queues.view(request.app[STORE], params.get("group_by", "state"), filters)
    return json_response(answer)


async def post_action(request: web.Request) -> web.Response:
    query(request)
    answer = await queues.act(request.app[STORE], await json_body(request))
    if not answer["dry_run"]:
        log.info(
            "queue action %s: %d of %d changed",
            answer["action"],
            answer["changed"],
            answer["matched"],
        )
    return json_response(answer)


def _sender(request: web.Request) -> tuple[str, str]:
    ip, provider = validate.ip(request.match_info["ip"]), request.match_info["provider"]
    if provider not in PROVIDERS:
        raise ValidationError(f"'provider' must be one of {', '.join(PROVIDERS)}", field="provider")
    return ip, provider


async def pause_sender(request: web.Request) -> web.Response:
    """Stop an IP sending to a provider group (the pool's other IPs take over)."""
    query(request)
    ip, provider = _sender(request)
    fresh = await request.app[STORE].control.pause_sender(ip, provider, "paused through the API")
    log.info("%s paused at %s", ip, provider)
    return json_response({"ip": ip, "provider": provider, "paused": True, "was_paused": not fresh})


async def resume_sender(request: web.Request) -> web.Response:
    query(request)
    ip, provider = _sender(request)
    was = await request.app[STORE].control.resume_sender(ip, provider)
    log.info("%s resumed at %s", ip, provider)
    return json_response({"ip": ip, "provider": provider, "paused": False, "was_paused": was})


async def get_paused_senders(request: web.Request) -> web.Response:
    query(request)
    paused = await request.app[STORE].control.paused_senders()
    listed = []
    for pair, state in sorted(paused.items()):
        ip, _, provider = pair.rpartition(":")
        listed.append({"ip": ip, "provider": provider, **state})
    return json_response({"paused": listed})


ROUTES = [
    web.get("/v1/queues", get_queues),
    web.post("/v1/queues/actions", post_action),
    web.get("/v1/senders/paused", get_paused_senders),
    web.post("/v1/senders/{ip}/{provider}/pause", pause_sender),
    web.post("/v1/senders/{ip}/{provider}/resume", resume_sender),
]

_FILTER_PARAMS = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": queues.MAX_FILTER_CHARS.get(name, 64),
        },
    }
    for name in queues.FILTERS
    if name != "state"
] + [{"name": "state", "in": "query", "required": False, "schema": {"enum": list(queues.STATES)}}]


def _sender_action(summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": AUTH,
            "parameters": [
                {
                    "name": "ip",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "maxLength": 45},
                },
                {
                    "name": "provider",
                    "in": "path",
                    "required": True,
                    "schema": {"enum": list(PROVIDERS)},
                },
            ],
            "responses": answered("Done", {"type": "object"}),
        }
    }


PATHS: dict[str, Any] = {
    "/v1/senders/paused": {
        "get": {
            "summary": "IP x provider pairs paused (by an alert or a person)",
            "security": AUTH,
            "responses": answered("The paused pairs", {"type": "object"}),
        }
    },
    "/v1/senders/{ip}/{provider}/pause": _sender_action(
        "Stop an IP sending to a provider group (the pool's other IPs take over)"
    ),
    "/v1/senders/{ip}/{provider}/resume": _sender_action(
        "Let an IP send to a provider group again"
    ),
    "/v1/queues": {
        "get": {
            "summary": "What waits in the queue and why, grouped",
            "security": AUTH,
            "parameters": [
                {
                    "name": "group_by",
                    "in": "query",
                    "required": False,
                    "schema": {"enum": list(queues.GROUPS)},
                },
                *_FILTER_PARAMS,
            ],
            "responses": answered(
                "Groups, biggest first",
                {
                    "type": "object",
                    "required": ["group_by", "groups"],
                    "properties": {
                        "group_by": {"type": "string"},
                        "truncated": {"type": "boolean"},
                        "groups": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["key", "count", "oldest_age_seconds"],
                                "properties": {
                                    "key": {"type": "string"},
                                    "count": {"type": "integer"},
                                    "oldest_age_seconds": {"type": "number"},
                                    "next_attempt": {"type": "number"},
                                    "last_reply": {"type": "string"},
                                    "states": {"type": "object"},
                                },
                            },
                        },
                    },
                },
            ),
        }
    },
    "/v1/queues/actions": {
        "post": {
            "summary": "Release, retry now or cancel the waiting messages a filter matches",
            "security": AUTH,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["action"],
                            "properties": {
                                "action": {"enum": list(queues.ACTIONS)},
                                "dry_run": {"type": "boolean"},
                                "filter": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        **{
                                            n: {
                                                "type": "string",
                                                "minLength": 1,
                                                "maxLength": queues.MAX_FILTER_CHARS.get(n, 64),
                                            }
                                            for n in queues.FILTERS
                                        },
                                        "state": {"enum": list(queues.STATES)},
                                    },
                                },
                            },
                        }
                    }
                },
            },
            "responses": answered(
                "How many matched, how many changed",
                {
                    "type": "object",
                    "required": ["matched", "changed"],
                    "properties": {"matched": {"type": "integer"}, "changed": {"type": "integer"}},
                },
            ),
        }
    },
}
