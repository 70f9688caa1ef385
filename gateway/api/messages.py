"""``POST /v1/messages`` (queue a personalized message), ``GET /v1/messages/{message_id}``
(its status and events) and ``GET /v1/events`` (every event, after a cursor)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

from aiohttp import web

from core.errors import NotFound, ValidationError
from core.ids import split_message_id
from core.store import BadCursor, Store, check_cursor
from gateway import schemas
from gateway.api.common import (
    INTAKE,
    SANDBOX_ONLY,
    STORE,
    json_body,
    json_response,
    limit_of,
    query,
    require_json,
)
from gateway.api.openapi_parts import AUTH, LIMIT_QUERY, TOKEN, error_responses, json_of
from mta.replies import BOUNCE_CLASSES

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


async def post_messages(request: web.Request) -> web.Response:
    require_json(request)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValidationError(
            "Idempotency-Key must be 1-255 printable ASCII characters", field="Idempotency-Key"
        )
    body = await json_body(request)
    submitted = await request.app[INTAKE].submit(
        body, idempotency_key=key, sandbox=request.get(SANDBOX_ONLY, False)
    )
    replayed = {"Idempotent-Replayed": "true"} if submitted.replayed else None
    return json_response(submitted.response, 202, replayed)


async def get_message(request: web.Request) -> web.Response:
    message_id = request.match_info["message_id"]
    if split_message_id(message_id) is None:
        raise NotFound(f"no message {message_id[:64]!r}")
    found = await request.app[STORE].message(message_id)
    if found is None:
        raise NotFound(f"no message {message_id!r}")
    return json_response(found)


def _cursor(request: web.Request, given: str | None) -> str | None:
    if given is not None:
        try:
            check_cursor(given, request.app[STORE].shards)
        except BadCursor:
            raise ValidationError(
                "'after' must be the 'next' cursor of an earlier page", field="after"
            ) from None
    return given


async def get_events(request: web.Request) -> web.Response:
    query(request, "after", "limit")
    after = _cursor(request, request.query.get("after") or None)
    events, cursor = await request.app[STORE].events_after(after, limit_of(request))
    return json_response({"events": events, "next": cursor})


STREAM_POLL_SECONDS = 0.5
STREAM_HEARTBEAT_SECONDS = 15.0


async def stream_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events/stream``: the events as they happen, as server-sent events, after
    ``after`` (or the ``Last-Event-ID`` a reconnecting client sends; neither: from now on).
    ``type``: only these event types (comma-separated). Heartbeat comments keep proxies from
    closing a quiet stream."""
    query(request, "after", "type")
    store = request.app[STORE]
    kinds = set(request.query["type"].split(",")) if request.query.get("type") else None
    if kinds is not None and len(request.query["type"]) > 200:
        raise ValidationError("'type' is too long", field="type")
    resume = request.query.get("after") or request.headers.get("Last-Event-ID") or None
    if resume is not None and len(resume) > 4096:
        raise ValidationError("the cursor is too long", field="after")
    cursor = _cursor(request, resume)
    if cursor is None:  # from now on: after the newest event of every shard
        cursor = await store.events.tail()
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    await response.write(b": sluice events\n\n")
    with contextlib.suppress(ConnectionResetError):  # the client left: found at a write
        await _follow(response, store, cursor, kinds)
    return response


async def _follow(
    response: web.StreamResponse, store: Store, cursor: str | None, kinds: set[str] | None
) -> None:
    quiet = 0.0
    while True:
        events, moved = await store.events_after(cursor, 200)
        if not events:
            await asyncio.sleep(STREAM_POLL_SECONDS)
            quiet += STREAM_POLL_SECONDS
            if quiet >= STREAM_HEARTBEAT_SECONDS:
                await response.write(b": keep-alive\n\n")
                quiet = 0.0
            continue
        quiet = 0.0
        cursor = moved
        chunks = [
            f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
            for event in events
            if kinds is None or event["type"] in kinds
        ]
        # the cursor after the page: a client that reconnects resumes there (one that lost
        # part of a page gets it again from the page before: twice, never lost)
        chunks.append(f"id: {cursor}\n\n")
        await response.write("".join(chunks).encode())


ROUTES = [
    web.post("/v1/messages", post_messages),
    web.get("/v1/messages/{message_id}", get_message),
    web.get("/v1/events", get_events),
    web.get("/v1/events/stream", stream_events),
]

# --- OpenAPI ---------------------------------------------------------------------------------

