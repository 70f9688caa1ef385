"""``GET|PUT /v1/policy``: the contact policy (frequency caps, quiet hours;
``suppression.policy``)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.api.common import STORE, json_body, json_response
from gateway.api.openapi_parts import AUTH, error_responses, json_of
from suppression.policy import load_policy, parse_policy

log = logging.getLogger(__name__)


async def get_policy(request: web.Request) -> web.Response:
    return json_response(load_policy(await request.app[STORE].policy()).as_json())


async def put_policy(request: web.Request) -> web.Response:
    policy = parse_policy(await json_body(request))
    document = policy.document()
    await request.app[STORE].set_policy(document)
    log.info("contact policy changed: %s", document)
    return json_response(policy.as_json())


ROUTES = [web.get("/v1/policy", get_policy), web.put("/v1/policy", put_policy)]

SCHEMAS: dict[str, Any] = {
    "Policy": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "frequency_caps": {
                "type": "array",
                "maxItems": 20,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["category", "limit", "window_seconds"],
                    "properties": {
                        "category": {
                            "type": "string",
                            "description": '"*" counts every marketing message',
                        },
                        "limit": {"type": "integer", "minimum": 1, "maximum": 10000},
                        "window_seconds": {"type": "integer", "minimum": 1, "maximum": 2592000},
                        "action": {"enum": ["drop", "defer"], "default": "drop"},
                    },
                },
            },
            "quiet_hours": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "required": ["start", "end"],
                "properties": {
                    "start": {"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$"},
                    "end": {"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$"},
                    "default_timezone": {"type": "string", "default": "UTC"},
                    "ramp_seconds": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": 21600,
                        "default": 1800,
                    },
                },
            },
        },
    },
}
PATHS: dict[str, Any] = {
    "/v1/policy": {
        "get": {
            "summary": "The contact policy: frequency caps and quiet hours",
            "security": AUTH,
            "responses": {
                "200": {"description": "The policy", "content": json_of("Policy")},
                **error_responses(401),
            },
        },
        "put": {
            "summary": "Replace the contact policy (takes effect for the next request)",
            "security": AUTH,
            "requestBody": {"required": True, "content": json_of("Policy")},
            "responses": {
                "200": {"description": "The stored policy", "content": json_of("Policy")},
                **error_responses(400, 401, 415),
            },
        },
    },
}
