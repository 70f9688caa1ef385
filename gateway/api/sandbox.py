"""``GET /v1/sandbox/messages`` (the capture inbox, newest first) and ``GET
/v1/sandbox/messages/{message_id}`` (one captured message, inspected): ``gateway/sandbox.py``."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from core.errors import NotFound, ValidationError
from gateway.api.common import SANDBOX, json_response, limit_of, query
from gateway.api.openapi_parts import AUTH, LIMIT_QUERY, answered

# a page's cursor, "<captured_at>:<message id>": here and in the OpenAPI document
_BEFORE_PATTERN = r"([0-9]{1,12}(?:\.[0-9]{1,9})?):([a-z0-9.-]{1,64})"
_BEFORE = re.compile(_BEFORE_PATTERN)


async def list_messages(request: web.Request) -> web.Response:
    query(request, "limit", "before")
    given = request.query.get("before")
    cursor = _BEFORE.fullmatch(given) if given is not None else None
    if given is not None and cursor is None:
        raise ValidationError("'before' must be the 'next' of an earlier page", field="before")
    before = (float(cursor.group(1)), cursor.group(2)) if cursor is not None else None
    found = await request.app[SANDBOX].recent(limit_of(request, 50), before)
    last = found[-1] if found else None
    following = f"{last['captured_at']!r}:{last['message_id']}" if last else None
    return json_response({"messages": found, "next": following})


async def get_message(request: web.Request) -> web.Response:
    follow = query(request, "follow").get("follow", "false")
    if follow not in ("true", "false"):
        raise ValidationError("'follow' must be true or false", field="follow")
    message_id = request.match_info["message_id"]
    found = await request.app[SANDBOX].inspect(message_id, follow=follow == "true")
    if found is None:
        raise NotFound(
            f"no captured message {message_id[:64]!r} (kept for SLUICE_SANDBOX_RETENTION)"
        )
    return json_response(found)


ROUTES = [
    web.get("/v1/sandbox/messages", list_messages),
    web.get("/v1/sandbox/messages/{message_id}", get_message),
]

# --- OpenAPI ---------------------------------------------------------------------------------

_CHECK = {
    "type": "object",
    "required": ["id", "status", "summary"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["pass", "warn", "fail", "error"]},
        "summary": {"type": "string"},
        "detail": {"type": "string"},
        "fix": {"type": "string"},
    },
}
_SUMMARY_PROPERTIES: dict[str, Any] = {
    "message_id": {"type": "string"},
    "batch_id": {"type": "string"},
    "captured_at": {"type": "number"},
    "email": {"type": "string"},
    "from": {"type": "string"},
    "subject": {"type": "string"},
    "campaign": {"type": ["string", "null"]},
    "category": {"type": ["string", "null"]},
    "stream": {"type": ["string", "null"]},
    "would_be": {
        "type": "object",
        "description": "what the contact policy would have done: status (queued, scheduled, "
        "capped as deferred), reason, send_at",
    },
}
_SUMMARY = {
    "type": "object",
    "required": ["message_id", "captured_at", "email", "subject"],
    "properties": _SUMMARY_PROPERTIES,
}
_DETAIL = {
    "type": "object",
    "required": ["message_id", "headers", "raw", "dkim", "links", "checks"],
    "properties": {
        **_SUMMARY_PROPERTIES,
        "headers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
            },
        },
        "html": {"type": ["string", "null"]},
        "text": {"type": ["string", "null"]},
        "raw": {"type": "string", "description": "the message as it would have gone out"},
        "size": {"type": "integer"},
        "dkim": {
            "type": "array",
            "description": "each signature verified against the key the domain publishes now",
            "items": {
                "type": "object",
                "properties": {
                    "domain": {"type": "string"},
                    "selector": {"type": "string"},
                    "algorithm": {"type": "string"},
                    "result": {"type": "string", "enum": ["pass", "fail"]},
                    "detail": {"type": "string"},
                    "record": {"type": "string"},
                },
            },
        },
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "url": {"type": "string"},
                    "tracked": {"type": "boolean"},
                    "kind": {"type": "string"},
                    "leads_to": {"type": ["string", "null"]},
                    "problem": {"type": "string"},
                    "hops": {
                        "type": "array",
                        "description": "with follow=true: each URL asked and its status",
                        "items": {"type": "object"},
                    },
                    "final": {
                        "type": "object",
                        "description": "with follow=true: where the link finally leads "
                        "({url, status}), or why that is unknown ({problem})",
                    },
                },
            },
        },
        "checks": {"type": "array", "items": _CHECK},
    },
}

PATHS: dict[str, Any] = {
    "/v1/sandbox/messages": {
        "get": {
            "summary": "The sandbox's capture inbox, newest first",
            "security": AUTH,
            "parameters": [
                LIMIT_QUERY,
                {
                    "name": "before",
                    "in": "query",
                    "required": False,
                    "description": "the `next` of an earlier page",
                    "schema": {
                        "type": "string",
                        "pattern": f"^{_BEFORE_PATTERN}$",
                    },
                },
            ],
            "responses": answered(
                "Captured messages",
                {
                    "type": "object",
                    "required": ["messages", "next"],
                    "properties": {
                        "messages": {"type": "array", "items": _SUMMARY},
                        "next": {"type": ["string", "null"]},
                    },
                },
            ),
        }
    },
    "/v1/sandbox/messages/{message_id}": {
        "get": {
            "summary": "One captured message: parts, headers, raw source, DKIM, links, checks",
            "security": AUTH,
            "parameters": [
                {
                    "name": "message_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "maxLength": 200},
                },
                {
                    "name": "follow",
                    "in": "query",
                    "required": False,
                    "description": "true: follow each link's redirects to where it finally "
                    "leads (public addresses only, unless SLUICE_SANDBOX_FOLLOW_PRIVATE)",
                    "schema": {"type": "string", "enum": ["true", "false"]},
                },
            ],
            "responses": answered("The captured message", _DETAIL, (400, 401, 404)),
        }
    },
}
