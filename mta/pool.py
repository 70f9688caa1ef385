"""Pooled SMTP connections per destination (host, port).

A connection is reused for many messages (up to ``messages_per_connection``),
at most ``max_per_host`` are open to one host, idle ones are closed after
``idle_timeout``. aiosmtplib errors are translated here into Sluice's
``TransientDeliveryError`` / ``PermanentDeliveryError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import aiosmtplib

from core.errors import PermanentDeliveryError, TransientDeliveryError
from core.settings import HostPort

log = logging.getLogger(__name__)


@dataclass
class _Connection:
    smtp: aiosmtplib.SMTP
    sent: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Reply:
    code: int
    text: str


class _HostPool:
    def __init__(self, limit: int) -> None:
        self.idle: list[_Connection] = []
        self.open = 0
        self.slots = asyncio.Semaphore(limit)


class SmtpPool:
    def __init__(
        self,
        *,
        ehlo_name: str,
        timeout: float,
        max_per_host: int,
        messages_per_connection: int,
        idle_timeout: float = 30.0,
    ) -> None:
        self.ehlo_name = ehlo_name
        self.timeout = timeout
        self.max_per_host = max_per_host
        self.messages_per_connection = messages_per_connection
        self.idle_timeout = idle_timeout
        self._hosts: dict[HostPort, _HostPool] = defaultdict(lambda: _HostPool(self.max_per_host))
        self._closed = False

    async def _connect(self, dest: HostPort) -> _Connection:
        smtp = aiosmtplib.SMTP(
            hostname=dest.host,
            port=dest.port,
            local_hostname=self.ehlo_name,
            timeout=self.timeout,
            start_tls=None,  # opportunistic STARTTLS when offered
            validate_certs=False,  # MX certificates are rarely valid for the MX name; see docs
        )
        try:
            await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            cls = PermanentDeliveryError if exc.code >= 500 else TransientDeliveryError
            raise cls(
                f"{dest} greeted with {exc.code} {exc.message}", smtp_code=exc.code, host=str(dest)
            ) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise TransientDeliveryError(
                f"cannot connect to {dest}: {exc}", host=str(dest)
            ) from exc
        return _Connection(smtp)

    async def send(self, dest: HostPort, sender: str, recipient: str, message: bytes) -> Reply:
        """One SMTP transaction; returns the final reply or raises a DeliveryError."""
        if self._closed:
            raise TransientDeliveryError("the SMTP pool is closed", host=str(dest))
        host = self._hosts[dest]
        async with host.slots:
            conn = host.idle.pop() if host.idle else None
            if conn is None:
                conn = await self._connect(dest)
                host.open += 1
            keep = False
            try:
                _, text = await conn.smtp.sendmail(sender, [recipient], message)
                conn.sent += 1
                keep = conn.sent < self.messages_per_connection
                return Reply(250, text)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refused = exc.recipients[0]
                keep = await self._reset(conn)
                raise self._classify(refused.code, refused.message, dest) from exc
            except aiosmtplib.SMTPResponseException as exc:
                keep = exc.code not in (421,) and await self._reset(conn)
                raise self._classify(exc.code, exc.message, dest) from exc
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                raise TransientDeliveryError(
                    f"{dest}: {type(exc).__name__}: {exc}", host=str(dest)
                ) from exc
            finally:
                if keep and not self._closed:
                    conn.last_used = time.monotonic()
                    host.idle.append(conn)
                else:
                    host.open -= 1
                    await self._close(conn)

    @staticmethod
    def _classify(
        code: int, text: str, dest: HostPort
    ) -> TransientDeliveryError | PermanentDeliveryError:
        detail = f"{dest} answered {code} {text}".strip()
        if 500 <= code < 600:
            return PermanentDeliveryError(detail, smtp_code=code, host=str(dest))
        return TransientDeliveryError(detail, smtp_code=code, host=str(dest))

    @staticmethod
    async def _reset(conn: _Connection) -> bool:
        try:
            await conn.smtp.rset()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            return False
        return True

    @staticmethod
    async def _close(conn: _Connection) -> None:
        try:
            if conn.smtp.is_connected:
                await asyncio.wait_for(conn.smtp.quit(), timeout=5)
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            conn.smtp.close()

    async def close_idle(self) -> None:
        cutoff = time.monotonic() - self.idle_timeout
        for host in self._hosts.values():
            stale = [c for c in host.idle if c.last_used < cutoff]
            host.idle = [c for c in host.idle if c.last_used >= cutoff]
            for conn in stale:
                host.open -= 1
                await self._close(conn)

    async def aclose(self) -> None:
        self._closed = True
        for host in self._hosts.values():
            idle, host.idle = host.idle, []
            for conn in idle:
                host.open -= 1
                with contextlib.suppress(Exception):
                    await self._close(conn)
