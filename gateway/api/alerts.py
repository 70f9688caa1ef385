"""``GET|PUT /v1/alerts/rules`` (the alert rules, ``gateway/alerts.py``) and ``GET
/v1/alerts`` (what is firing)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway import alerts
from gateway.api.common import STORE, json_body, json_response, query
from gateway.api.openapi_parts import AUTH, answered

log = logging.getLogger(__name__)


async def get_rules(request: web.Request) -> web.Response:
    query(request)
    return json_response({"rules": await alerts.rules_of(request.app[STORE])})


async def put_rules(request: web.Request) -> web.Response:
    rules = alerts.validate_rules(await json_body(request))
    await request.app[STORE].control.set_alert_rules(rules)
    log.info("alert rules changed: %s", [r["name"] for r in rules])
    return json_response({"rules": rules})


async def get_alerts(request: web.Request) -> web.Response:
    query(request)
    firing = await request.app[STORE].control.alerts()
    return json_response({"alerts": sorted(firing.values(), key=lambda a: a["since"])})


ROUTES = [
    web.get("/v1/alerts/rules", get_rules),
    web.put("/v1/alerts/rules", put_rules),
    web.get("/v1/alerts", get_alerts),
]

_RULE = {
    "type": "object",
    "required": list(alerts.RULE_FIELDS),
    "properties": {
        "name": {"type": "string", "maxLength": 64},
        "metric": {"enum": list(alerts.METRICS)},
        "scope": {"enum": list(alerts.SCOPES)},
        "window_seconds": {"type": "integer", "minimum": 3600, "maximum": 30 * 86400},
        "warn": {"type": "number", "minimum": 0, "maximum": 1},
        "critical": {"type": "number", "minimum": 0, "maximum": 1},
        "min_volume": {"type": "integer", "minimum": 1},
        "action": {"enum": list(alerts.ACTIONS)},
    },
}
_RULES = {
    "type": "object",
    "required": ["rules"],
    "properties": {"rules": {"type": "array", "items": _RULE}},
}


PATHS: dict[str, Any] = {
    "/v1/alerts/rules": {
        "get": {
            "summary": "The alert rules (the defaults until some are saved)",
            "security": AUTH,
            "responses": answered("The rules", _RULES),
        },
        "put": {
            "summary": "Replace the alert rules",
            "security": AUTH,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _RULES}}},
            "responses": answered("The rules saved", _RULES),
        },
    },
    "/v1/alerts": {
        "get": {
            "summary": "Alerts firing now, oldest first",
            "security": AUTH,
            "responses": answered(
                "The alerts",
                {
                    "type": "object",
                    "properties": {"alerts": {"type": "array", "items": {"type": "object"}}},
                },
            ),
        }
    },
}
