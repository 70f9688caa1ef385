"""OpenAPI description of the contact-policy routes: ``/v1/policy`` and ``/v1/suppressions``."""

from __future__ import annotations

from typing import Any

from core.suppressions import REASONS
from gateway.openapi_parts import AUTH, LIMIT_QUERY, TOKEN, error_responses, json_of

_EMAIL = {"name": "email", "in": "path", "required": True, "schema": {"type": "string"}}
_CATEGORY_QUERY = {
    "name": "category",
    "in": "query",
    "required": False,
    "schema": TOKEN,
    "description": "An unsubscribe group; without it, the global entry",
}


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
