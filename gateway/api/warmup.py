"""``/v1/warmup``: every warming IP's state, and starting, pausing, resuming and stopping a
warmup (``warmup.actions``, shared with ``sluice warmup``)."""

from __future__ import annotations

import time
from datetime import date
from typing import Any

from aiohttp import web

from core import validate
from core.errors import NotFound, ValidationError
from gateway.api.common import SETTINGS, STORE, json_body, json_response
from gateway.api.openapi_parts import AUTH
from warmup import actions
from warmup.gate import load_ips
from warmup.gate import status as warmup_status

_BODY_FIELDS = {"pool", "schedule", "started_on"}


async def get_warmup_status(request: web.Request) -> web.Response:
    return json_response(await warmup_status(request.app[STORE]))


async def get_warmup_ip(request: web.Request) -> web.Response:
    ip = validate.ip(request.match_info["ip"])
    config = (await load_ips(request.app[STORE])).get(ip)
    if config is None:
        raise NotFound(f"{ip} is not warming up")
    return json_response(config.as_json())


async def put_warmup_ip(request: web.Request) -> web.Response:
    ip = validate.ip(request.match_info["ip"])
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) - _BODY_FIELDS:
        raise ValidationError("body: {schedule, pool?, started_on?}", field="body")
    pools = {s.ip: s.pool for s in request.app[SETTINGS].delivery.ips}
    pool = validate.pool(body.get("pool") or pools.get(ip, "default"))
    try:
        started = date.fromisoformat(body["started_on"]) if body.get("started_on") else None
    except (TypeError, ValueError) as exc:
        raise ValidationError("'started_on' must be a date YYYY-MM-DD", field="started_on") from exc
    config = await actions.start(
        request.app[STORE],
        ip,
        schedule=body.get("schedule", actions.DEFAULT_SCHEDULE),
        pool=pool,
        started_on=started,
        now=time.time(),
    )
    return json_response(config.as_json())


async def pause_or_resume_warmup(request: web.Request) -> web.Response:
    ip = validate.ip(request.match_info["ip"])
    change = actions.pause if request.match_info["action"] == "pause" else actions.resume
    config = await change(request.app[STORE], ip, time.time())
    return json_response(config.as_json())


async def delete_warmup_ip(request: web.Request) -> web.Response:
    await actions.stop(request.app[STORE], validate.ip(request.match_info["ip"]))
    return web.Response(status=204)


ROUTES = [
    web.get("/v1/warmup/status", get_warmup_status),
    web.get("/v1/warmup/ips/{ip}", get_warmup_ip),
    web.put("/v1/warmup/ips/{ip}", put_warmup_ip),
    web.delete("/v1/warmup/ips/{ip}", delete_warmup_ip),
    web.post("/v1/warmup/ips/{ip}/{action:pause|resume}", pause_or_resume_warmup),
]

# --- OpenAPI ---------------------------------------------------------------------------------

_IP = {
    "name": "ip",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
}
_NOT_AN_IP = {"400": {"description": "Not an IP address"}}
PATHS: dict[str, Any] = {
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
}
