"""The sandbox's capture inbox, in Redis: what a ``"sandbox": true`` message would have sent,
kept for ``SLUICE_SANDBOX_RETENTION`` and listed newest first. Sandbox messages never enter
the queue, so nothing here can reach a delivery worker; the inbox is small (bounded by
``MAX_CAPTURED``) and lives in shard 0."""

from __future__ import annotations

import time
from typing import Any

import msgpack

from core import keys
from core.store.base import Client, text

MAX_CAPTURED = 10_000  # the oldest captures go first beyond this


class SandboxStore:
    def __init__(self, client: Client) -> None:
        self.redis = client

    async def capture(
        self, records: list[tuple[dict[str, Any], dict[str, Any]]], retention: float
    ) -> None:
        """Keep captured messages: each a (summary, whole record) pair, both with
        ``message_id`` and ``captured_at``; ``recent`` lists summaries, ``get`` gives the
        whole (its raw message and checks too)."""
        if not records:
            return
        now = time.time()
        ttl_ms = max(1000, int(retention * 1000))
        async with self.redis.pipeline(transaction=False) as pipe:
            for summary, record in records:
                name = record["message_id"]
                pipe.set(keys.sandbox_message(name), msgpack.packb(record), px=ttl_ms)
                pipe.set(keys.sandbox_summary(name), msgpack.packb(summary), px=ttl_ms)
            pipe.zadd(keys.SANDBOX_INDEX, {r["message_id"]: r["captured_at"] for _, r in records})
            pipe.zremrangebyscore(keys.SANDBOX_INDEX, "-inf", now - retention)
            pipe.zremrangebyrank(keys.SANDBOX_INDEX, 0, -MAX_CAPTURED - 1)
            pipe.pexpire(keys.SANDBOX_INDEX, ttl_ms)
            await pipe.execute()

    async def recent(
        self, limit: int, before: tuple[float, str] | None = None
    ) -> list[dict[str, Any]]:
        """The newest captures' summaries, newest first; ``before``: the (captured_at,
        message_id) of the last one of the page before (several captures may share a time)."""
        names: list[str] = []
        high = "+inf"
        if before is not None:
            score, last = before
            same: Any = await self.redis.zrangebyscore(keys.SANDBOX_INDEX, score, score)
            # a reverse range orders captures of one time by id, descending: go on from there
            names = sorted((n for n in map(text, same) if n < last), reverse=True)[:limit]
            high = f"({score!r}"
        if len(names) < limit:
            older: Any = await self.redis.zrevrangebyscore(
                keys.SANDBOX_INDEX, high, "-inf", 0, limit - len(names)
            )
            names += [text(n) for n in older]
        if not names:
            return []
        values = await self.redis.mget([keys.sandbox_summary(n) for n in names])
        return [msgpack.unpackb(v) for v in values if v is not None]

    async def get(self, message_id: str) -> dict[str, Any] | None:
        value = await self.redis.get(keys.sandbox_message(message_id))
        return None if value is None else dict(msgpack.unpackb(value))
