"""OpenAPI description of the webhook routes and of the tracking routes (no authentication:
those are in every message)."""

from __future__ import annotations

from typing import Any

from gateway.openapi_parts import AUTH

_TOKEN = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
_NOT_FOUND = {"404": {"description": "Not a valid token: a plain page, never a redirect"}}

_IP = {
    "name": "ip",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
}
_NOT_AN_IP = {"400": {"description": "Not an IP address"}}
PATHS: dict[str, Any] = {
    "/v1/webhooks": {
        "get": {
            "summary": "Webhook delivery: cursor, batch being retried, last error, dead letters",
            "security": AUTH,
            "responses": {"200": {"description": "The dispatcher's state"}},
        }
    },
    "/v3/mail/send": {
        "post": {
            "summary": "SendGrid v3 mail send, for tools that speak SendGrid (see the README's table)",
            "security": AUTH,
            "responses": {
                "202": {"description": "Accepted; X-Message-Id is the batch id"},
                "400": {"description": "SendGrid-shaped errors[]"},
                "401": {"description": "Missing or wrong API key"},
                "422": {
                    "description": "SendGrid-shaped errors[]: a template too expensive to render"
                },
            },
        }
    },
    "/v1/warmup/status": {
        "get": {
            "summary": "Every warming IP: day n of N, per provider today's budgets and sends",
            "security": AUTH,
            "responses": {"200": {"description": "Warmup status"}},
        }
    },
    "/v1/warmup/ips/{ip}": {
        "parameters": [_IP],
        "get": {
            "summary": "An IP's warmup",
            "security": AUTH,
            "responses": {
                "200": {"description": "Its warmup"},
                **_NOT_AN_IP,
                "404": {"description": "Not warming"},
            },
        },
        "put": {
            "summary": "Start (or change) an IP's warmup: {schedule, pool?, started_on?}",
            "security": AUTH,
            "responses": {"200": {"description": "Its warmup"}, "400": {"description": "Invalid"}},
        },
        "delete": {
            "summary": "Treat the IP as warm",
            "security": AUTH,
            "responses": {
                "204": {"description": "Done"},
                **_NOT_AN_IP,
                "404": {"description": "Not warming"},
            },
        },
    },
    "/v1/warmup/ips/{ip}/{action}": {
        "post": {
            "summary": "Pause (hold at today's day) or resume an IP's warmup",
            "security": AUTH,
            "parameters": [
                _IP,
                {
                    "name": "action",
                    "in": "path",
                    "required": True,
                    "schema": {"enum": ["pause", "resume"]},
                },
            ],
            "responses": {
                "200": {"description": "Its warmup"},
                **_NOT_AN_IP,
                "404": {"description": "Not warming"},
            },
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
    "/t/o/{token}": {
        "get": {
            "summary": "Open pixel: a 1x1 GIF, not cached; records an `opened` event",
            "parameters": [_TOKEN],
            "responses": {"200": {"description": "image/gif"}, **_NOT_FOUND},
        }
    },
    "/t/c/{token}": {
        "get": {
            "summary": "Click: 302 to the link's original URL; records a `clicked` event",
            "parameters": [_TOKEN],
            "responses": {"302": {"description": "Redirect to the original URL"}, **_NOT_FOUND},
        }
    },
    "/t/u/{token}": {
        "get": {
            "summary": "Unsubscribe confirmation page with a button; does not unsubscribe",
            "parameters": [_TOKEN],
            "responses": {"200": {"description": "text/html"}, **_NOT_FOUND},
        },
        "post": {
            "summary": "RFC 8058 one-click unsubscribe (body List-Unsubscribe=One-Click)",
            "parameters": [_TOKEN],
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "properties": {"List-Unsubscribe": {"const": "One-Click"}},
                        }
                    }
                },
            },
            "responses": {
                "200": {"description": "Unsubscribed (again: nothing changes)"},
                "400": {"description": "Without List-Unsubscribe=One-Click"},
                **_NOT_FOUND,
            },
        },
    },
}
