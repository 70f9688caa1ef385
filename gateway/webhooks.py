"""Webhooks out: every event, in order, batched, signed per Standard Webhooks, retried.

One dispatcher runs at a time across all gateways sharing the Redis (a lease
renewed every few seconds). It reads the events stream after its cursor, takes
up to ``batch_size`` events as one JSON array and stores that batch in Redis
before the first attempt, so a restarted gateway sends the very same batch with
the same ``webhook-id`` (receivers deduplicate on it). Then:

- a 2xx moves the cursor past the batch;
- ``410 Gone`` disables the endpoint (nothing is lost: the batch waits, and
  ``POST /v1/webhooks/enable`` resumes);
- anything else (other statuses, timeouts, refused connections, a target that
  resolves to a private address) is retried with exponential backoff and +-20%
  jitter, from ``retry_base`` up to an hour apart, for ``max_retry`` (24 h); a
  batch still failing then goes to the dead-letter list and the cursor moves on.
  ``POST /v1/webhooks/dead-letters/replay`` sends them again, before new events.

Signature (``webhook-signature: v1,<base64>``): HMAC-SHA256 with the secret's
bytes (``whsec_<base64>``) over ``"{webhook-id}.{webhook-timestamp}.{body}"``.

SSRF guard: unless ``SLUICE_WEBHOOK_ALLOW_PRIVATE=true`` the target must resolve
only to global addresses: loopback, private, link-local, CGNAT, unique-local,
IPv4-mapped private and the like are refused, checked on the addresses the
connection actually uses (a resolver that filters them), so DNS rebinding does
not get around it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from core.settings import WebhookSettings
from core.store import Store, WebhookBatch

log = logging.getLogger(__name__)

LEASE_SECONDS = 15
MAX_BACKOFF = 3600.0


class RefusedTarget(Exception):
    """The webhook URL points at an address the SSRF guard refuses."""


def check_literal(url: str) -> None:
    """``RefusedTarget`` for a URL whose host is a private or reserved IP address literal (a
    name is checked when it is resolved: ``GlobalOnlyResolver``)."""
    host = urlsplit(url).hostname or ""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return
    if not is_allowed(str(literal)):
        raise RefusedTarget(f"{host} is a private or reserved address")


def is_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class GlobalOnlyResolver(AbstractResolver):
    """Resolves like aiohttp does, then keeps only global addresses (none: refused)."""

    def __init__(self, setting: str = "SLUICE_WEBHOOK_ALLOW_PRIVATE") -> None:
        self._inner = DefaultResolver()
        self._setting = setting  # what lifts the refusal, for the message

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if is_allowed(r["host"])]
        if not allowed:
            raise RefusedTarget(
                f"{host} resolves only to private or reserved addresses "
                f"({', '.join(r['host'] for r in found)}); set {self._setting}=true to allow them"
            )
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def backoff(attempts: int, base: float) -> float:
    delay: float = min(base * 2.0 ** max(0, attempts - 1), MAX_BACKOFF)
    return delay * random.uniform(0.8, 1.2)


class WebhookDispatcher:
    def __init__(self, store: Store, settings: WebhookSettings) -> None:
        assert settings.url is not None
        self.store = store
        self.state = store.webhooks
        self.settings = settings
        self.url = settings.url
        self.retry_base = settings.retry_base
        self.owner = secrets.token_hex(8)
        self.stopping = asyncio.Event()

    # --- batches ----------------------------------------------------------------------

    async def _next_batch(self) -> WebhookBatch | None:
        """The batch to send: one being retried, a replayed dead letter, or new events."""
        batch = await self.state.inflight()
        if batch is not None:
            return batch
        replay = await self.state.next_replay()
        if replay is not None:
            batch = dataclasses.replace(
                replay, attempts=0, first=time.time(), due=0.0, replayed=True
            )
        else:
            events, cursor = await self.store.events_after(
                await self.state.cursor(), self.settings.batch_size
            )
            if not events or cursor is None:
                return None
            body = json.dumps(events, ensure_ascii=False, separators=(",", ":")).encode()
            batch = WebhookBatch(
                id=f"wh_{events[0]['id']}_{events[-1]['id']}",
                body=body,
                last=cursor,
                count=len(events),
                first=time.time(),
            )
        await self.state.save_inflight(batch)
        return batch

    async def _post(self, session: aiohttp.ClientSession, batch: WebhookBatch) -> tuple[int, str]:
        if not self.settings.allow_private:
            check_literal(self.url)
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Sluice-Webhooks/1",
            "webhook-id": batch.id,
            "webhook-timestamp": str(stamp),
        }
        if self.settings.secret is not None:
            headers["webhook-signature"] = signature(
                self.settings.secret.reveal(), batch.id, stamp, batch.body
            )
        async with session.post(
            self.url, data=batch.body, headers=headers, allow_redirects=False
        ) as answer:
            text = (await answer.content.read(512)).decode("utf-8", "replace")
            return answer.status, text

    async def _attempt(self, session: aiohttp.ClientSession, batch: WebhookBatch) -> None:
        batch = dataclasses.replace(batch, attempts=batch.attempts + 1)
        try:
            status, text = await self._post(session, batch)
            error = None if 200 <= status < 300 else f"HTTP {status}: {text[:200]}"
        except (aiohttp.ClientError, TimeoutError, OSError, RefusedTarget) as exc:
            status, error = 0, f"{type(exc).__name__}: {exc}"[:300]
        now = time.time()
        if error is None:
            await self.state.delivered(batch, now)
            return
        await self.state.failed(error, now)
        if status == 410:
            log.error("webhook endpoint %s answered 410 Gone: disabled", self.url)
            await self.state.disable(f"410 Gone at {int(now)}")
            # not the batch's fault: the attempt does not count
            await self.state.save_inflight(dataclasses.replace(batch, attempts=batch.attempts - 1))
            return
        if now - batch.first >= self.settings.max_retry:
            log.error(
                "webhook batch %s failed for %.0fs: dead-lettered (%s)",
                batch.id,
                now - batch.first,
                error,
            )
            await self.state.dead_letter(dataclasses.replace(batch, error=error))
            return
        batch = dataclasses.replace(batch, due=now + backoff(batch.attempts, self.retry_base))
        log.warning(
            "webhook batch %s attempt %d failed (%s); next in %.1fs",
            batch.id,
            batch.attempts,
            error,
            batch.due - now,
        )
        await self.state.save_inflight(batch)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=None if self.settings.allow_private else GlobalOnlyResolver(), limit=4
        )
        timeout = aiohttp.ClientTimeout(total=15, connect=5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while not self.stopping.is_set():
                try:
                    await self._step(session)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhook dispatcher step failed")
                    await self._sleep(2.0)

    async def _step(self, session: aiohttp.ClientSession) -> None:
        """One turn: hold the lease (one dispatcher across gateways), then send what is due."""
        if not await self.state.hold_lease(self.owner, LEASE_SECONDS * 1000):
            await self._sleep(LEASE_SECONDS / 3)
            return
        if await self.state.disabled():
            await self._sleep(1.0)
            return
        batch = await self._next_batch()
        if batch is None:
            await self._sleep(0.25)
            return
        wait = batch.due - time.time()
        if wait > 0:
            await self._sleep(min(wait, LEASE_SECONDS / 3))
            return
        await self._attempt(session, batch)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
