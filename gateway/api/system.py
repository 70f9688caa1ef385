"""``GET /healthz`` (liveness and Redis) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.api.common import METRICS, STORE, json_response
from gateway.api.openapi_parts import AUTH, error_responses


async def healthz(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(request.app[STORE].ping(), timeout=2)
    except Exception as exc:  # health reports; it never raises
        return json_response({"status": "unhealthy", "redis": str(exc)[:200]}, 503)
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    gauges = await request.app[STORE].gauges()
    body, content_type = request.app[METRICS].exposition(gauges, request.headers.get("Accept"))
    return web.Response(
        body=body,
        headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff"},
    )


ROUTES = [web.get("/healthz", healthz), web.get("/metrics", metrics)]

PATHS: dict[str, Any] = {
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
}
