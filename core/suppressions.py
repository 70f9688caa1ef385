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
field layout is shared through ``core.shards.Shards.bucket_key`` and ``field``. Reading and writing them is
``core.store.suppressions``; this module is the model.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

BUCKETS = 1 << 16
MAX_SOURCE_CHARS = 48  # longer values would push the small hash out of its compact encoding
SOFT_BOUNCE_MEMORY_DAYS = 90  # a run of soft bounces with none newer is forgotten after this
REASONS = {
    "unsubscribe": "u",
    "hard_bounce": "b",
    "complaint": "c",
    "manual": "m",
    "soft_bounce_limit": "s",  # soft bounces that never end (``SoftBounceLimit``)
}
_REASON_OF = {code: reason for reason, code in REASONS.items()}


def canonical(address: str) -> str:
    """The form entries are kept under: the whole address in lower case. Local parts are
    case-sensitive in theory and never in practice; an unsubscribe from John@ must stop
    mail to john@."""
    return address.lower()


def bucket_of(address: str) -> int:
    return zlib.crc32(address.encode()) & (BUCKETS - 1)


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


@dataclass(frozen=True)
class SoftBounceLimit:
    """When an address that keeps soft-bouncing is suppressed (reason ``soft_bounce_limit``):
    once ``messages`` in a row to it ended soft-bounced with no delivery in between, and the
    first of them ended at least ``days`` before the last (``docs/bounces.md``). A run of
    soft bounces is kept in the address's shard (``core.keys.ShardKeys.soft_bounces``) and
    forgotten ``forget_seconds`` after its latest one. ``messages`` 0: never."""

    messages: int
    days: int

    @property
    def enabled(self) -> bool:
        return self.messages > 0

    @property
    def seconds(self) -> int:
        return self.days * 86400

    @property
    def forget_seconds(self) -> int:
        """A soft bounce a season old says nothing about the mailbox today; and an address
        never mailed again must not keep its run for ever."""
        return max(SOFT_BOUNCE_MEMORY_DAYS * 86400, 2 * self.seconds)


def soft_bounce_source(message_id: str) -> str:
    """The ``source`` of a ``soft_bounce_limit`` entry: the message that reached the limit."""
    return f"soft-bounce:{message_id}"


def decode_entry(field_name: bytes | str, value: Any) -> Suppression:
    text = field_name.decode() if isinstance(field_name, bytes) else field_name
    email, _, category = text.partition(" ")
    code, at, source = msgpack.unpackb(value)
    return Suppression(email, category or None, _REASON_OF.get(code, "manual"), float(at), source)
