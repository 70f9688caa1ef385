"""What waits in the queue, read for ``GET /v1/queues`` and changed by its bulk actions
(``gateway/queues.py``): each shard's jobs stream (ready, or in flight with a worker), its
delayed set (scheduled, held by quiet hours or a cap, retrying, held by warmup) and the
jobs paused campaigns park."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from core import keys
from core.events import event_of
from core.jobs import Job
from core.shards import Shard, Shards
from core.store.base import EVENTS_MAXLEN, RETENTION_SECONDS, Arg, Client, Script, text


@dataclass(frozen=True)
class Waiting:
    """One job that waits: where it is, and what a view needs to explain it."""

    shard: Shard
    place: str  # "stream", "delayed" or "parked"
    job: Job
    raw: bytes  # the job as stored (the member of its set, or the stream entry's field)
    entry_id: str = ""  # stream entries only
    due: float = 0.0  # delayed: when it goes back to the stream
    in_flight: bool = False  # stream: a worker read it and has not finished
    campaign: str = ""  # parked: the paused campaign that holds it


class QueueStore:
    def __init__(self, client: Client, shards: Shards) -> None:
        self.redis = client
        self.shards = shards
        self._release = Script(client, "release.lua")
        self._cancel = Script(client, "cancel.lua", libraries=["timeline.lua"])

    async def waiting(self, limit: int) -> tuple[list[Waiting], bool]:
        """Up to ``limit`` waiting jobs of each place of each shard; (jobs, whether any place
        had more than the limit)."""
        campaigns = sorted(text(c) for c in await self.redis.smembers(keys.PARKED_CAMPAIGNS))
        found: list[Waiting] = []
        truncated = False
        for shard in self.shards.all:
            where = shard.keys
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xrange(where.jobs, "-", "+", count=limit + 1)
                pipe.xpending_range(where.jobs, keys.DELIVERY_GROUP, "-", "+", limit + 1)
                pipe.zrange(where.delayed, 0, limit, withscores=True)
                for campaign in campaigns:
                    pipe.zrange(where.parked(campaign), 0, limit)
                replies = await pipe.execute(raise_on_error=False)
            stream, pending, delayed, *parked = replies
            if isinstance(pending, ResponseError):  # no group yet (no worker ever started)
                pending = []
            for reply in (stream, delayed, *parked):
                if isinstance(reply, Exception):
                    raise reply
            flying = {text(p["message_id"]) for p in pending}
            truncated |= len(stream) > limit or len(delayed) > limit
            for entry_id, fields in stream[:limit]:
                raw = fields[b"j"]
                entry = text(entry_id)
                found.append(
                    Waiting(shard, "stream", Job.unpack(raw), raw, entry, in_flight=entry in flying)
                )
            for raw, score in delayed[:limit]:
                found.append(Waiting(shard, "delayed", Job.unpack(raw), raw, due=float(score)))
            for campaign, members in zip(campaigns, parked, strict=True):
                truncated |= len(members) > limit
                for raw in members[:limit]:
                    found.append(Waiting(shard, "parked", Job.unpack(raw), raw, campaign=campaign))
        return found, truncated

    async def last_events(
        self, shard: Shard, message_ids: Sequence[str]
    ) -> list[dict[str, Any] | None]:
        """Each message's latest event (None: no record)."""
        where = shard.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                pipe.hget(where.message(message_id), "ev")
            timelines = await pipe.execute() if message_ids else []
        last = [text(t).rsplit(",", 1)[-1] if t else "" for t in timelines]
        async with self.redis.pipeline(transaction=False) as pipe:
            for event_id in last:
                if event_id:
                    pipe.xrange(where.events, event_id, event_id)
            replies = iter(await pipe.execute() if any(last) else [])
        found: list[dict[str, Any] | None] = []
        for event_id in last:
            reply = next(replies) if event_id else []
            found.append(event_of(event_id, reply[0][1]) if reply else None)
        return found

    async def release(self, shard: Shard, delayed: Sequence[bytes]) -> list[bool]:
        """Move delayed jobs of one shard into its stream now; for each, whether it was
        still there to move."""
        if not delayed:
            return []
        args: list[Arg] = list(delayed)
        moved = await self._release([shard.keys.delayed, shard.keys.jobs], args)
        return [bool(flag) for flag in moved]

    async def cancel(
        self, shard: Shard, held_in: str, jobs: Sequence[tuple[Job, bytes, bytes, str]]
    ) -> list[bool]:
        """Cancel waiting jobs of one shard that wait in one set (``held_in``: the delayed
        set, or a parked set's key): (job, as stored, its event, recipient domain) each; for
        each, whether it was still there (``core/lua/cancel.lua``)."""
        if not jobs:
            return []
        where = shard.keys
        touched = [where.events, where.stats, where.pending, held_in]
        args: list[Arg] = [EVENTS_MAXLEN, f"{time.time():.3f}", RETENTION_SECONDS]
        for job, raw, event, domain in jobs:
            touched.append(where.message(job.message_id))
            args += [raw, event, domain]
        return [bool(flag) for flag in await self._cancel(touched, args)]
