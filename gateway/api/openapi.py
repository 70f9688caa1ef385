"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``: assembled from the
``PATHS`` and ``SCHEMAS`` each resource module keeps beside its handlers (a change to one is a
change to the other)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from aiohttp import web

from gateway.api import (
    alerts,
    destinations,
    messages,
    policy,
    queues,
    sandbox,
    sendgrid,
    stats,
    suppressions,
    system,
    tracking,
    warmup,
    webhooks,
)
from gateway.api.common import SETTINGS, json_response
from gateway.api.openapi_parts import ERROR, error_responses

DESCRIBED: tuple[ModuleType, ...] = (
    messages,
    destinations,
    policy,
    suppressions,
    webhooks,
    sendgrid,
    warmup,
    stats,
    alerts,
    queues,
    sandbox,
    tracking,
    system,
)


def openapi_document(server_url: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for module in DESCRIBED:
        paths.update(module.PATHS)
        schemas.update(getattr(module, "SCHEMAS", {}))
    paths.update(PATHS)
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Sluice",
            "version": "0.1.0",
            "description": "Email delivery and deliverability gateway",
        },
        "servers": [{"url": server_url}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {**schemas, "Error": ERROR},
        },
        "paths": paths,
    }
    _add_common_errors(paths)
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


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(request.app[SETTINGS].http.public_url))


ROUTES = [web.get("/openapi.json", openapi)]

PATHS: dict[str, Any] = {
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1"}},
        }
    },
}
