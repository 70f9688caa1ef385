"""The one Redis access layer: connection pool, key names, Lua scripts.

Every multi-key step is a Lua script from ``core/lua/`` loaded once and called
through a typed method here. On the accept path, Redis errors become
``StoreError`` (the API answers 503); the workers retry on any Redis error.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from core import keys
from core.errors import SluiceError
from core.events import event_of
from core.suppressions import Suppressions, bucket_key, canonical, pack_entry
from core.suppressions import field as suppression_field

RETENTION_SECONDS = 7 * 86400  # batch content and message records outlive the longest deferral
EVENTS_MAXLEN = 2_000_000  # approximate cap on the events stream
UNVERIFIED_KEPT = 1000  # unverified inbound reports kept to look at; the counter counts them all
MAX_CLAIMED_CHARS = 200  # a quoted Message-ID is short; a longer one is cut before storing


class StoreError(SluiceError):
    """Redis could not be reached or answered with an error."""


_U64_MAX = 2**64 - 1


def valid_stream_id(text: str) -> bool:
    """``<ms>-<seq>`` with both parts within Redis's 64-bit range."""
    ms, _, seq = text.partition("-")
    return ms.isascii() and seq.isascii() and int(ms) <= _U64_MAX and int(seq) <= _U64_MAX


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _lines(value: Any) -> list[str]:
    text = _text(value or b"")
    return text.split("\n") if text else []


def _script(name: str) -> str:
    return resources.files("core").joinpath("lua", name).read_text()


@dataclass(frozen=True)
class Accepted:
    replay: bool  # True: the Idempotency-Key was seen before; response is the first answer
    digest: str  # the digest stored with the first answer
    response: str  # the answer without the policy outcomes
    outcomes: list[str]  # per accepted recipient, what the contact policy decided


ReportKind = Literal["complained", "bounced"]
# message record field per kind: when the first report of that kind was recorded
_REPORT_FLAGS: dict[str, str] = {"complained": "rc", "bounced": "rb"}


@dataclass(frozen=True)
class FirstReport:
    """The first report of its kind about a message, recorded: its event id, and the warming IP
    and provider that sent the message (``None`` when a warm IP did)."""

    event_id: str
    ip: str | None
    provider: str | None


@dataclass(frozen=True)
class UnverifiedReport:
    """An inbound report that named no message Sluice signed, so changed nothing."""

    kind: str  # what the parser read: arf, dsn, autoreply, delivered, unknown
    claimed: str  # the Message-ID the report quotes ("" for none)
    peer: str  # the address that sent it
    at: float
    reason: str  # unsigned, bad signature, no Message-ID, not ours, unknown message


@dataclass(frozen=True)
class QueuedJob:
    entry_id: str  # stream entry id, "" for a job not read from the stream
    job: dict[str, Any]


