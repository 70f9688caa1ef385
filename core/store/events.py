"""Reading the events streams: one per shard, merged by time for ``/v1/events``, the webhook
dispatcher and the preflight's recent look.

An event's id is its stream entry id (``<ms>-<seq>``), with ``.<shard>`` appended for a
shard other than 0, so ids stay unique over shards. A page of events after a cursor reads
up to ``limit`` entries from each shard after its own position and keeps the ``limit``
oldest of them; the cursor then names every shard's position: an event another master
added late (its clock behind) is still read, after the ones already given, never lost
and never twice. With one shard the cursor is the last event's id, as it always was.

A cursor over shards: ``v1.<base ms>.<position>.<position>...``, one position per shard,
``<ms - base>-<seq>``, or empty for the stream's start. A plain stream id given where
shards are several means that id in every shard (what a cursor of one shard, kept from
before, means after sharding: nothing after it is skipped).
"""

from __future__ import annotations

import re
from typing import Any

from core.events import event_of
from core.shards import Shard, Shards
from core.store.base import Client, after, text, valid_stream_id

_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_POSITION = re.compile(r"(?:[0-9]{1,20}-[0-9]{1,20})?")
_VERSION = "v1"


class BadCursor(ValueError):
    """A cursor that no page of this deployment returned."""


def event_id(entry_id: str, shard: Shard) -> str:
    return f"{entry_id}.{shard.index}" if shard.index else entry_id


def _split(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def encode_cursor(positions: list[str | None]) -> str:
    """A cursor naming each shard's last event read (None: none yet)."""
    known = [_split(p) for p in positions if p]
    base = min((ms for ms, _ in known), default=0)
    parts = [_VERSION, str(base)]
    for position in positions:
        if position:
            ms, seq = _split(position)
            parts.append(f"{ms - base}-{seq}")
        else:
            parts.append("")
    return ".".join(parts)


def decode_cursor(cursor: str, count: int) -> list[str | None]:
    """Each shard's last event id read, from a cursor (``BadCursor`` if it is none)."""
    if _STREAM_ID.fullmatch(cursor):
        if not valid_stream_id(cursor):
            raise BadCursor(cursor)
        return [cursor] * count
    parts = cursor.split(".")
    if (
        len(parts) != count + 2
        or parts[0] != _VERSION
        or not parts[1].isdigit()
        or len(parts[1]) > 20
        or not all(_POSITION.fullmatch(p) for p in parts[2:])
    ):
        raise BadCursor(cursor)
    base = int(parts[1])
    positions: list[str | None] = []
    for part in parts[2:]:
        if not part:
            positions.append(None)
            continue
        ms, seq = _split(part)
        position = f"{ms + base}-{seq}"
        if not valid_stream_id(position):
            raise BadCursor(cursor)
        positions.append(position)
    return positions


def check_cursor(cursor: str, shards: Shards) -> None:
    """``BadCursor`` unless ``cursor`` is one a page of these shards can have returned."""
    decode_cursor(cursor, shards.count)


class EventLog:
    def __init__(self, client: Client, shards: Shards) -> None:
        self.redis = client
        self.shards = shards

    async def of_message(self, shard: Shard, entry_ids: list[str]) -> list[dict[str, Any]]:
        """A message's events (entry ids from its record), in order."""
        events = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xrange(shard.keys.events, entry_id, entry_id)
            replies = await pipe.execute() if entry_ids else []
        for reply in replies:
            for entry_id, fields in reply:
                events.append(event_of(event_id(text(entry_id), shard), fields))
        return events

    async def tail(self) -> str | None:
        """The cursor after the newest event of every shard: a reader from now on."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards.all:
                pipe.xrevrange(shard.keys.events, "+", "-", count=1)
            replies = await pipe.execute()
        positions: list[str | None] = [text(r[0][0]) if r else None for r in replies]
        if self.shards.count == 1:
            return positions[0]
        return encode_cursor(positions) if any(positions) else None

    async def latest(self, count: int) -> list[dict[str, Any]]:
        """The ``count`` most recent events over every shard, newest first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards.all:
                pipe.xrevrange(shard.keys.events, "+", "-", count=count)
            replies = await pipe.execute()
        found = [
            (_split(text(entry_id)), shard, entry_id, fields)
            for shard, reply in zip(self.shards.all, replies, strict=True)
            for entry_id, fields in reply
        ]
        found.sort(key=lambda item: (item[0], item[1].index), reverse=True)
        return [
            event_of(event_id(text(entry_id), shard), fields)
            for _, shard, entry_id, fields in found[:count]
        ]

    async def after(
        self, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` events after ``cursor`` (None: from the start), oldest first, and
        the cursor of the next page (``cursor`` itself when there is nothing new)."""
        if self.shards.count == 1:
            position = decode_cursor(cursor, 1)[0] if cursor else None  # a v1 cursor too
            start = after(position) if position else "-"
            if start is None:
                return [], cursor  # nothing can come after the largest id
            stream = self.shards.all[0].keys.events
            reply: Any = await self.redis.xrange(stream, start, "+", count=limit)
            events = [event_of(text(entry_id), fields) for entry_id, fields in reply]
            return events, events[-1]["id"] if events else cursor
        count = self.shards.count
        positions: list[str | None] = decode_cursor(cursor, count) if cursor else [None] * count
        starts = [after(p) if p else "-" for p in positions]
        async with self.redis.pipeline(transaction=False) as pipe:
            asked = [
                (shard, start)
                for shard, start in zip(self.shards.all, starts, strict=True)
                if start
            ]
            for shard, start in asked:
                pipe.xrange(shard.keys.events, start, "+", count=limit)
            replies = await pipe.execute()
        found = [
            (_split(text(entry_id)), shard, text(entry_id), fields)
            for (shard, _), reply in zip(asked, replies, strict=True)
            for entry_id, fields in reply
        ]
        found.sort(key=lambda item: (item[0], item[1].index))
        page = found[:limit]
        if not page:
            return [], cursor
        for _, shard, entry_id, _ in page:
            positions[shard.index] = entry_id
        events = [
            event_of(event_id(entry_id, shard), fields) for _, shard, entry_id, fields in page
        ]
        return events, encode_cursor(positions)
