"""Pieces every part of the OpenAPI document uses: error answers, JSON bodies by schema name,
the bearer requirement, and the parameters several routes share."""

from __future__ import annotations

from typing import Any

from core.validate import NAME

AUTH: list[dict[str, list[str]]] = [{"bearer": []}]
TOKEN = {"type": "string", "pattern": f"^{NAME.pattern}$"}
LIMIT_QUERY = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
}

_ERROR_TEXT = {
    400: "Invalid request",
    401: "Missing or wrong API key",
    404: "Not found",
    413: "Body too large",
    415: "Body is not JSON, or its Content-Encoding is not accepted",
    422: (
        "idempotency_conflict: Idempotency-Key reused with another body; "
        "template_too_expensive: a template over its render budget (time, size or loop "
        "iterations) whatever the recipient data, or all recipients together over the "
        "request's render budget"
    ),
    503: "Queue unavailable",
}


def json_of(ref: str) -> dict[str, Any]:
    """A JSON body of the named component schema."""
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def error_responses(*codes: int) -> dict[str, Any]:
    """The ``{error, detail, field}`` answers for these status codes."""
    return {str(c): {"description": _ERROR_TEXT[c], "content": json_of("Error")} for c in codes}


def answered(
    description: str, schema: dict[str, Any], errors: tuple[int, ...] = (400, 401)
) -> dict[str, Any]:
    """The responses of an operation: a 200 whose JSON body is ``schema``, and ``errors``."""
    return {
        "200": {"description": description, "content": {"application/json": {"schema": schema}}},
        **error_responses(*errors),
    }


ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string"},
        "detail": {"type": "string"},
        "field": {"type": "string"},
    },
}
