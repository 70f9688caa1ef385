"""``GET /healthz`` (liveness and Redis) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiohttp import web

from gateway import queues
from gateway.api.common import METRICS, STORE, json_response
from gateway.api.openapi_parts import AUTH, error_responses
from warmup import gate


async def healthz(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(request.app[STORE].ping(), timeout=2)
    except Exception as exc:  # health reports; it never raises
        return json_response({"status": "unhealthy", "redis": str(exc)[:200]}, 503)
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    store = request.app[STORE]
    gauges = await store.gauges()
    waiting: dict[tuple[str, str], tuple[int, float]] = {}
    for item in (await queues.items(store))[0]:
        count, oldest = waiting.get((item.state, item.provider), (0, 0.0))
        waiting[(item.state, item.provider)] = (count + 1, max(oldest, item.age))
    firing: dict[str, int] = {}
    for alert in (await store.control.alerts()).values():
        firing[alert["rule"]] = firing.get(alert["rule"], 0) + 1
    warming: dict[tuple[str, str], tuple[int, int]] = {}
    for ip in (await gate.status(store))["ips"]:
        for provider, state in ip["providers"].items():
            if state["daily_budget"] is not None:
                warming[(ip["ip"], provider)] = (state["daily_budget"], state["sent_today"])
    gauges = dataclasses.replace(gauges, waiting=waiting, alerts_firing=firing, warmup=warming)
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
