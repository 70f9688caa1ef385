"""``GET /v1/destinations``: what is waiting for each recipient domain, and each worker's
connections, limits, backoff and last replies per destination host."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.common import STORE, json_response
from gateway.api.openapi_parts import AUTH, error_responses


async def get_destinations(request: web.Request) -> web.Response:
    """Per recipient domain: messages not yet final; per destination host: pools and replies."""
    pending, hosts = await request.app[STORE].destinations()
    domains = [{"domain": d, "pending": n} for d, n in sorted(pending.items(), key=lambda i: -i[1])]
    return json_response({"domains": domains, "hosts": hosts})


ROUTES = [web.get("/v1/destinations", get_destinations)]

PATHS: dict[str, Any] = {
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
}
