"""The HTTP API's middlewares, outermost first: errors become ``{error, detail, field}``
answers (never a 5xx for bad input), the API key is checked before anything is read, and a
compressed body is let through only where the key was checked."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from core.errors import ClientError, Forbidden, NotFound, Unauthorized, UnsupportedMedia
from core.store import REDIS_ERRORS, ReplicasBehind, StoreError
from gateway.api.common import (
    API_KEY,
    INFLATE_WBITS,
    METRICS,
    SANDBOX_ONLY,
    SETTINGS,
    json_response,
)

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 1  # on a 503: Redis unreachable, or replicas behind, usually for seconds

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The server reads bodies as sent (``auto_decompress=False``): aiohttp would otherwise
# inflate a gzip body in the protocol, on the event loop and before any handler could
# check the API key (1 MB of gzip is 1 GiB of zeros).
RUNNER_OPTIONS: dict[str, Any] = {"auto_decompress": False}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    try:
        response = await handler(request)
    except ClientError as exc:
        response = json_response(exc.as_json(), exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status, "http_error"
        )
        response = json_response({"error": code, "detail": exc.reason}, exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except ReplicasBehind as exc:
        log.warning("not confirmed by enough replicas: %s", exc)
        response = json_response(_behind(exc, "Idempotency-Key" in request.headers), 503)
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    except (StoreError, *REDIS_ERRORS) as exc:  # any Redis call of a handler: not only accept's
        log.error("store unavailable: %s", exc)
        response = json_response(
            {"error": "unavailable", "detail": "the queue is unavailable; retry"}, 503
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        response = json_response(
            {"error": "internal", "detail": "unexpected error; it was logged"}, 500
        )
    route = request.match_info.route.resource
    metrics.count_request(route.canonical if route is not None else "unmatched", response.status)
    return response


def _behind(exc: ReplicasBehind, keyed: bool) -> dict[str, Any]:
    """The 503 of a batch the replicas have not confirmed (``SLUICE_REDIS_MIN_REPLICAS``)."""
    if keyed:
        detail = (
            "the batch may be queued but is not yet safe on enough replicas; "
            "retry with the same Idempotency-Key to learn its outcome"
        )
    else:
        detail = (
            "the batch is queued but not yet safe on enough replicas; it is sent unless the "
            "Redis primary fails first. Do not send it again as it is: without an "
            "Idempotency-Key that sends it twice (follow batch_id's messages instead)"
        )
    body: dict[str, Any] = {"error": "unavailable", "detail": detail}
    if exc.batch_id is not None:
        body["batch_id"] = exc.batch_id
    return body


def _on_metrics_listener(request: web.Request) -> bool:
    metrics_listen = request.app[SETTINGS].http.metrics_listen
    if metrics_listen is None or request.transport is None:
        return False
    sockname = request.transport.get_extra_info("sockname")
    return bool(sockname) and sockname[1] == metrics_listen.port


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API key on ``/v1/*``, ``/v3/*`` and ``/metrics``. The metrics listener
    (``SLUICE_METRICS_LISTEN``) serves ``/metrics`` alone, without the key: it is meant for
    a network only the scraper reaches."""
    if _on_metrics_listener(request):
        if request.path != "/metrics":
            raise NotFound("this listener serves /metrics only")
        return await handler(request)
    if request.path.startswith(("/v1/", "/v3/")) or request.path == "/metrics":
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        presented = token.strip().encode("utf-8", "surrogateescape")  # headers may carry any byte
        expected = request.app[API_KEY].reveal().encode()
        sandbox_key = request.app[SETTINGS].sandbox.api_key
        if scheme.lower() == "bearer" and hmac.compare_digest(presented, expected):
            pass
        elif (
            scheme.lower() == "bearer"
            and sandbox_key is not None
            and hmac.compare_digest(presented, sandbox_key.reveal().encode())
        ):
            if not _SANDBOX_KEY_ROUTES.fullmatch(f"{request.method} {request.path}"):
                raise Forbidden(
                    "the sandbox API key may only send (to the capture inbox) and read "
                    "/v1/sandbox/messages"
                )
            request[SANDBOX_ONLY] = True
        else:
            raise Unauthorized("send 'Authorization: Bearer <api key>'")
    return await handler(request)


# what the sandbox key (SLUICE_SANDBOX_API_KEY) may do: send, always into the capture inbox
_SANDBOX_KEY_ROUTES = re.compile(
    r"POST /v1/messages|POST /v3/mail/send|GET /v1/sandbox/messages(/[^/]+)?"
)


@web.middleware
async def encoding_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Compressed bodies only where the API key was checked first, and only gzip/deflate."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity") and (
        encoding not in INFLATE_WBITS or not request.path.startswith(("/v1/", "/v3/"))
    ):
        raise UnsupportedMedia(
            "Content-Encoding must be identity, or gzip or deflate on /v1 and /v3",
            field="Content-Encoding",
        )
    return await handler(request)


MIDDLEWARES = [errors_middleware, auth_middleware, encoding_middleware]
