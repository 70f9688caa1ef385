"""What holds mail back on purpose, in Redis: paused campaigns, the jobs they hold (parked
per shard until the campaign is resumed), and the alert rules and firing alerts that pause
them (``gateway/alerts.py``)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import msgpack

from core import keys
from core.jobs import QueuedJob
from core.shards import Shard, Shards
from core.store.base import EVENTS_MAXLEN, RETENTION_SECONDS, Arg, Client, Script, text

RELEASE_AT_ONCE = 1000


class ControlStore:
    def __init__(self, client: Client, shards: Shards) -> None:
        self.redis = client
        self.shards = shards
        self._park = Script(client, "park.lua", libraries=["timeline.lua"])
        self._unpark = Script(client, "unpark.lua")

    # --- paused campaigns ------------------------------------------------------------------

    async def _holds(self, key: str) -> dict[str, dict[str, Any]]:
        """What a hold hash (paused campaigns, paused senders) holds: name -> {since, reason}."""
        found: dict[Any, Any] = await self.redis.hgetall(key)
        return {text(name): msgpack.unpackb(value) for name, value in found.items()}

    async def _hold(self, key: str, name: str, reason: str) -> bool:
        """Hold ``name`` in a hold hash; False if it was held already (since then)."""
        entry = msgpack.packb({"since": round(time.time(), 3), "reason": reason})
        return bool(await self.redis.hsetnx(key, name, entry))

    async def paused(self) -> dict[str, dict[str, Any]]:
        """Paused campaigns: name -> {since, reason}."""
        return await self._holds(keys.PAUSED)

    async def pause(self, campaign: str, reason: str) -> bool:
        """Pause a campaign; False if it was paused already."""
        return await self._hold(keys.PAUSED, campaign, reason)

    async def resume(self, campaign: str) -> tuple[bool, int]:
        """Resume a campaign and release the jobs it held into the queue: (it was paused,
        jobs released)."""
        was = bool(await self.redis.hdel(keys.PAUSED, campaign))
        return was, await self._release(campaign)

    async def release_resumed(self) -> int:
        """Release what campaigns no longer paused still hold: a worker that read the paused
        list just before a resume may hold a job after the resume released the rest. Each
        worker calls this every half second; how many jobs it released."""
        candidates = {text(c) for c in await self.redis.smembers(keys.PARKED_CAMPAIGNS)}
        if not candidates:
            return 0
        paused = await self.paused()
        released = 0
        for campaign in candidates - set(paused):
            released += await self._release(campaign)
            await self.redis.srem(keys.PARKED_CAMPAIGNS, campaign)
            if (await self.parked([campaign]))[campaign]:  # parked meanwhile: next round
                await self.redis.sadd(keys.PARKED_CAMPAIGNS, campaign)
        return released

    async def _release(self, campaign: str) -> int:
        released = 0
        for shard in self.shards.all:
            while True:
                moved = int(
                    await self._unpark(
                        [shard.keys.parked(campaign), shard.keys.jobs], [RELEASE_AT_ONCE]
                    )
                )
                released += moved
                if moved < RELEASE_AT_ONCE:
                    break
        return released

    async def park(
        self, shard: Shard, campaign: str, held: Sequence[tuple[QueuedJob, bytes]]
    ) -> None:
        """Hold jobs of a paused campaign, all of one shard: (job as read, its event)."""
        await self.redis.sadd(keys.PARKED_CAMPAIGNS, campaign)  # before: a sweep finds it
        where = shard.keys
        touched = [where.jobs, where.events, where.parked(campaign)]
        args: list[Arg] = [
            keys.DELIVERY_GROUP,
            EVENTS_MAXLEN,
            f"{time.time():.3f}",
            RETENTION_SECONDS,
        ]
        for queued, event in held:
            touched.append(where.message(queued.job.message_id))
            args += [queued.entry_id, queued.job.pack(), event]
        await self._park(touched, args)
        # and after: a sweep that removed it meanwhile finds it again
        await self.redis.sadd(keys.PARKED_CAMPAIGNS, campaign)
        # the batches' content must outlive the pause: a week from now at least (two round
        # trips: the TTLs, then the EXPIREs needed; EXPIRE GT needs Redis 7)
        homes = {b: self.shards.home(b).keys for b in {queued.job.batch_id for queued, _ in held}}
        contents = [k for b, home in homes.items() for k in (home.batch(b), home.link_table(b))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in contents:
                pipe.ttl(key)
            ttls = await pipe.execute() if contents else []
        short = [
            k for k, ttl in zip(contents, ttls, strict=True) if 0 <= int(ttl) < RETENTION_SECONDS
        ]
        if short:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in short:
                    pipe.expire(key, RETENTION_SECONDS)
                await pipe.execute()

    async def parked(self, campaigns: Sequence[str]) -> dict[str, int]:
        """Jobs each campaign holds, over every shard."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for campaign in campaigns:
                for shard in self.shards.all:
                    pipe.zcard(shard.keys.parked(campaign))
            counts = await pipe.execute() if campaigns else []
        per = len(self.shards.all)
        return {c: sum(counts[i * per : (i + 1) * per]) for i, c in enumerate(campaigns)}

    # --- paused senders (IP x provider) -----------------------------------------------------

    async def paused_senders(self) -> dict[str, dict[str, Any]]:
        """Paused ``ip:provider`` pairs -> {since, reason}."""
        return await self._holds(keys.PAUSED_SENDERS)

    async def pause_sender(self, ip: str, provider: str, reason: str) -> bool:
        """Stop sending from ``ip`` to ``provider``; False if it was paused already."""
        return await self._hold(keys.PAUSED_SENDERS, f"{ip}:{provider}", reason)

    async def resume_sender(self, ip: str, provider: str) -> bool:
        return bool(await self.redis.hdel(keys.PAUSED_SENDERS, f"{ip}:{provider}"))

    # --- alerts ----------------------------------------------------------------------------

    async def alert_rules(self) -> list[dict[str, Any]] | None:
        """The rules as last saved; None if never saved (the defaults apply)."""
        blob: Any = await self.redis.get(keys.ALERT_RULES)
        return None if blob is None else list(json.loads(blob))

    async def set_alert_rules(self, rules: list[dict[str, Any]]) -> None:
        await self.redis.set(keys.ALERT_RULES, json.dumps(rules))

    async def alerts(self) -> dict[str, dict[str, Any]]:
        """Firing alerts: key -> state."""
        found: dict[Any, Any] = await self.redis.hgetall(keys.ALERTS)
        return {text(k): json.loads(v) for k, v in found.items()}

    async def set_alert(self, key: str, state: dict[str, Any] | None) -> None:
        if state is None:
            await self.redis.hdel(keys.ALERTS, key)
        else:
            await self.redis.hset(keys.ALERTS, key, json.dumps(state))

    async def record_event(self, event: bytes) -> str:
        """A system event (an alert fired or resolved) in shard 0's events stream."""
        shard = self.shards.all[0].keys
        entry: Any = await self.redis.xadd(
            shard.events, {"e": event}, maxlen=EVENTS_MAXLEN, approximate=True
        )
        await self.redis.hincrby(shard.stats, msgpack.unpackb(event)["type"], 1)
        return text(entry)