_ADDRESS: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "format": "email", "maxLength": 254},
        {
            "type": "object",
            "required": ["email"],
            "additionalProperties": False,
            "properties": {
                "email": {"type": "string", "format": "email", "maxLength": 254},
                "name": {"type": "string", "maxLength": schemas.MAX_NAME_CHARS},
            },
        },
    ]
}
_METADATA = {
    "type": "object",
    "description": f"Flat object echoed in events; at most {schemas.MAX_METADATA_BYTES} bytes.",
    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
}
_EVENT = {
    "type": "object",
    "required": [
        "id",
        "type",
        "timestamp",
        "message_id",
        "email",
        "contact_id",
        "category",
        "metadata",
    ],
    "properties": {
        "id": {"type": "string"},
        "type": {
            "type": "string",
            "enum": [
                "queued",
                "delivered",
                "deferred",
                "bounced",
                "expired",
                "suppressed",
                "capped",
                "opened",
                "clicked",
                "unsubscribed",
                "complained",
            ],
        },
        "timestamp": {"type": "number"},
        "message_id": {"type": "string"},
        "email": {"type": "string"},
        "contact_id": {"type": ["string", "null"]},
        "category": {"type": ["string", "null"]},
        "metadata": {"type": "object"},
        "smtp_code": {"type": ["integer", "null"]},
        "bounce_class": {
            "type": "string",
            "enum": sorted(BOUNCE_CLASSES),
            "description": "bounced: why (docs/bounces.md)",
        },
        "hard": {"type": "boolean", "description": "bounced: the address is dead and suppressed"},
        "status": {
            "type": ["string", "null"],
            "description": "bounced: the RFC 3463 enhanced status code, e.g. 5.1.1",
        },
        "reason": {"type": "string"},
        "mx": {"type": "string"},
        "send_at": {"type": "string"},
        "attempt": {"type": "integer"},
        "next_attempt_at": {"type": "number", "description": "deferred: when it is tried again"},
        "next_attempt_held_by": {
            "type": "string",
            "enum": ["quiet_hours"],
            "description": "deferred: the retry waits for the end of the recipient's quiet hours",
        },
        "soft_bounce": {
            "type": "boolean",
            "description": "expired, bounced: the message counts toward its address's "
            "soft-bounce limit (docs/bounces.md)",
        },
        "scope": {"type": "string", "description": "suppressed: global, or the category"},
        "stage": {
            "type": "string",
            "enum": ["delivery", "outcome"],
            "description": "suppressed: absent at accept; delivery: found suppressed just "
            "before delivery, nothing sent; outcome: this message's outcome suppressed its "
            "address (reason soft_bounce_limit), the message itself keeps its status",
        },
        "soft_bounces": {
            "type": "integer",
            "description": "suppressed (soft_bounce_limit): messages in the run",
        },
        "first_soft_bounce_at": {
            "type": "string",
            "description": "suppressed (soft_bounce_limit): when the run's first message ended",
        },
    },
}


def _null_means_absent(schema: dict[str, Any]) -> dict[str, Any]:
    """The same object schema, where every optional property may also be ``null``: the API reads
    a ``null`` exactly as a field left out (clients that serialize ``None`` need no special case)."""
    required = set(schema.get("required", ()))
    properties = {}
    for name, prop in schema["properties"].items():
        if name in required:
            properties[name] = prop
        elif isinstance(prop.get("type"), str):
            properties[name] = {**prop, "type": [prop["type"], "null"]}
        else:
            properties[name] = {"anyOf": [prop, {"type": "null"}]}
    return {**schema, "properties": properties}


_RECIPIENT = _null_means_absent(
    {
        "type": "object",
        "required": ["email"],
        "additionalProperties": False,
        "properties": {
            "email": {"type": "string", "maxLength": 254},
            "name": {"type": "string"},
            "contact_id": {"type": "string", "maxLength": 128},
            "timezone": {"type": "string", "description": "IANA time zone name"},
            "data": {"type": "object", "description": "Template variables for this recipient"},
            "metadata": _METADATA,
        },
    }
)
_SEND = _null_means_absent(
    {
        "type": "object",
        "required": ["from", "subject", "stream", "recipients"],
        "additionalProperties": False,
        "properties": {
            "from": _ADDRESS,
            "reply_to": _ADDRESS,
            "subject": {
                "type": "string",
                "minLength": 1,
                "description": "Jinja2 template, rendered per recipient",
            },
            "html": {"type": "string", "description": "Jinja2 template; values are HTML-escaped"},
            "text": {"type": "string", "description": "Jinja2 template"},
            "category": TOKEN,
            "campaign": {
                **TOKEN,
                "description": "what statistics group the messages under (kept on every "
                "event); default: the category",
            },
            "stream": {"type": "string", "enum": list(schemas.STREAMS)},
            "headers": {
                "type": "object",
                "maxProperties": schemas.MAX_HEADERS,
                "additionalProperties": {
                    "type": "string",
                    "maxLength": schemas.MAX_HEADER_VALUE_CHARS,
                },
            },
            "tags": {"type": "array", "maxItems": schemas.MAX_TAGS, "items": TOKEN},
            "metadata": _METADATA,
            "tracking": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"opens": {"type": "boolean"}, "clicks": {"type": "boolean"}},
            },
            "send_at": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}]},
            "ip_pool": TOKEN,
            "sandbox": {
                "type": "boolean",
                "description": "true: run the whole path into the capture inbox "
                f"(GET /v1/sandbox/messages), never the Internet; at most "
                f"{schemas.MAX_SANDBOX_RECIPIENTS} recipients",
            },
            "recipients": {
                "type": "array",
                "minItems": 1,
                "maxItems": schemas.MAX_RECIPIENTS,
                "items": _RECIPIENT,
            },
        },
    }
)


