"""``/v1/suppressions``: who is never mailed, why and since when (``core.store.suppressions``;
the CLI is ``sluice suppress``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from core import validate
from core.addresses import AddressError, normalize_address
from core.errors import NotFound, ValidationError
from core.suppressions import BUCKETS, REASONS
from gateway.api.common import STORE, json_body, json_response, limit_of, query
from gateway.api.openapi_parts import AUTH, LIMIT_QUERY, TOKEN, error_responses, json_of

_BODY_FIELDS = {"reason", "category", "source"}


def _target(request: web.Request) -> tuple[str, str | None]:
    try:
        email = normalize_address(request.match_info["email"])
    except AddressError as exc:
        raise ValidationError(f"not a valid address: {exc}", field="email") from exc
    category = query(request, "category").get("category") or None
    return email, None if category is None else validate.category(category)


async def get_suppression(request: web.Request) -> web.Response:
    email, _ = _target(request)
    found = await request.app[STORE].suppressions.of(email)
    if not found:
        raise NotFound(f"{email} is not suppressed")
    return json_response({"email": email, "suppressions": [entry.as_json() for entry in found]})


async def put_suppression(request: web.Request) -> web.Response:
    email, category = _target(request)
    body = await json_body(request, optional=True)
    if not isinstance(body, dict) or set(body) - _BODY_FIELDS:
        raise ValidationError("body: {reason?, category?, source?}", field="body")
    reason = validate.reason(body.get("reason", "manual"))
    category = body.get("category", category)
    if category is not None:
        category = validate.category(category)
    source = validate.source(body.get("source", "api"))
    store = request.app[STORE]
    new = await store.suppressions.add(email, reason=reason, source=source, category=category)
    entry = await store.suppressions.check(email, category)
    assert entry is not None
    return json_response(entry.as_json(), 201 if new else 200)


async def delete_suppression(request: web.Request) -> web.Response:
    email, category = _target(request)
    if not await request.app[STORE].suppressions.remove(email, category):
        scope = f" for {category}" if category else ""
        raise NotFound(f"{email} is not suppressed{scope}")
    return web.Response(status=204)


async def list_suppressions(request: web.Request) -> web.Response:
    query(request, "cursor", "limit")
    cursor_text = request.query.get("cursor", "0")
    if (
        not (cursor_text.isascii() and cursor_text.isdigit() and len(cursor_text) <= 6)
        or int(cursor_text) >= BUCKETS
    ):
        raise ValidationError(
            "'cursor' must be the 'next' value of an earlier page", field="cursor"
        )
    store = request.app[STORE]
    entries, after = await store.suppressions.page(int(cursor_text), limit_of(request))
    return json_response(
        {
            "suppressions": [entry.as_json() for entry in entries],
            "next": None if after is None else str(after),
            "total": await store.suppressions.count(),
        }
    )


ROUTES = [
    web.get("/v1/suppressions", list_suppressions),
    web.get("/v1/suppressions/{email}", get_suppression),
    web.put("/v1/suppressions/{email}", put_suppression),
    web.delete("/v1/suppressions/{email}", delete_suppression),
]

# --- OpenAPI ---------------------------------------------------------------------------------

_EMAIL = {"name": "email", "in": "path", "required": True, "schema": {"type": "string"}}
_CATEGORY_QUERY = {
    "name": "category",
    "in": "query",
    "required": False,
    "schema": TOKEN,
    "description": "An unsubscribe group; without it, the global entry",
}

SCHEMAS: dict[str, Any] = {
    "Suppression": {
        "type": "object",
        "required": ["email", "category", "reason", "created_at", "source"],
        "properties": {
            "email": {"type": "string"},
            "category": {"type": ["string", "null"], "description": "null: every category"},
            "reason": {"enum": sorted(REASONS)},
            "created_at": {"type": "integer", "description": "Unix seconds"},
            "source": {"type": ["string", "null"]},
        },
    },
}
PATHS: dict[str, Any] = {
    "/v1/suppressions": {
        "get": {
            "summary": "Suppressed addresses, a page at a time",
            "security": AUTH,
            "parameters": [
                {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
                LIMIT_QUERY,
            ],
            "responses": {
                "200": {
                    "description": "A page of entries; 'next' is null on the last page",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "suppressions": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Suppression"},
                                    },
                                    "next": {"type": ["string", "null"]},
                                    "total": {"type": "integer"},
                                },
                            }
                        }
                    },
                },
                **error_responses(400, 401),
            },
        }
    },
    "/v1/suppressions/{email}": {
        "get": {
            "summary": "Every entry for an address (global and per category)",
            "security": AUTH,
            "parameters": [_EMAIL],
            "responses": {"200": {"description": "The entries"}, **error_responses(400, 401, 404)},
        },
        "put": {
            "summary": "Suppress an address, globally or for one category",
            "security": AUTH,
            "parameters": [_EMAIL, _CATEGORY_QUERY],
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "reason": {"enum": sorted(REASONS), "default": "manual"},
                                "category": {"type": "string"},
                                "source": {"type": "string", "maxLength": 48},
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": {"description": "Added", "content": json_of("Suppression")},
                "200": {"description": "Replaced", "content": json_of("Suppression")},
                **error_responses(400, 401, 415),
            },
        },
        "delete": {
            "summary": "Lift a suppression (global, or one category's with ?category=)",
            "security": AUTH,
            "parameters": [_EMAIL, _CATEGORY_QUERY],
            "responses": {"204": {"description": "Lifted"}, **error_responses(400, 401, 404)},
        },
    },
}
