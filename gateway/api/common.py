"""What every handler of the API shares: the typed application state, JSON answers, the
query-string and body checks."""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from core.clock import Clock
from core.errors import PayloadTooLarge, UnsupportedMedia, ValidationError
from core.metrics import ApiMetrics
from core.settings import Secret, Settings
from core.store import Store
from gateway.intake import Intake, decode_json
from gateway.sandbox import Sandbox

STORE = web.AppKey("store", Store)
SETTINGS = web.AppKey("settings", Settings)
API_KEY = web.AppKey("api_key", Secret)
METRICS = web.AppKey("metrics", ApiMetrics)
PREPARE = web.AppKey("prepare", ThreadPoolExecutor)
INTAKE = web.AppKey("intake", Intake)
REDIS_URL = web.AppKey("redis_url", str)
SANDBOX = web.AppKey("sandbox", Sandbox)
SANDBOX_ONLY = web.RequestKey("sandbox_only", bool)  # sent with the sandbox API key
CLOCK: web.AppKey[Clock] = web.AppKey("clock")  # the time of day accepts run at (core.clock)

_LIMIT = re.compile(r"[0-9]{1,4}")
# gzip, or zlib-wrapped (or raw) deflate, as HTTP's Content-Encoding names them
INFLATE_WBITS = {"gzip": 16 + 15, "x-gzip": 16 + 15, "deflate": 32 + 15}


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=body if isinstance(body, str) else json.dumps(body, ensure_ascii=False),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def query(request: web.Request, *allowed: str) -> MultiMapping[str]:
    """The query string, refused if it names a parameter this route does not know (a typo
    such as ``?limt=10`` would otherwise be silently ignored) or repeats one."""
    found = request.query
    for name in found:
        if name not in allowed:
            known = ", ".join(f"'{a}'" for a in allowed) or "none"
            raise ValidationError(
                f"unknown query parameter {name[:40]!r} (this route takes {known})", field=name[:40]
            )
        if len(found.getall(name)) > 1:
            raise ValidationError(f"query parameter {name!r} given more than once", field=name)
    return found


def limit_of(request: web.Request, default: int = 100) -> int:
    """``?limit=``: a whole number from 1 to 1000."""
    text = request.query.get("limit", str(default))
    if not _LIMIT.fullmatch(text) or not 1 <= int(text) <= 1000:
        raise ValidationError("'limit' must be a whole number from 1 to 1000", field="limit")
    return int(text)


def require_json(request: web.Request) -> None:
    ctype = request.headers.get("Content-Type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMedia("send the body as application/json", field="Content-Type")


def _inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    """A compressed body, inflated to at most ``limit`` bytes (never more is allocated)."""
    inflater = zlib.decompressobj(INFLATE_WBITS[encoding])
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise ValidationError(
            f"the body is not valid {encoding} data: {exc}", field="Content-Encoding"
        ) from exc
    if len(body) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the body inflates to more than {limit} bytes")
    if not inflater.eof:
        raise ValidationError(f"the {encoding} body is truncated", field="Content-Encoding")
    return body


async def read_body(request: web.Request) -> bytes:
    """The request body, inflated off the event loop (bounded) if it came compressed; the
    middleware let only gzip and deflate through, and only after the API key."""
    raw = await request.read()
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    limit = request.app[SETTINGS].http.max_body_bytes
    return await asyncio.get_running_loop().run_in_executor(
        request.app[PREPARE], _inflate, raw, encoding, limit
    )


async def json_body(request: web.Request, *, optional: bool = False) -> Any:
    """The JSON body (``{}`` for an empty optional one), parsed on the prepare thread."""
    raw = await read_body(request)
    if optional and not raw:
        return {}
    require_json(request)
    return await request.app[INTAKE].parse(raw)


__all__ = [
    "API_KEY",
    "CLOCK",
    "INTAKE",
    "METRICS",
    "PREPARE",
    "REDIS_URL",
    "SANDBOX",
    "SANDBOX_ONLY",
    "SETTINGS",
    "STORE",
    "decode_json",
    "json_body",
    "json_response",
    "limit_of",
    "query",
    "read_body",
    "require_json",
]
