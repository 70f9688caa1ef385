"""The suppression list in Redis (the model and key layout: ``core.suppressions``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from core.shards import Shard, Shards
from core.store.base import Arg, Client, Script
from core.suppressions import (
    BUCKETS,
    Suppression,
    bucket_of,
    canonical,
    decode_entry,
    field,
    pack_entry,
)


class Suppressions:
    """Entries live in the shard of their address; each shard counts its own (``count`` adds
    them up)."""

    def __init__(self, client: Client, shards: Shards) -> None:
        self.redis = client
        self.shards = shards
        self._script = Script(client, "suppress.lua")
        self._suppressed = Script(client, "suppressed.lua")

    async def add_many(
        self, entries: Iterable[tuple[str, str | None, str, str | None]], *, at: float | None = None
    ) -> int:
        """Add or replace (address, category, reason, source) entries; returns how many are new.

        Addresses must already be normalized (``core.addresses.normalize_address``)."""
        stamp = time.time() if at is None else at
        calls: dict[Shard, tuple[list[str], list[Arg]]] = {}
        for given, category, reason, source in entries:
            address = canonical(given)
            bucket = bucket_of(address)
            shard = self.shards.of_bucket(bucket)
            buckets, args = calls.setdefault(shard, ([shard.keys.suppression_count], ["add"]))
            buckets.append(shard.keys.suppression_bucket(bucket))
            args += [field(address, category), pack_entry(reason, stamp, source)]
        added = 0
        for buckets, args in calls.values():  # one atomic call per shard
            added += int(await self._script(buckets, args))
        return added

    async def add(
        self,
        address: str,
        *,
        reason: str,
        source: str | None = None,
        category: str | None = None,
    ) -> bool:
        return await self.add_many([(address, category, reason, source)]) == 1

    async def remove(self, address: str, category: str | None = None) -> bool:
        address = canonical(address)
        shard = self.shards.of_address(address)
        bucket_keys = [shard.keys.suppression_count, self.shards.bucket_key(address)]
        return int(await self._script(bucket_keys, ["remove", field(address, category), ""])) == 1

    async def check(
        self, address: str, category: str | None, *, transactional: bool = False
    ) -> Suppression | None:
        """The entry that stops mail of ``category`` to ``address``: global first.

        Transactional mail (a receipt, a password reset) is not stopped by an
        unsubscribe, only by hard bounces, complaints and manual entries; the
        accept script applies the same rule."""
        (found,) = await self.check_many([(address, category, transactional)])
        return found

    async def check_many(
        self, checks: Sequence[tuple[str, str | None, bool]]
    ) -> list[Suppression | None]:
        """``check`` for each (address, category, transactional), in one script call per
        shard (``core/lua/suppressed.lua``): what a worker asks about the jobs of one read.
        One call, not a pipeline of one HMGET each: a command costs the client ~25 us in a
        pipeline, a script's argument ~1 us."""
        asked: list[list[str]] = []
        calls: dict[Shard, tuple[list[str], list[Arg], list[int]]] = {}
        for i, (given, category, _) in enumerate(checks):
            address = canonical(given)
            names = [address] if category is None else [address, field(address, category)]
            asked.append(names)
            bucket = bucket_of(address)
            shard = self.shards.of_bucket(bucket)
            buckets, args, order = calls.setdefault(shard, ([], [], []))
            buckets.append(shard.keys.suppression_bucket(bucket))
            args += [len(names), *names]
            order.append(i)
        values: list[list[Any]] = [[] for _ in checks]
        found = await asyncio.gather(*(self._suppressed(b, a) for b, a, _ in calls.values()))
        for (_, _, order), flat in zip(calls.values(), found, strict=True):
            at = 0
            for i in order:
                values[i] = flat[at : at + len(asked[i])]
                at += len(asked[i])
        return [
            _stopping(names, found_values, transactional)
            for names, found_values, (_, _, transactional) in zip(
                asked, values, checks, strict=True
            )
        ]

    async def of(self, address: str) -> list[Suppression]:
        """Every entry for ``address``: global and per category."""
        address = canonical(address)
        found: dict[Any, Any] = await self.redis.hgetall(self.shards.bucket_key(address))
        prefix = f"{address} ".encode()
        return sorted(
            (
                decode_entry(k, v)
                for k, v in found.items()
                if k == address.encode() or k.startswith(prefix)
            ),
            key=lambda s: (s.category is not None, s.category or ""),
        )

    async def count(self) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards.all:
                pipe.get(shard.keys.suppression_count)
            counts = await pipe.execute()
        return sum(int(n or 0) for n in counts)

    async def page(self, cursor: int, limit: int) -> tuple[list[Suppression], int | None]:
        """Entries from bucket ``cursor`` on, whole buckets, at least ``limit`` unless the end
        comes first; (entries, next cursor or None at the end). Order: by bucket."""
        out: list[Suppression] = []
        bucket = cursor
        while bucket < BUCKETS and len(out) < limit:
            span = range(bucket, min(BUCKETS, bucket + 256))
            async with self.redis.pipeline(transaction=False) as pipe:
                for b in span:
                    pipe.hgetall(self.shards.of_bucket(b).keys.suppression_bucket(b))
                replies = await pipe.execute()
            for b, found in zip(span, replies, strict=True):
                bucket = b + 1
                out.extend(decode_entry(k, v) for k, v in sorted(found.items()))
                if len(out) >= limit:
                    break
        return out, (bucket if bucket < BUCKETS else None)

    async def all(self) -> AsyncIterator[Suppression]:
        cursor: int | None = 0
        while cursor is not None:
            entries, cursor = await self.page(cursor, 5000)
            for entry in entries:
                yield entry


def _stopping(names: list[str], values: list[Any], transactional: bool) -> Suppression | None:
    """The first entry (global before category) that stops the mail; an unsubscribe does not
    stop transactional mail."""
    for name, value in zip(names, values, strict=True):
        if value is not None:
            entry = decode_entry(name, value)
            if not (transactional and entry.reason == "unsubscribe"):
                return entry
    return None
