"""``GET /v1/stats`` (counts and rates per hour or day, grouped and filtered by dimension),
``GET /v1/campaigns`` and ``GET /v1/campaigns/{campaign}`` (a campaign's report), read from
the rollups (``gateway/stats.py``)."""

from __future__ import annotations

import functools
import logging
from typing import Any

from aiohttp import web

from core import rollups, validate
from core.errors import NotFound, ValidationError
from gateway import stats
from gateway.api.common import STORE, json_body, json_response, query
from gateway.api.openapi_parts import AUTH, answered

log = logging.getLogger(__name__)

RANGE = ("from", "to")


async def get_stats(request: web.Request) -> web.Response:
    params = query(request, "group_by", "resolution", *RANGE, *rollups.DIMENSIONS)
    asked = stats.query_of(dict(params))
    return json_response(await stats.stats(request.app[STORE], asked))


async def get_campaigns(request: web.Request) -> web.Response:
    params = query(request, *RANGE)
    asked = stats.query_of(dict(params))
    return json_response(await stats.campaigns(request.app[STORE], asked))


async def get_campaign(request: web.Request) -> web.Response:
    campaign = request.match_info["campaign"]
    validate.campaign(campaign)
    params = query(request, *RANGE, "provider", "ip", "pool")
    asked = stats.query_of(dict(params))
    store = request.app[STORE]
    report = await stats.campaign_report(store, campaign, asked)
    if report is None:
        raise NotFound(f"no messages of campaign {campaign!r} in this range")
    paused = (await store.control.paused()).get(campaign)
    held = (await store.control.parked([campaign]))[campaign]
    return json_response({**report, "paused": paused, "held": held})


async def pause_campaign(request: web.Request) -> web.Response:
    """Hold the campaign's messages: queued ones wait, new ones are accepted and wait too."""
    campaign = validate.campaign(request.match_info["campaign"])
    query(request)
    body = await json_body(request, optional=True) or {}
    reason = body.get("reason", "paused through the API") if isinstance(body, dict) else None
    if not isinstance(reason, str) or len(reason) > 200:
        raise ValidationError("'reason' must be text of up to 200 characters", field="reason")
    paused = await request.app[STORE].control.pause(campaign, reason)
    log.info("campaign %s paused (%s)", campaign, reason)
    return json_response({"campaign": campaign, "paused": True, "was_paused": not paused})


async def resume_campaign(request: web.Request) -> web.Response:
    """Release what the campaign held into the queue."""
    campaign = validate.campaign(request.match_info["campaign"])
    query(request)
    was, released = await request.app[STORE].control.resume(campaign)
    log.info("campaign %s resumed: %d messages released", campaign, released)
    return json_response(
        {"campaign": campaign, "paused": False, "was_paused": was, "released": released}
    )


ROUTES = [
    web.get("/v1/stats", get_stats),
    web.get("/v1/campaigns", get_campaigns),
    web.get("/v1/campaigns/{campaign}", get_campaign),
    web.post("/v1/campaigns/{campaign}/pause", pause_campaign),
    web.post("/v1/campaigns/{campaign}/resume", resume_campaign),
]

# --- OpenAPI ---------------------------------------------------------------------------------


def _param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string", "maxLength": 64},
    }


_TIME = "a date (2026-11-28), an ISO 8601 time or unix seconds"
_ok = functools.partial(answered, errors=(400, 401, 404))

_RANGE_PARAMS = [
    _param("from", f"start of the range, {_TIME}; default: 24 hours (hour) or 30 days back"),
    _param("to", f"end of the range, {_TIME}; default: now"),
]
_COUNTS = {
    "type": "object",
    "properties": {
        **{name: {"type": "integer"} for name in rollups.COUNTS},
        "bounced_class": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}
_RATES = {
    "rates": {
        "type": "object",
        "description": "delivery and hard_bounce over delivered+bounced; complaint, open "
        "(messages a person opened), click and unsubscribe over delivered; null when the "
        "denominator is 0",
        "properties": {name: {"type": ["number", "null"]} for name in stats.RATES},
    },
    "denominators": {"type": "object"},
    "low_volume": {
        "type": "boolean",
        "description": f"delivered+bounced under {stats.MIN_VOLUME}: too few to act on",
    },
}
_ROW = {
    "type": "object",
    "required": ["start", "counts", "rates", "low_volume"],
    "properties": {
        "start": {"type": "string"},
        **{name: {"type": "string"} for name in rollups.DIMENSIONS},
        "counts": _COUNTS,
        **_RATES,
    },
}


_CAMPAIGN = {
    "name": "campaign",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 64},
}


def _campaign_action(summary: str, answer: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": AUTH,
            "parameters": [_CAMPAIGN],
            "responses": _ok(answer, {"type": "object"}),
        }
    }


PATHS: dict[str, Any] = {
    "/v1/stats": {
        "get": {
            "summary": "Counts and rates per hour or day, grouped and filtered by dimension",
            "security": AUTH,
            "parameters": [
                _param(
                    "group_by",
                    f"comma-separated: {', '.join(rollups.DIMENSIONS)}",
                    {"type": "string", "maxLength": 200},
                ),
                _param("resolution", "hour or day (default)", {"enum": ["hour", "day"]}),
                *_RANGE_PARAMS,
                *(_param(name, f"only this {name}") for name in rollups.DIMENSIONS),
            ],
            "responses": _ok(
                "A row per bucket and group that counted anything",
                {
                    "type": "object",
                    "required": ["resolution", "group_by", "rows"],
                    "properties": {
                        "resolution": {"type": "string"},
                        "group_by": {"type": "array", "items": {"type": "string"}},
                        "rows": {"type": "array", "items": _ROW},
                    },
                },
            ),
        }
    },
    "/v1/campaigns": {
        "get": {
            "summary": "Campaigns with messages in the range, most accepted first",
            "security": AUTH,
            "parameters": _RANGE_PARAMS,
            "responses": _ok(
                "The campaigns",
                {
                    "type": "object",
                    "properties": {"campaigns": {"type": "array", "items": {"type": "object"}}},
                },
            ),
        }
    },
    "/v1/campaigns/{campaign}/pause": _campaign_action(
        "Pause a campaign: its messages are held until it is resumed", "Paused"
    ),
    "/v1/campaigns/{campaign}/resume": _campaign_action(
        "Resume a campaign and release what it held", "Resumed"
    ),
    "/v1/campaigns/{campaign}": {
        "get": {
            "summary": "A campaign's report: funnel, providers, bounce classes, links, timeline",
            "security": AUTH,
            "parameters": [
                _CAMPAIGN,
                *_RANGE_PARAMS,
                *(_param(name, f"only this {name}") for name in ("provider", "ip", "pool")),
            ],
            "responses": _ok("The report", {"type": "object"}),
        }
    },
}
