"""Statistics rollups in Redis (the model: ``core/rollups.py``): each shard's events read
after its rollup cursor, counted with the cursor's move in one script, and read back
summed over shards."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core import keys, rollups
from core.events import event_of
from core.shards import Shard, Shards
from core.store.base import Arg, Client, Script, after, text

LEASE_MS = 10_000


@dataclass
class Page:
    """Counters to add for a page of one shard's events, and where its cursor moves."""

    shard: Shard
    began_after: str  # the cursor the page was read after ("" for the stream's start)
    last: str  # the last event of the page
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (res, bucket, field)
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # campaign, class, reply


class RollupStore:
    def __init__(self, client: Client, shards: Shards) -> None:
        self.redis = client
        self.shards = shards
        self._apply = Script(client, "rollup.lua")
        self._lease = Script(client, "lease.lua")

    async def lease(self, owner: str) -> bool:
        """Take or keep the one counter's lease (every gateway runs a counter; one counts)."""
        return bool(await self._lease([keys.ROLLUP_LEASE], [owner, LEASE_MS]))

    async def events(self, shard: Shard, limit: int) -> tuple[str, list[dict[str, Any]]]:
        """(the shard's rollup cursor, up to ``limit`` events after it)."""
        cursor = text(await self.redis.get(shard.keys.rollup_cursor) or b"")
        start = after(cursor) if cursor else "-"
        if start is None:
            return cursor, []
        reply: Any = await self.redis.xrange(shard.keys.events, start, "+", count=limit)
        found = []
        for entry_id, fields in reply:
            event = event_of(text(entry_id), fields)
            event["entry_id"] = text(entry_id)
            found.append(event)
        return cursor, found

    async def senders(self, shard: Shard, message_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(sending IP, pool) that delivered each message ("" when unknown or expired)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                pipe.hmget(shard.keys.message(message_id), ["si", "sp"])
            replies = await pipe.execute() if message_ids else []
        return [(text(ip or b""), text(pool or b"")) for ip, pool in replies]

    async def apply(
        self,
        page: Page,
        *,
        hourly_seconds: int,
        daily_seconds: int,
    ) -> bool:
        """Add a page's counts and move the cursor, unless another counter moved it first;
        the hourly and daily hashes it touches are kept that long (``StatsSettings``)."""
        where = page.shard.keys
        names: list[str] = []
        ttls: list[Arg] = []
        index: dict[str, int] = {}

        def key_number(name: str, ttl: int) -> int:
            if name not in index:
                names.append(name)
                ttls.append(ttl)
                index[name] = len(names) + 1  # KEYS[1] is the cursor
            return index[name]

        increments: list[Arg] = []
        for (resolution, bucket, counter), n in page.counts.items():
            if resolution == rollups.TOTALS:
                number = key_number(where.rollup_totals(), 0)
            else:
                hourly = resolution == rollups.HOURLY
                kept = hourly_seconds if hourly else daily_seconds
                number = key_number(where.rollup(resolution, bucket), kept)
            increments += [number, counter, n]
        samples: list[Arg] = []
        for campaign, bounce_class, reply in page.samples:
            sample_key = where.bounce_samples(campaign, bounce_class)
            samples += [key_number(sample_key, hourly_seconds), reply]
        args: list[Arg] = [page.began_after, page.last, len(names), *ttls]
        args += [len(page.counts), *increments, *samples]
        return bool(await self._apply([where.rollup_cursor, *names], args))

    async def counters(self, resolution: str, buckets: Sequence[str]) -> dict[str, Counter[str]]:
        """Each bucket's counters, summed over shards."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket in buckets:
                for shard in self.shards.all:
                    pipe.hgetall(shard.keys.rollup(resolution, bucket))
            replies = await pipe.execute() if buckets else []
        found: dict[str, Counter[str]] = {}
        position = 0
        for bucket in buckets:
            total: Counter[str] = Counter()
            for _ in self.shards.all:
                for name, value in replies[position].items():
                    total[text(name)] += int(value)
                position += 1
            found[bucket] = total
        return found

    async def totals(self) -> Counter[str]:
        """The counters since the data began (``rollups.SERIES``), summed over shards."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards.all:
                pipe.hgetall(shard.keys.rollup_totals())
            replies = await pipe.execute()
        total: Counter[str] = Counter()
        for reply in replies:
            for name, value in reply.items():
                total[text(name)] += int(value)
        return total

    async def bounce_samples(self, campaign: str, bounce_class: str) -> list[str]:
        """The latest replies of the campaign's bounces of a class, over shards."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards.all:
                pipe.lrange(shard.keys.bounce_samples(campaign, bounce_class), 0, 2)
            replies = await pipe.execute()
        return [text(r) for reply in replies for r in reply][:3]
