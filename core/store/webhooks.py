"""The webhook dispatcher's state in Redis: its lease, its cursor on the events stream, the
batch being tried, dead letters and the replay queue (``gateway.webhooks`` sends them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import msgpack

from core import keys
from core.store.base import Client, Script, text

MAX_DEAD_LETTERS = 10_000


@dataclass(frozen=True, slots=True)
class WebhookBatch:
    """A JSON array of events, stored before its first attempt so a restarted gateway sends
    the very same bytes under the same ``webhook-id``."""

    id: str
    body: bytes
    last: str  # the events cursor after its last event: where it moves once delivered
    count: int
    first: float  # when it was first tried
    attempts: int = 0
    due: float = 0.0  # the next attempt is not before this
    replayed: bool = False  # a dead letter sent again: delivering it does not move the cursor
    error: str | None = None  # why it was dead-lettered

    def pack(self) -> bytes:
        packed: bytes = msgpack.packb(dataclasses.asdict(self))
        return packed

    @classmethod
    def unpack(cls, blob: bytes) -> WebhookBatch:
        doc: dict[str, Any] = msgpack.unpackb(blob)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass(frozen=True, slots=True)
class WebhookState:
    disabled: str | None  # why, when a 410 disabled the endpoint
    cursor: str | None
    delivered_batches: int
    last_error: str | None
    retrying: WebhookBatch | None
    dead_letters: int
    replay_queued: int


class WebhookStore:
    def __init__(self, client: Client) -> None:
        self.redis = client
        self._lease = Script(client, "lease.lua")
        self._replay = Script(client, "webhook_replay.lua")

    async def hold_lease(self, owner: str, milliseconds: int) -> bool:
        """Take or renew the dispatcher lease; True while ``owner`` holds it."""
        return bool(await self._lease([keys.WEBHOOK_LEASE], [owner, milliseconds]))

    async def cursor(self) -> str | None:
        found = await self.redis.get(keys.WEBHOOK_CURSOR)
        return None if found is None else text(found)

    async def inflight(self) -> WebhookBatch | None:
        blob: Any = await self.redis.get(keys.WEBHOOK_INFLIGHT)
        return None if blob is None else WebhookBatch.unpack(blob)

    async def save_inflight(self, batch: WebhookBatch) -> None:
        await self.redis.set(keys.WEBHOOK_INFLIGHT, batch.pack())

    async def next_replay(self) -> WebhookBatch | None:
        """The oldest dead letter queued to be sent again, taken off the queue."""
        blob: Any = await self.redis.lpop(keys.WEBHOOK_REPLAY)
        return None if blob is None else WebhookBatch.unpack(blob)

    async def delivered(self, batch: WebhookBatch, now: float) -> None:
        """The receiver took ``batch``: the cursor moves past it (unless it was a replay)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if not batch.replayed:
                pipe.set(keys.WEBHOOK_CURSOR, batch.last)
            pipe.delete(keys.WEBHOOK_INFLIGHT)
            pipe.hset(keys.WEBHOOK_STATE, mapping={"last_success": now, "last_error": ""})
            pipe.hincrby(keys.WEBHOOK_STATE, "delivered_batches", 1)
            await pipe.execute()

    async def failed(self, error: str, now: float) -> None:
        await self.redis.hset(
            keys.WEBHOOK_STATE, mapping={"last_error": error, "last_error_at": now}
        )

    async def disable(self, reason: str) -> None:
        await self.redis.hset(keys.WEBHOOK_STATE, "disabled", reason)

    async def enable(self) -> None:
        await self.redis.hdel(keys.WEBHOOK_STATE, "disabled")

    async def disabled(self) -> bool:
        return bool(await self.redis.hget(keys.WEBHOOK_STATE, "disabled"))

    async def dead_letter(self, batch: WebhookBatch) -> None:
        """Give up on ``batch``: keep it (the latest ``MAX_DEAD_LETTERS``) and move on."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(keys.WEBHOOK_DEAD, batch.pack())
            pipe.ltrim(keys.WEBHOOK_DEAD, -MAX_DEAD_LETTERS, -1)
            if not batch.replayed:
                pipe.set(keys.WEBHOOK_CURSOR, batch.last)
            pipe.delete(keys.WEBHOOK_INFLIGHT)
            await pipe.execute()

    async def dead_letters(self, limit: int = 100) -> list[WebhookBatch]:
        found: list[Any] = await self.redis.lrange(keys.WEBHOOK_DEAD, 0, limit - 1)
        return [WebhookBatch.unpack(blob) for blob in found]

    async def replay_dead_letters(self) -> int:
        """Queue every dead letter to be sent again (before new events); returns how many."""
        return int(await self._replay([keys.WEBHOOK_DEAD, keys.WEBHOOK_REPLAY], []))

    async def state(self) -> WebhookState:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.WEBHOOK_STATE)
            pipe.get(keys.WEBHOOK_CURSOR)
            pipe.get(keys.WEBHOOK_INFLIGHT)
            pipe.llen(keys.WEBHOOK_DEAD)
            pipe.llen(keys.WEBHOOK_REPLAY)
            fields, cursor, inflight, dead, replay = await pipe.execute()
        found = {text(k): text(v) for k, v in fields.items()}
        return WebhookState(
            disabled=found.get("disabled") or None,
            cursor=None if cursor is None else text(cursor),
            delivered_batches=int(found.get("delivered_batches", 0)),
            last_error=found.get("last_error") or None,
            retrying=None if inflight is None else WebhookBatch.unpack(inflight),
            dead_letters=int(dead),
            replay_queued=int(replay),
        )
