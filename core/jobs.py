"""The typed wire model: what the API writes to Redis and the workers read back.

Everything that crosses Redis between the gateway and the delivery workers is one of these
frozen dataclasses, packed with msgpack in one place (``pack``/``unpack``). The short keys
are the wire form only: they keep a million queued recipients small (~700 bytes each, see
``docs/performance.md``) and are named nowhere else, except in the header comments of the
Lua scripts that read them (``core/lua/accept.lua``, ``core/lua/promote.lua``).

| type | where it lives | wire keys |
|---|---|---|
| ``BatchContent`` | ``keys.batch(batch_id)``, once per request | ``f r s h t cat st hd tg md to tc pool`` |
| ``Job`` | one jobs-stream entry (field ``j``) or delayed-set member per recipient | ``m b i e t0 a n c z d md`` |
| ``AcceptEntry`` | the per-recipient input of ``accept.lua`` (not stored as such) | an array, by position (the script's header) |
| ``PolicyInput`` | the contact policy's input to ``accept.lua`` | ``rules zones`` (a rule: ``k c l w a``) |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import msgpack


def _packb(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value)
    return packed


@dataclass(frozen=True, slots=True)
class Mailbox:
    email: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class BatchContent:
    """What every recipient of one request shares: stored once, whatever the batch size."""

    sender: Mailbox
    subject: str
    html: str | None
    text: str | None
    stream: str  # "marketing" | "transactional"
    reply_to: Mailbox | None = None
    category: str | None = None
    campaign: str | None = None  # what statistics group it under (None: the category)
    headers: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    track_opens: bool = True
    track_clicks: bool = True
    ip_pool: str | None = None

    @property
    def transactional(self) -> bool:
        return self.stream == "transactional"

    def pack(self) -> bytes:
        return _packb(
            {
                "f": [self.sender.email, self.sender.name],
                "r": [self.reply_to.email, self.reply_to.name] if self.reply_to else None,
                "s": self.subject,
                "h": self.html,
                "t": self.text,
                "cat": self.category,
                "cp": self.campaign,
                "st": self.stream,
                "hd": self.headers,
                "tg": self.tags,
                "md": self.metadata,
                "to": self.track_opens,
                "tc": self.track_clicks,
                "pool": self.ip_pool,
            }
        )

    @classmethod
    def unpack(cls, blob: bytes) -> BatchContent:
        wire: dict[str, Any] = msgpack.unpackb(blob)
        reply_to = wire.get("r")
        return cls(
            sender=Mailbox(*wire["f"]),
            subject=wire["s"],
            html=wire.get("h"),
            text=wire.get("t"),
            stream=wire.get("st") or "marketing",
            reply_to=Mailbox(*reply_to) if reply_to else None,
            category=wire.get("cat"),
            campaign=wire.get("cp"),
            headers=wire.get("hd") or {},
            tags=wire.get("tg") or [],
            metadata=wire.get("md") or {},
            track_opens=bool(wire.get("to")),
            track_clicks=bool(wire.get("tc")),
            ip_pool=wire.get("pool"),
        )


class Job(NamedTuple):
    """One recipient of a batch, as the queue carries it to a worker. (The per-recipient
    types are ``NamedTuple``s: as immutable as a frozen dataclass and built four times faster,
    which a 1,000-recipient batch notices.)"""

    message_id: str
    batch_id: str
    position: int  # the recipient's index in its request
    email: str  # normalized
    accepted_at: float  # unix seconds: retries stop ``max_deferral`` after this
    attempts: int = 0  # delivery attempts made so far
    name: str | None = None
    contact_id: str | None = None
    timezone: str | None = None
    data: dict[str, Any] = {}  # the recipient's template data (shared default: never mutated)
    metadata: dict[str, Any] = {}  # the recipient's own metadata (never mutated)

    def pack(self) -> bytes:
        wire: dict[str, Any] = {
            "m": self.message_id,
            "b": self.batch_id,
            "i": self.position,
            "e": self.email,
            "t0": round(self.accepted_at, 3),
            "a": self.attempts,
        }
        for key, value in (
            ("n", self.name),
            ("c", self.contact_id),
            ("z", self.timezone),
            ("d", self.data),
            ("md", self.metadata),
        ):
            if value:
                wire[key] = value
        return _packb(wire)

    @classmethod
    def unpack(cls, blob: bytes) -> Job:
        wire: dict[str, Any] = msgpack.unpackb(blob)
        return cls(
            message_id=wire["m"],
            batch_id=wire["b"],
            position=wire.get("i", 0),
            email=wire["e"],
            accepted_at=float(wire["t0"]),
            attempts=int(wire.get("a", 0)),
            name=wire.get("n"),
            contact_id=wire.get("c"),
            timezone=wire.get("z"),
            data=wire.get("d") or {},
            metadata=wire.get("md") or {},
        )

    def next_attempt(self) -> Job:
        """The job as it goes back to the queue after a failed attempt."""
        return self._replace(attempts=self.attempts + 1)


class QueuedJob(NamedTuple):
    """A job as a worker read it: ``entry_id`` is its stream entry ("" when it did not come
    from the stream, e.g. a recovered or promoted job being recorded)."""

    entry_id: str
    job: Job


class AcceptEntry(NamedTuple):
    """One recipient as ``accept.lua`` takes it: the queue entry and event to write, and what
    the contact policy needs to decide its fate. Packed as an array: the script reads the
    fields by position (its header lists them), so keep their order."""

    message_id: str
    due: float  # unix seconds; 0: now
    job: bytes  # ``Job.pack()``
    event: bytes  # the ``queued`` event
    domain: str  # recipient domain, for the pending count per destination
    suppression_field: str  # the address's field in its suppression bucket
    category_field: str | None  # the address+category field (an unsubscribe group), if any
    transactional: bool  # unsubscribes do not stop it
    contact: str | None  # whom frequency caps count for (None: no cap applies)
    timezone: str | None  # quiet hours zone (None: no quiet hours)
    ramp_offset: float  # seconds into the quiet-hours ramp


class CapRule(Protocol):
    """A frequency-cap rule as ``accept.lua`` applies it (``suppression.caps.CapRule``)."""

    @property
    def key(self) -> str: ...  # names the rule's counters (category and window)
    @property
    def category(self) -> str: ...
    @property
    def limit(self) -> int: ...
    @property
    def window_seconds(self) -> int: ...
    @property
    def action(self) -> str: ...  # "drop" | "defer"


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """The contact policy for one batch: the cap rules that apply, and every quiet window of
    the batch's time zones as flat UTC intervals ``[start1, end1, start2, end2, ...]``."""

    rules: tuple[CapRule, ...] = ()
    zones: dict[str, list[float]] = field(default_factory=dict)

    def pack(self) -> bytes:
        rules = [
            {"k": r.key, "c": r.category, "l": r.limit, "w": r.window_seconds, "a": r.action}
            for r in self.rules
        ]
        return _packb({"rules": rules, "zones": self.zones})
