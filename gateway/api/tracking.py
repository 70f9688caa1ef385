"""The tracking routes' description: the open pixel, the click redirect and the one-click
unsubscribe (``tracking.endpoints`` serves them, with no API key: they are in every
message)."""

from __future__ import annotations

from typing import Any

_TOKEN = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
_NOT_FOUND = {"404": {"description": "Not a valid token: a plain page, never a redirect"}}

PATHS: dict[str, Any] = {
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
