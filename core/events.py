"""Event types and their wire form.

An event is stored in the events stream as msgpack; its id is the stream entry
id, which is also the cursor of ``GET /v1/events``.
"""

from __future__ import annotations

from datetime import UTC, datetime
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
    RELEASED = "released"  # a bulk action sent a held or retrying message on at once
    CANCELLED = "cancelled"  # a bulk action took a waiting message out of the queue
    ALERT_FIRED = "alert_fired"
    ALERT_RESOLVED = "alert_resolved"


def iso_time(stamp: float) -> str:
    """``2026-11-23T08:12:30.125Z``: how times appear in answers and events."""
    moment = datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


def event_of(entry_id: str, fields: dict[bytes, bytes]) -> dict[str, Any]:
    return unpack_event(entry_id, fields[b"e"], fields.get(b"x"), fields.get(b"c"))


def pack_event(
    type_: EventType,
    *,
    timestamp: float,
    message_id: str,
    email: str,
    contact_id: str | None,
    category: str | None,
    metadata: dict[str, Any] | None,
    campaign: str | None = None,
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
    if campaign is not None:  # absent: an engagement event takes its message's (``c``)
        body["campaign"] = campaign
    body.update(extra)  # type-specific fields; None stays null so consumers see the field
    return msgpack.packb(body)  # type: ignore[no-any-return]


CONTEXT_FIELDS = ("email", "contact_id", "category", "campaign", "metadata")


# times a script adds in unix seconds, shown as ISO times
_SCRIPT_TIMES = (("send_at_ts", "send_at"), ("first_soft_bounce_ts", "first_soft_bounce_at"))


def unpack_event(
    event_id: str, blob: bytes, changes: bytes | None = None, context: bytes | None = None
) -> dict[str, Any]:
    """The event from its stream entry: ``e`` the event; ``x`` (``changes``) what a script
    decided after the event was packed: the contact policy's other type (``suppressed``,
    ``capped``) with its reason, or a later ``send_at`` (``send_at_ts``, unix seconds) and
    why (``held_by``), or a machine flag, or the run of soft bounces that suppressed an
    address (``soft_bounces``, ``first_soft_bounce_ts``); ``c`` (``context``) the message's first event,
    whose email, contact, category and metadata an engagement event shares."""
    body: dict[str, Any] = msgpack.unpackb(blob)
    if context:
        first: dict[str, Any] = msgpack.unpackb(context)
        for name in CONTEXT_FIELDS:
            body.setdefault(name, first.get(name))
    if changes:
        extra: dict[str, Any] = msgpack.unpackb(changes)
        for stamped, shown in _SCRIPT_TIMES:
            stamp = extra.pop(stamped, None)
            if stamp is not None:
                extra[shown] = iso_time(float(stamp))
        body.update(extra)
    return {"id": event_id, **body}