class Store:
    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self._accept = client.register_script(_script("accept.lua"))
        self._complete = client.register_script(_script("complete.lua"))
        self._promote = client.register_script(_script("promote.lua"))
        self._engage = client.register_script(_script("engage.lua"))
        self._warmup = client.register_script(_script("warmup.lua"))
        self._warmup_signal = client.register_script(_script("warmup_signal.lua"))
        self._report = client.register_script(_script("report.lua"))
        self.suppressions = Suppressions(client)

    # --- accept side --------------------------------------------------------

    async def accept(
        self,
        *,
        batch_id: str,
        content: bytes,
        recipients: list[dict[str, Any]],
        response: str,
        idempotency_key: str | None,
        digest: str,
        policy: bytes = b"",
        now: float | None = None,
    ) -> Accepted:
        """``policy``: msgpack of the rules and quiet windows (``gateway.accept``); ``now``
        defaults to the clock (tests pass their own)."""
        idem_key = keys.idempotency(idempotency_key) if idempotency_key else ""
        try:
            result = await self._accept(
                keys=[
                    keys.JOBS,
                    keys.DELAYED,
                    keys.EVENTS,
                    keys.STATS,
                    keys.batch(batch_id),
                    idem_key,
                    keys.PENDING_BY_DOMAIN,
                ],
                args=[
                    content,
                    RETENTION_SECONDS,
                    digest,
                    response,
                    msgpack.packb(recipients, use_bin_type=False),  # Lua cmsgpack has no bin type
                    keys.MESSAGE_PREFIX,
                    EVENTS_MAXLEN,
                    f"{time.time() if now is None else now:.3f}",
                    policy or msgpack.packb({}),
                ],
            )
        except RedisError as exc:
            raise StoreError(f"could not queue the batch: {exc}") from exc
        if _text(result[0]) == "replay":
            return Accepted(True, _text(result[1]), _text(result[2]), _lines(result[3]))
        return Accepted(False, digest, response, _lines(result[1]))

    async def idempotent_response(self, idempotency_key: str) -> Accepted | None:
        """The first answer to an earlier request with this key, if any."""
        digest, response, outcomes = await self.redis.hmget(
            keys.idempotency(idempotency_key), ["digest", "response", "outcomes"]
        )
        if digest is None or response is None:
            return None
        return Accepted(True, _text(digest), _text(response), _lines(outcomes))

    async def policy(self) -> bytes | None:
        blob: Any = await self.redis.get(keys.POLICY)
        return None if blob is None else bytes(blob)

    async def set_policy(self, text: str) -> None:
        await self.redis.set(keys.POLICY, text)

    # --- delivery side ------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(keys.JOBS, keys.DELIVERY_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_jobs(
        self, consumer: str, *, count: int, block_ms: int, own_pending: bool = False
    ) -> list[QueuedJob]:
        """New jobs for this consumer, or (own_pending) the ones it read and never acknowledged."""
        reply: Any = await self.redis.xreadgroup(
            keys.DELIVERY_GROUP,
            consumer,
            {keys.JOBS: "0" if own_pending else ">"},
            count=count,
            block=None if own_pending else block_ms,
        )
        return [job for _, entries in reply or [] for job in self._decode_entries(entries)]

    async def claim_stale(self, consumer: str, *, min_idle_ms: int, count: int) -> list[QueuedJob]:
        """Take over jobs another (dead) consumer read but never finished."""
        reply: Any = await self.redis.xautoclaim(
            keys.JOBS, keys.DELIVERY_GROUP, consumer, min_idle_time=min_idle_ms, count=count
        )
        return self._decode_entries(reply[1])

    @staticmethod
    def _decode_entries(entries: list[Any]) -> list[QueuedJob]:
        jobs = []
        for entry_id, fields in entries:
            if not fields:  # deleted while pending
                continue
            jobs.append(QueuedJob(_text(entry_id), msgpack.unpackb(fields[b"j"])))
        return jobs

    async def acknowledge(self, entry_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(keys.JOBS, keys.DELIVERY_GROUP, entry_id)
            pipe.xdel(keys.JOBS, entry_id)
            await pipe.execute()

    async def complete(
        self,
        *,
        entry_id: str,
        message_id: str,
        status: str,
        event: bytes,
        retry_job: dict[str, Any] | None = None,
        retry_at: float = 0.0,
        domain: str = "",
    ) -> None:
        """Record an outcome. ``domain``: the message became final (drop its pending count)."""
        await self._complete(
            keys=[
                keys.JOBS,
                keys.DELAYED,
                keys.EVENTS,
                keys.STATS,
                keys.message(message_id),
                keys.PENDING_BY_DOMAIN,
            ],
            args=[
                entry_id,
                keys.DELIVERY_GROUP,
                status,
                event,
                msgpack.packb(retry_job) if retry_job is not None else "",
                f"{retry_at:.3f}",
                EVENTS_MAXLEN,
                f"{time.time():.3f}",
                RETENTION_SECONDS,
                domain,
            ],
        )

    async def remember_sender(self, message_id: str, ip: str, provider: str) -> None:
        """The warming IP and provider that sent a message, for a complaint about it later."""
        await self.redis.hset(keys.message(message_id), mapping={"ip": ip, "pv": provider})

    async def record_report(
        self,
        message_id: str,
        kind: ReportKind,
        event: bytes,
        *,
        status: str = "",
        suppress: tuple[str, str, str] | None = None,
    ) -> FirstReport | None:
        """Record a bounce or complaint report about a message once (``core/lua/report.lua``):
        its event, its new ``status`` ("" keeps it) and a global suppression ``suppress`` =
        (address, reason, source). ``None``: the message is unknown, or a report of this kind
        was recorded before, and nothing changed."""
        now = time.time()
        address = canonical(suppress[0]) if suppress is not None else ""
        entry = pack_entry(suppress[1], now, suppress[2]) if suppress is not None else b""
        touched = [
            keys.message(message_id),
            keys.EVENTS,
            keys.STATS,
            bucket_key(address),
            keys.SUPPRESSION_COUNT,
        ]
        flag = _REPORT_FLAGS[kind]
        entry_field = suppression_field(address) if address else ""
        args: list[Any] = [flag, event, status, EVENTS_MAXLEN, f"{now:.3f}", RETENTION_SECONDS]
        result = await self._report(keys=touched, args=[*args, entry_field, entry])
        if not result:
            return None
        event_id, ip, provider = (_text(value) for value in result)
        return FirstReport(event_id, ip or None, provider or None)

    async def record_unverified(self, report: UnverifiedReport) -> None:
        """Keep an unverified report (the latest ``UNVERIFIED_KEPT``) and count it."""
        entry = msgpack.packb(
            [report.kind, report.claimed[:MAX_CLAIMED_CHARS], report.peer, report.at, report.reason]
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.INBOUND_UNVERIFIED, entry)
            pipe.ltrim(keys.INBOUND_UNVERIFIED, 0, UNVERIFIED_KEPT - 1)
            pipe.incr(keys.INBOUND_UNVERIFIED_COUNT)
            await pipe.execute()

    async def unverified_reports(self, limit: int = 100) -> tuple[int, list[UnverifiedReport]]:
        """How many unverified reports came in all, and the latest ``limit`` (newest first)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.INBOUND_UNVERIFIED_COUNT)
            pipe.lrange(keys.INBOUND_UNVERIFIED, 0, max(0, limit - 1))
            count, entries = await pipe.execute()
        return int(count or 0), [UnverifiedReport(*msgpack.unpackb(e)) for e in entries]

    async def engage(
        self, message_id: str, event: bytes, *, click_window: float = 0.0
    ) -> tuple[str, bool]:
        """Record an open, click or unsubscribe; (event id, flagged as a machine's by timing)."""
        [result] = await self.engage_many([(message_id, event, click_window)])
        return result

    async def engage_many(self, items: list[tuple[str, bytes, float]]) -> list[tuple[str, bool]]:
        """Several engagement events, (message id, event, click window) each, in one call."""
        args: list[Any] = [EVENTS_MAXLEN, f"{time.time():.3f}", keys.MESSAGE_PREFIX]
        for message_id, event, click_window in items:
            args += [message_id, event, click_window]
        try:
            flat = await self._engage(keys=[keys.EVENTS, keys.STATS], args=args)
        except RedisError as exc:
            raise StoreError(f"could not record the events: {exc}") from exc
        return [(_text(flat[i]), bool(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def warmup_take(self, args: list[Any]) -> tuple[str, float]:
        """One message of warmup budget (``core/lua/warmup.lua``): (IP taken or "", wait)."""
        ip, wait = await self._warmup(keys=[], args=args)
        return _text(ip), float(wait)

    async def warmup_signal(
        self,
        ip: str,
        provider: str,
        outcome: str,
        now: float,
        *,
        thresholds: tuple[float, float, float],
        min_attempts: int,
        day: str,
    ) -> str:
        """Record a warming IP's SMTP outcome (sent, deferred, bounced, complained); returns
        "paused" or "resumed" when that changed its hold, else ""."""
        target = f"{ip}:{provider}"
        template = msgpack.packb({"ip": ip, "provider": provider, "message_id": None})
        result = await self._warmup_signal(
            keys=[
                keys.WARMUP_SIGNALS + target,
                keys.WARMUP_HOLDS,
                keys.EVENTS,
                keys.WARMUP_DAILY + target,
                keys.WARMUP_LAST,
            ],
            args=[
                target,
                f"{now:.3f}",
                outcome,
                *thresholds,
                min_attempts,
                EVENTS_MAXLEN,
                template,
                day,
                ip,
            ],
        )
        return _text(result)

    async def promote_due(self, *, now: float, limit: int = 500) -> int:
        return int(await self._promote(keys=[keys.DELAYED, keys.JOBS], args=[f"{now:.3f}", limit]))

    async def batch_content(self, batch_id: str) -> dict[str, Any] | None:
        blob = await self.redis.get(keys.batch(batch_id))
        if blob is None:
            return None
        content: dict[str, Any] = msgpack.unpackb(blob)
        return content

    async def message_status(self, message_id: str) -> str | None:
        status = await self.redis.hget(keys.message(message_id), "s")
        return None if status is None else _text(status)

    async def message_context(self, message_id: str) -> dict[str, Any] | None:
        """Email, contact, category and metadata of a message, from its first event."""
        found = await self.message(message_id)
        if found is None or not found["events"]:
            return None
        first = found["events"][0]
        return {
            "status": found["status"],
            **{k: first.get(k) for k in ("email", "contact_id", "category", "metadata")},
        }

    # --- destinations -----------------------------------------------------------

    async def publish_destinations(self, worker: str, snapshot: list[dict[str, Any]]) -> None:
        await self.redis.hset(
            keys.DESTINATIONS, worker, msgpack.packb({"at": time.time(), "hosts": snapshot})
        )

    async def destinations(self) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """(pending messages per domain, host states published by live workers)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.PENDING_BY_DOMAIN)
            pipe.hgetall(keys.DESTINATIONS)
            pending, published = await pipe.execute()
        hosts: list[dict[str, Any]] = []
        for worker, blob in published.items():
            snapshot = msgpack.unpackb(blob)
            if time.time() - snapshot["at"] < 30:  # a dead worker's state is stale
                hosts += [{"worker": _text(worker), **h} for h in snapshot["hosts"]]
        return {_text(k): int(v) for k, v in pending.items()}, hosts

    # --- reading ------------------------------------------------------------

    async def message(self, message_id: str) -> dict[str, Any] | None:
        status, event_ids = await self.redis.hmget(keys.message(message_id), ["s", "ev"])
        if status is None:
            return None
        events = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for event_id in _text(event_ids or b"").split(","):
                if event_id:
                    pipe.xrange(keys.EVENTS, event_id, event_id)
            for reply in await pipe.execute():
                for entry_id, fields in reply:
                    events.append(event_of(_text(entry_id), fields))
        return {"message_id": message_id, "status": _text(status), "events": events}

    async def latest_events(self, count: int) -> list[dict[str, Any]]:
        """The ``count`` most recent events, newest first."""
        reply: Any = await self.redis.xrevrange(keys.EVENTS, "+", "-", count=count)
        return [event_of(_text(entry_id), fields) for entry_id, fields in reply]

    async def events_after(self, cursor: str | None, limit: int) -> list[dict[str, Any]]:
        start = "-"
        if cursor:
            ms, seq = (int(part) for part in cursor.split("-"))
            ms, seq = (ms, seq + 1) if seq < _U64_MAX else (ms + 1, 0)
            if ms > _U64_MAX:
                return []  # nothing can come after the largest id
            start = f"{ms}-{seq}"
        reply: Any = await self.redis.xrange(keys.EVENTS, start, "+", count=limit)
        return [event_of(_text(entry_id), fields) for entry_id, fields in reply]

    async def gauges(self) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(keys.JOBS)
            pipe.zcard(keys.DELAYED)
            pipe.hgetall(keys.STATS)
            jobs, delayed, stats = await pipe.execute()
        out = {"jobs_in_stream": int(jobs), "jobs_delayed": int(delayed)}
        out.update({f"total_{_text(k)}": int(v) for k, v in stats.items()})
        return out


@asynccontextmanager
async def open_store(url: str, max_connections: int = 32) -> AsyncIterator[Store]:
    # A blocking pool: hundreds of concurrent deliveries wait for a connection
    # instead of failing with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        socket_timeout=30,
        socket_connect_timeout=10,
    )
    client = aioredis.Redis(connection_pool=pool)
    try:
        try:
            await client.ping()
        except RedisError as exc:
            raise StoreError(f"cannot reach Redis at {url}: {exc}") from exc
        yield Store(client)
    finally:
        await client.aclose()
        await pool.aclose()  # a pool given to Redis() is not closed by it
