"""The suppression list in Redis: who must not be mailed, why, since when, from where.

An entry is global (an address) or scoped to a category (an unsubscribe group:
``news@x`` unsubscribed from ``cart_abandonment`` only). Entries live in 65,536
small hashes chosen by a CRC32 of the address, so each stays in Redis's compact
listpack encoding (~50 bytes per address at a million entries, where one big hash
costs over 100) and every lookup of a recipient is one ``HMGET`` of one small
hash, whatever the size of the list. Field: the address in lower case, or ``"<address>
<category>"`` (a space cannot occur in a normalized address); value: msgpack
``[reason code, unix seconds, source]``. A counter key keeps the total.

The accept script (``core/lua/accept.lua``) reads the same hashes; the key and
field layout is shared through ``bucket_key`` and ``field``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import msgpack
import redis.asyncio as aioredis

from core import keys

BUCKETS = 1 << 16
MAX_SOURCE_CHARS = 48  # longer values would push the small hash out of its compact encoding
REASONS = {"unsubscribe": "u", "hard_bounce": "b", "complaint": "c", "manual": "m"}
_REASON_OF = {code: reason for reason, code in REASONS.items()}


def canonical(address: str) -> str:
    """The form entries are kept under: the whole address in lower case. Local parts are
    case-sensitive in theory and never in practice; an unsubscribe from John@ must stop
    mail to john@."""
    return address.lower()


def bucket_of(address: str) -> int:
    return zlib.crc32(address.encode()) & (BUCKETS - 1)


def bucket_key(address: str) -> str:
    return f"{keys.SUPPRESSION_BUCKET_PREFIX}{bucket_of(address):04x}"


def field(address: str, category: str | None = None) -> str:
    return address if category is None else f"{address} {category}"


def pack_entry(reason: str, at: float, source: str | None) -> bytes:
    return msgpack.packb([REASONS[reason], int(at), (source or "")[:MAX_SOURCE_CHARS] or None])  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Suppression:
    email: str
    category: str | None  # None: every category
    reason: str
    at: float
    source: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "category": self.category,
            "reason": self.reason,
            "created_at": int(self.at),
            "source": self.source,
        }


def _decode(field_name: bytes | str, value: Any) -> Suppression:
    text = field_name.decode() if isinstance(field_name, bytes) else field_name
    email, _, category = text.partition(" ")
    code, at, source = msgpack.unpackb(value)
    return Suppression(email, category or None, _REASON_OF.get(code, "manual"), float(at), source)


class Suppressions:
    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        text = resources.files("core").joinpath("lua", "suppress.lua").read_text()
        self._script = client.register_script(text)

    async def add_many(
        self, entries: Iterable[tuple[str, str | None, str, str | None]], *, at: float | None = None
    ) -> int:
        """Add or replace (address, category, reason, source) entries; returns how many are new.

        Addresses must already be normalized (``core.addresses.normalize_address``)."""
        stamp = time.time() if at is None else at
        args: list[Any] = ["add"]
        for given, category, reason, source in entries:
            address = canonical(given)
            args += [
                bucket_key(address),
                field(address, category),
                pack_entry(reason, stamp, source),
            ]
        if len(args) == 1:
            return 0
        return int(await self._script(keys=[keys.SUPPRESSION_COUNT], args=args))

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
        args = ["remove", bucket_key(address), field(address, category), ""]
        return int(await self._script(keys=[keys.SUPPRESSION_COUNT], args=args)) == 1

    async def check(
        self, address: str, category: str | None, *, transactional: bool = False
    ) -> Suppression | None:
        """The entry that stops mail of ``category`` to ``address``: global first.

        Transactional mail (a receipt, a password reset) is not stopped by an
        unsubscribe, only by hard bounces, complaints and manual entries; the
        accept script applies the same rule."""
        address = canonical(address)
        names = [address] if category is None else [address, field(address, category)]
        values = await self.redis.hmget(bucket_key(address), names)
        for name, value in zip(names, values, strict=True):
            if value is not None:
                entry = _decode(name, value)
                if not (transactional and entry.reason == "unsubscribe"):
                    return entry
        return None

    async def of(self, address: str) -> list[Suppression]:
        """Every entry for ``address``: global and per category."""
        address = canonical(address)
        found: dict[Any, Any] = await self.redis.hgetall(bucket_key(address))
        prefix = f"{address} ".encode()
        return sorted(
            (
                _decode(k, v)
                for k, v in found.items()
                if k == address.encode() or k.startswith(prefix)
            ),
            key=lambda s: (s.category is not None, s.category or ""),
        )

    async def count(self) -> int:
        return int(await self.redis.get(keys.SUPPRESSION_COUNT) or 0)

    async def page(self, cursor: int, limit: int) -> tuple[list[Suppression], int | None]:
        """Entries from bucket ``cursor`` on, whole buckets, at least ``limit`` unless the end
        comes first; (entries, next cursor or None at the end). Order: by bucket."""
        out: list[Suppression] = []
        bucket = cursor
        while bucket < BUCKETS and len(out) < limit:
            span = range(bucket, min(BUCKETS, bucket + 256))
            async with self.redis.pipeline(transaction=False) as pipe:
                for b in span:
                    pipe.hgetall(f"{keys.SUPPRESSION_BUCKET_PREFIX}{b:04x}")
                replies = await pipe.execute()
            for b, found in zip(span, replies, strict=True):
                bucket = b + 1
                out.extend(_decode(k, v) for k, v in sorted(found.items()))
                if len(out) >= limit:
                    break
        return out, (bucket if bucket < BUCKETS else None)

    async def all(self) -> AsyncIterator[Suppression]:
        cursor: int | None = 0
        while cursor is not None:
            entries, cursor = await self.page(cursor, 5000)
            for entry in entries:
                yield entry
