"""Event types and their wire form.

An event is stored in the events stream as msgpack; its id is the stream entry
id, which is also the cursor of ``GET /v1/events``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgpack


class EventType(StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"
    CAPPED = "capped"
    OPENED = "opened"
    CLICKED = "clicked"
    UNSUBSCRIBED = "unsubscribed"
    COMPLAINED = "complained"


def pack_event(
    type_: EventType,
    *,
    timestamp: float,
    message_id: str,
    email: str,
    contact_id: str | None,
    category: str | None,
    metadata: dict[str, Any] | None,
    **extra: Any,
) -> bytes:
    body: dict[str, Any] = {
        "type": type_.value,
        "timestamp": round(timestamp, 3),
        "message_id": message_id,
        "email": email,
        "contact_id": contact_id,
        "category": category,
        "metadata": metadata or {},
    }
    body.update(extra)  # type-specific fields; None stays null so consumers see the field
    return msgpack.packb(body)  # type: ignore[no-any-return]


def unpack_event(event_id: str, blob: bytes) -> dict[str, Any]:
    body: dict[str, Any] = msgpack.unpackb(blob)
    return {"id": event_id, **body}
