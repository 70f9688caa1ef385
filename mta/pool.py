"""Pooled SMTP connections, with limits per MX host and per destination domain.

A connection is reused for many messages (up to ``messages_per_connection``)
and closed after ``idle_timeout`` unused. Per (source IP, destination address)
at most ``per_host`` connections are open; per recipient domain at most
``per_domain`` transactions run at once. Both are this worker's share of the
configured totals.

When a destination pushes back (421, "too many connections", "try again
later": a reply classified as throttling), the whole destination slows down:
its connection limit is halved, it gets no new transaction until its backoff
expires (doubling on each push-back, up to ``MAX_BACKOFF``), and its limit grows
back by one for every ``limit`` successful deliveries (AIMD, as TCP does).

aiosmtplib errors are translated here into Sluice's delivery errors, carrying
the verdict of ``mta.replies.classify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosmtplib

from core.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from mta.replies import classify
from mta.routing import Destination

log = logging.getLogger(__name__)

MAX_BACKOFF = 900.0


@dataclass
class _Connection:
    smtp: aiosmtplib.SMTP
    sent: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Reply:
    code: int
    text: str


class _Waitable:
    """Wake-all waiting: a waiter re-checks its condition when woken."""

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class _DomainGate(_Waitable):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.active = 0

    async def acquire(self) -> None:
        while self.active >= self.limit:
            await self.wait()
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self.wake()


class HostState(_Waitable):
    """One (source IP, destination address): its connections and its back-pressure state."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.max_limit = limit
        self.limit = limit
        self.open = 0
        self.idle: list[_Connection] = []
        self.backoff = 0.0
        self.backoff_until = 0.0
        self.successes = 0
        self.recent: deque[tuple[float, int, str]] = deque(maxlen=10)

    def throttled(self, base: float) -> None:
        self.limit = max(1, self.limit // 2)
        self.backoff = min(max(base, self.backoff * 2), MAX_BACKOFF)
        self.backoff_until = time.monotonic() + self.backoff
        self.successes = 0

    def succeeded(self) -> None:
        self.successes += 1
        if self.successes >= self.limit:
            self.successes = 0
            self.backoff = 0.0
            if self.limit < self.max_limit:
                self.limit += 1
                self.wake()


class SmtpPool:
    def __init__(
        self,
        *,
        ehlo_name: str,
        timeout: float,
        per_host: int,
        per_domain: int,
        messages_per_connection: int,
        idle_timeout: float = 30.0,
        throttle_backoff: float = 30.0,
    ) -> None:
        self.ehlo_name = ehlo_name
        self.timeout = timeout
        self.per_host = per_host
        self.per_domain = per_domain
        self.messages_per_connection = messages_per_connection
        self.idle_timeout = idle_timeout
        self.throttle_backoff = throttle_backoff
        self.hosts: dict[tuple[str, str, int], HostState] = {}
        self.domains: dict[str, _DomainGate] = {}
        self._closed = False

    def host_state(self, dest: Destination, source_ip: str | None) -> HostState:
        key = (source_ip or "", dest.address, dest.port)
        state = self.hosts.get(key)
        if state is None:
            state = self.hosts[key] = HostState(self.per_host)
        return state

    async def send(
        self,
        dest: Destination,
        domain: str,
        sender: str,
        recipient: str,
        message: bytes,
        *,
        source_ip: str | None = None,
    ) -> Reply:
        """One SMTP transaction; returns the final reply or raises a DeliveryError."""
        if self._closed:
            raise TransientDeliveryError("the SMTP pool is closed", host=str(dest))
        host = self.host_state(dest, source_ip)
        wait = host.backoff_until - time.monotonic()
        if wait > 0:
            raise TransientDeliveryError(
                f"{dest.host} asked us to slow down; backing off {wait:.0f}s more",
                host=str(dest), throttle=True, retry_after=wait,
            )  # fmt: skip
        gate = self.domains.get(domain) if dest.via == "mx" else None
        if gate is None and dest.via == "mx":
            gate = self.domains[domain] = _DomainGate(self.per_domain)
        if gate is not None:
            await gate.acquire()
        try:
            return await self._transaction(host, dest, sender, recipient, message, source_ip)
        finally:
            if gate is not None:
                gate.release()

    async def _checkout(
        self, host: HostState, dest: Destination, source_ip: str | None
    ) -> _Connection:
        while True:
            if host.idle:
                return host.idle.pop()
            if host.open < host.limit:
                host.open += 1
                try:
                    return await self._connect(dest, source_ip)
                except BaseException:
                    host.open -= 1
                    host.wake()
                    raise
            await host.wait()

    async def _checkin(self, host: HostState, conn: _Connection, keep: bool) -> None:
        if keep and not self._closed and host.open <= host.limit:
            conn.last_used = time.monotonic()
            host.idle.append(conn)
        else:
            host.open -= 1
            await self._close(conn)
        host.wake()

    async def _connect(self, dest: Destination, source_ip: str | None) -> _Connection:
        smtp = aiosmtplib.SMTP(
            hostname=dest.address,
            port=dest.port,
            local_hostname=self.ehlo_name,
            source_address=(source_ip, 0) if source_ip else None,
            timeout=self.timeout,
            # Opportunistic STARTTLS when offered; with tls=required, no STARTTLS means no mail.
            start_tls=True if dest.require_tls else None,
            validate_certs=False,  # MX certificates rarely match; see docs/architecture.md
        )
        try:
            await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise self._error(exc.code, exc.message, dest) from exc
        except aiosmtplib.SMTPException as exc:
            if dest.require_tls and "STARTTLS" in str(exc).upper():
                raise TransientDeliveryError(
                    f"{dest} does not offer STARTTLS and the route requires TLS", host=str(dest)
                ) from exc
            raise TransientDeliveryError(
                f"cannot connect to {dest}: {exc}", host=str(dest)
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise TransientDeliveryError(
                f"cannot connect to {dest}: {exc}", host=str(dest)
            ) from exc
        return _Connection(smtp)

    async def _transaction(
        self,
        host: HostState,
        dest: Destination,
        sender: str,
        recipient: str,
        message: bytes,
        source_ip: str | None,
    ) -> Reply:
        conn = await self._checkout(host, dest, source_ip)
        keep = False
        try:
            _, text = await conn.smtp.sendmail(sender, [recipient], message)
            conn.sent += 1
            keep = conn.sent < self.messages_per_connection
            host.succeeded()
            host.recent.append((time.time(), 250, text[:200]))
            return Reply(250, text)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            keep = await self._reset(conn)
            raise self._failed(host, refused.code, refused.message, dest) from exc
        except aiosmtplib.SMTPResponseException as exc:
            keep = exc.code != 421 and await self._reset(conn)
            raise self._failed(host, exc.code, exc.message, dest) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Includes a connection dropped after the final dot: the message may have
            # arrived, but without a reply it is retried (at least once).
            host.recent.append((time.time(), 0, f"{type(exc).__name__}: {exc}"[:200]))
            raise TransientDeliveryError(
                f"{dest}: {type(exc).__name__}: {exc}", host=str(dest)
            ) from exc
        finally:
            await self._checkin(host, conn, keep)

    def _failed(self, host: HostState, code: int, text: str, dest: Destination) -> DeliveryError:
        host.recent.append((time.time(), code, text[:200]))
        error = self._error(code, text, dest)
        if error.throttle:
            host.throttled(self.throttle_backoff)
            error.retry_after = host.backoff
            log.warning(
                "%s pushed back (%d %s): %d connections at most, backing off %.0fs",
                dest, code, text[:80], host.limit, host.backoff,
            )  # fmt: skip
        return error

    @staticmethod
    def _error(code: int, text: str, dest: Destination) -> DeliveryError:
        verdict = classify(code, text)
        kind: Callable[..., DeliveryError] = (
            PermanentDeliveryError if verdict.outcome == "permanent" else TransientDeliveryError
        )
        return kind(
            f"{dest} answered {code} {text}".strip(),
            smtp_code=code,
            host=str(dest),
            bounce_class=verdict.bounce_class or "other",
            hard=verdict.hard,
            throttle=verdict.throttle,
        )

    @staticmethod
    async def _reset(conn: _Connection) -> bool:
        try:
            await conn.smtp.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            return False
        return True

    @staticmethod
    async def _close(conn: _Connection) -> None:
        try:
            if conn.smtp.is_connected:
                await asyncio.wait_for(conn.smtp.quit(), timeout=5)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            conn.smtp.close()

    async def close_idle(self) -> None:
        cutoff = time.monotonic() - self.idle_timeout
        for host in self.hosts.values():
            stale = [c for c in host.idle if c.last_used < cutoff]
            host.idle = [c for c in host.idle if c.last_used >= cutoff]
            for conn in stale:
                host.open -= 1
                await self._close(conn)
            if stale:
                host.wake()

    def snapshot(self) -> list[dict[str, object]]:
        """State of every destination host, for ``GET /v1/destinations``."""
        now = time.monotonic()
        return [
            {
                "source_ip": source or None,
                "address": address,
                "port": port,
                "connections": host.open,
                "idle": len(host.idle),
                "limit": host.limit,
                "backoff_seconds": round(max(0.0, host.backoff_until - now), 1),
                "recent_replies": [
                    {"at": round(at, 3), "code": code or None, "text": text}
                    for at, code, text in host.recent
                ],
            }
            for (source, address, port), host in self.hosts.items()
        ]

    async def aclose(self) -> None:
        self._closed = True
        for host in self.hosts.values():
            idle, host.idle = host.idle, []
            for conn in idle:
                host.open -= 1
                with contextlib.suppress(Exception):
                    await self._close(conn)
