"""The OpenAPI 3.1 description of Sluice's HTTP API, served at ``/openapi.json``.

Kept beside ``gateway/schemas.py``: a change to one is a change to the other.
"""

from __future__ import annotations

from typing import Any

from gateway import openapi_policy, openapi_tracking, schemas
from gateway.openapi_parts import AUTH, LIMIT_QUERY, TOKEN, error_responses, json_of
from mta.replies import BOUNCE_CLASSES

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
_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string"},
        "detail": {"type": "string"},
        "field": {"type": "string"},
    },
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


def openapi_document(server_url: str) -> dict[str, Any]:
    document = _document(server_url)
    _add_common_errors(document["paths"])
    return document


def _add_common_errors(paths: dict[str, Any]) -> None:
    """Answers every route can give, documented once: 401 where an API key is needed, and 413
    and 415 where a JSON body is read (the middleware gives them before any handler runs)."""
    for item in paths.values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            if operation.get("security"):
                responses.setdefault("401", error_responses(401)["401"])
            if "requestBody" in operation or method in ("put", "post"):
                for code, answer in error_responses(413, 415).items():
                    responses.setdefault(code, answer)


def _document(server_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sluice",
            "version": "0.1.0",
            "description": "Email delivery and deliverability gateway",
        },
        "servers": [{"url": server_url}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "SendRequest": _SEND,
                "SendResult": _RESULT,
                "Error": _ERROR,
                "Event": _EVENT,
                **openapi_policy.SCHEMAS,
            },
        },
        "paths": {
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
            "/v1/events": {
                "get": {
                    "summary": "Delivery and engagement events, oldest first, after a cursor",
                    "security": AUTH,
                    "parameters": [
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            # empty: from the oldest event
                            "schema": {"type": "string", "pattern": r"^(\d{1,20}-\d{1,20})?$"},
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
            "/v1/destinations": {
                "get": {
                    "summary": "Delivery state per recipient domain and per destination host",
                    "security": AUTH,
                    "responses": {
                        "200": {
                            "description": "Pending messages per domain; pools, limits, backoff and recent replies per host",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["domains", "hosts"],
                                        "properties": {
                                            "domains": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    "properties": {
                                                        "domain": {"type": "string"},
                                                        "pending": {"type": "integer"},
                                                    },
                                                },
                                            },
                                            "hosts": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    "properties": {
                                                        "worker": {"type": "string"},
                                                        "source_ip": {"type": ["string", "null"]},
                                                        "address": {"type": "string"},
                                                        "port": {"type": "integer"},
                                                        "connections": {"type": "integer"},
                                                        "idle": {"type": "integer"},
                                                        "limit": {"type": "integer"},
                                                        "backoff_seconds": {"type": "number"},
                                                        "recent_replies": {
                                                            "type": "array",
                                                            "items": {"type": "object"},
                                                        },
                                                    },
                                                },
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        **error_responses(401),
                    },
                }
            },
            **openapi_policy.PATHS,
            **openapi_tracking.PATHS,
            "/healthz": {
                "get": {
                    "summary": "Liveness and Redis reachability",
                    "responses": {
                        "200": {"description": "Healthy"},
                        "503": {"description": "Redis unreachable"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (also on SLUICE_METRICS_LISTEN, without the key)",
                    "security": AUTH,
                    "responses": {
                        "200": {"description": "Text exposition format"},
                        **error_responses(401),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1"}},
                }
            },
        },
    }
