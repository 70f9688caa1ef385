"""The HTTP API: one module per resource, each with its handlers (``ROUTES``) and, beside
them, its part of the OpenAPI document (``PATHS``, ``SCHEMAS``); ``gateway.app`` mounts them.

| module | routes |
|---|---|
| ``messages`` | ``POST /v1/messages``, ``GET /v1/messages/{message_id}``, ``GET /v1/events`` |
| ``sendgrid`` | ``POST /v3/mail/send`` (SendGrid's body, translated) |
| ``suppressions`` | ``/v1/suppressions``, ``/v1/suppressions/{email}`` |
| ``policy`` | ``GET|PUT /v1/policy`` |
| ``warmup`` | ``/v1/warmup/status``, ``/v1/warmup/ips/{ip}`` and its pause/resume |
| ``webhooks`` | ``/v1/webhooks`` and its dead letters |
| ``destinations`` | ``GET /v1/destinations`` |
| ``stats`` | ``GET /v1/stats``, ``GET /v1/campaigns``, ``GET /v1/campaigns/{campaign}`` and its pause/resume |
| ``alerts`` | ``GET|PUT /v1/alerts/rules``, ``GET /v1/alerts`` |
| ``queues`` | ``GET /v1/queues``, ``POST /v1/queues/actions`` |
| ``sandbox`` | ``GET /v1/sandbox/messages`` and one captured message (``gateway/sandbox.py``) |
| ``system`` | ``GET /healthz``, ``GET /metrics`` |
| ``openapi`` | ``GET /openapi.json`` (assembles every module's description) |
| ``tracking`` | the description of ``/t/*`` (served by ``tracking.endpoints``) |

``common`` holds the typed application state and the request helpers, ``openapi_parts`` the
pieces of the description several modules use.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api import (
    alerts,
    destinations,
    messages,
    openapi,
    policy,
    queues,
    sandbox,
    sendgrid,
    stats,
    suppressions,
    system,
    warmup,
    webhooks,
)

__all__ = ["routes"]


def routes() -> list[web.RouteDef]:
    """Every route of the API (the tracking routes come with their ``Tracking`` object)."""
    found: list[web.RouteDef] = []
    for module in (
        messages,
        sendgrid,
        suppressions,
        policy,
        warmup,
        webhooks,
        destinations,
        stats,
        alerts,
        queues,
        sandbox,
        system,
        openapi,
    ):
        found += module.ROUTES
    return found