_RESULT = {
    "type": "object",
    "required": ["batch_id", "results"],
    "properties": {
        "batch_id": {"type": "string"},
        "sandbox": {"type": "boolean", "description": "true: captured, not queued"},
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "email", "message_id", "status"],
                "properties": {
                    "index": {"type": "integer"},
                    "email": {"type": "string"},
                    "message_id": {"type": ["string", "null"]},
                    "status": {
                        "type": "string",
                        "enum": ["queued", "scheduled", "suppressed", "capped", "rejected"],
                    },
                    "reason": {"type": "string"},
                    "send_at": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
}

SCHEMAS: dict[str, Any] = {"SendRequest": _SEND, "SendResult": _RESULT, "Event": _EVENT}
PATHS: dict[str, Any] = {
    "/v1/messages": {
        "post": {
            "summary": "Queue a personalized message for 1 to 1,000 recipients",
            "security": AUTH,
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                }
            ],
            "requestBody": {"required": True, "content": json_of("SendRequest")},
            "responses": {
                "202": {
                    "description": "Accepted; per-recipient results",
                    "content": json_of("SendResult"),
                },
                **error_responses(400, 401, 413, 415, 422, 503),
            },
        }
    },
    "/v1/messages/{message_id}": {
        "get": {
            "summary": "A message's status and events",
            "security": AUTH,
            "parameters": [
                {
                    "name": "message_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
            ],
            "responses": {
                "200": {
                    "description": "The message",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["message_id", "status", "events"],
                                "properties": {
                                    "message_id": {"type": "string"},
                                    "status": {
                                        "type": "string",
                                        "enum": [
                                            "queued",
                                            "scheduled",
                                            "deferred",
                                            "delivered",
                                            "bounced",
                                            "suppressed",
                                            "capped",
                                            "expired",
                                            "rejected",
                                        ],
                                    },
                                    "events": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Event"},
                                    },
                                },
                            }
                        }
                    },
                },
                **error_responses(401, 404),
            },
        }
    },
    "/v1/events/stream": {
        "get": {
            "summary": "The events as they happen, as server-sent events (text/event-stream)",
            "security": AUTH,
            "parameters": [
                {
                    "name": "after",
                    "in": "query",
                    "required": False,
                    "description": "a cursor of /v1/events or an SSE id; default: from now on "
                    "(or the Last-Event-ID header)",
                    "schema": {"type": "string", "maxLength": 4096},
                },
                {
                    "name": "type",
                    "in": "query",
                    "required": False,
                    "description": "only these event types, comma-separated",
                    "schema": {"type": "string", "maxLength": 200},
                },
            ],
            "responses": {
                "200": {
                    "description": "An endless stream of `event: <type>` / `data: <event JSON>`",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **error_responses(400, 401),
            },
        }
    },
    "/v1/events": {
        "get": {
            "summary": "Delivery and engagement events, oldest first, after a cursor",
            "security": AUTH,
            "parameters": [
                {
                    "name": "after",
                    "in": "query",
                    "required": False,
                    "description": "The `next` of an earlier page (opaque: over several shards it "
                    "names each shard's position); empty: from the oldest event",
                    "schema": {
                        "type": "string",
                        "pattern": r"^(\d{1,20}-\d{1,20}|v1(\.\d{1,20})(\.(\d{1,20}-\d{1,20})?)+)?$",
                    },
                },
                LIMIT_QUERY,
            ],
            "responses": {
                "200": {
                    "description": "A page of events",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["events", "next"],
                                "properties": {
                                    "events": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Event"},
                                    },
                                    "next": {"type": ["string", "null"]},
                                },
                            }
                        }
                    },
                },
                **error_responses(400, 401),
            },
        }
    },
}
