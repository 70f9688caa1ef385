"""Queue views and bulk actions: what waits, and why (``GET /v1/queues``,
``POST /v1/queues/actions``, ``sluice queue``).

Every waiting job gets a state, from where it is and its message's latest event:

| state | where | why |
|---|---|---|
| ``ready`` | the jobs stream, no worker has it | waits for a free worker |
| ``in_flight`` | the jobs stream, read by a worker | being delivered |
| ``scheduled`` | the delayed set, never attempted | its ``send_at`` |
| ``held_quiet_hours``, ``held_cap`` | the delayed set, never attempted | the contact policy moved it |
| ``retrying`` | the delayed set, attempted | a 4xx or a failed connection: ``next_attempt``, ``last_reply`` |
| ``held_warmup`` | the delayed set, attempted | the sending IPs' warmup budget |
| ``paused`` | a paused campaign's parked set, or the delayed set | its campaign is paused, or every IP it may leave from is paused at its provider |

Each job is read from Redis as it is when asked (up to ``MAX_SCANNED`` per place and shard;
``truncated`` says when there were more). Bulk actions take a filter on the same fields:
``release`` and ``retry_now`` send delayed jobs on at once (a ``released`` event each),
``cancel`` takes delayed or paused jobs out of the queue for good (a ``cancelled`` event and
status each); ``dry_run`` says how many would be touched. Jobs in the stream are not acted on
(a worker may hold them), nor paused ones by ``release`` (resume the campaign).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from core import validate
from core.addresses import domain_of
from core.errors import ValidationError
from core.events import EventType, pack_event
from core.store import Outcome, Store
from core.store.queue import Waiting
from warmup.providers import provider_of

MAX_SCANNED = 10_000
STATES = (
    "ready",
    "in_flight",
    "scheduled",
    "held_quiet_hours",
    "held_cap",
    "retrying",
    "held_warmup",
    "paused",
)
GROUPS = ("state", "provider", "domain", "ip", "campaign")
MAX_FILTER_CHARS = {"domain": 254}  # the others: 64
FILTERS = ("state", "provider", "domain", "ip", "campaign")
ACTIONS = {
    "release": ("scheduled", "held_quiet_hours", "held_cap", "held_warmup", "retrying"),
    "retry_now": ("retrying", "held_warmup", "paused"),
    "cancel": ("scheduled", "held_quiet_hours", "held_cap", "held_warmup", "retrying", "paused"),
}


@dataclass(frozen=True)
class Item:
    waiting: Waiting
    state: str
    provider: str
    domain: str
    ip: str
    campaign: str
    age: float
    next_attempt: float | None
    last_reply: str | None

    def value(self, name: str) -> str:
        return str(getattr(self, name))


async def items(store: Store) -> tuple[list[Item], bool]:
    """Every waiting job, explained."""
    found, truncated = await store.queue.waiting(MAX_SCANNED)
    now = time.time()
    campaigns: OrderedDict[str, str] = OrderedDict()
    delayed_by_shard: dict[int, list[Waiting]] = {}
    for w in found:
        if w.place == "delayed":
            delayed_by_shard.setdefault(w.shard.index, []).append(w)
    last: dict[str, dict[str, Any] | None] = {}
    for group in delayed_by_shard.values():
        ids = [w.job.message_id for w in group]
        events = await store.queue.last_events(group[0].shard, ids)
        last.update(zip(ids, events, strict=True))
    out = []
    for w in found:
        job = w.job
        event = last.get(job.message_id)
        state, reply, ip = _state(w, event)
        if job.batch_id not in campaigns:
            content = await store.batch_content(job.batch_id)
            campaigns[job.batch_id] = (
                (content.campaign or content.category or "") if content is not None else ""
            )
        domain = domain_of(job.email)
        out.append(
            Item(
                waiting=w,
                state=state,
                provider=provider_of(domain),
                domain=domain,
                ip=ip,
                campaign=w.campaign or campaigns[job.batch_id],
                age=max(0.0, now - job.accepted_at),
                next_attempt=w.due if w.place == "delayed" else None,
                last_reply=reply,
            )
        )
    return out, truncated


def _state(w: Waiting, event: dict[str, Any] | None) -> tuple[str, str | None, str]:
    """(state, last reply, sending IP of the last attempt) of a waiting job."""
    if w.place == "parked":
        return "paused", None, ""
    if w.place == "stream":
        return ("in_flight" if w.in_flight else "ready"), None, ""
    event = event or {}
    if w.job.attempts == 0:
        held = event.get("held_by")
        if held == "quiet_hours":
            return "held_quiet_hours", None, ""
        if held == "frequency_cap":
            return "held_cap", None, ""
        return "scheduled", None, ""
    reply = " ".join(str(p) for p in (event.get("smtp_code"), event.get("reason")) if p) or None
    held = event.get("held_by")
    state = {"warmup": "held_warmup", "paused_sender": "paused"}.get(str(held), "retrying")
    return state, reply, str(event.get("ip") or "")


def filters_of(params: dict[str, Any]) -> dict[str, str]:
    found = {}
    for name in FILTERS:
        if name not in params:
            continue
        value = params[name]
        longest = MAX_FILTER_CHARS.get(name, 64)
        if not isinstance(value, str) or not 0 < len(value) <= longest:
            raise ValidationError(
                f"'{name}' must be text of up to {longest} characters", field=name
            )
        if name == "state" and value not in STATES:
            raise ValidationError(f"'state' must be one of {', '.join(STATES)}", field=name)
        found[name] = value
    return found


def matching(found: list[Item], filters: dict[str, str]) -> list[Item]:
    return [i for i in found if all(i.value(k) == v for k, v in filters.items())]


async def view(store: Store, group_by: str, filters: dict[str, str]) -> dict[str, Any]:
    """``GET /v1/queues``: a group per value of ``group_by``, biggest first."""
    if group_by not in GROUPS:
        raise ValidationError(f"'group_by' must be one of {', '.join(GROUPS)}", field="group_by")
    found, truncated = await items(store)
    return grouped(found, truncated, group_by, filters)


def grouped(
    found: list[Item], truncated: bool, group_by: str, filters: dict[str, str]
) -> dict[str, Any]:
    """``view`` of jobs already read (``items``): one read, grouped several ways."""
    groups: dict[str, dict[str, Any]] = {}
    for item in matching(found, filters):
        key = item.value(group_by)
        group = groups.setdefault(
            key, {"key": key, "count": 0, "oldest_age_seconds": 0.0, "states": {}}
        )
        group["count"] += 1
        group["oldest_age_seconds"] = max(group["oldest_age_seconds"], round(item.age, 1))
        group["states"][item.state] = group["states"].get(item.state, 0) + 1
        if item.next_attempt is not None and (
            "next_attempt" not in group or item.next_attempt < group["next_attempt"]
        ):
            group["next_attempt"] = round(item.next_attempt, 3)
        if item.last_reply:
            group["last_reply"] = item.last_reply
    listed = sorted(groups.values(), key=lambda g: (-g["count"], g["key"]))
    return {"group_by": group_by, "filters": filters, "truncated": truncated, "groups": listed}


async def act(store: Store, body: Any) -> dict[str, Any]:
    """``POST /v1/queues/actions``: ``{filter, action, dry_run}`` -> ``{matched, changed}``."""
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object", field="")
    action = body.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise ValidationError(f"'action' must be one of {', '.join(ACTIONS)}", field="action")
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ValidationError("'dry_run' must be true or false", field="dry_run")
    given = body.get("filter", {})
    if not isinstance(given, dict) or set(given) - set(FILTERS):
        raise ValidationError(f"'filter' takes {', '.join(FILTERS)}", field="filter")
    filters = filters_of(given)
    if "campaign" in filters:
        validate.campaign(filters["campaign"], "filter.campaign")
    found, _ = await items(store)
    chosen = [i for i in matching(found, filters) if i.state in ACTIONS[action]]
    if dry_run:
        return {"action": action, "dry_run": True, "matched": len(chosen), "changed": 0}
    changed = 0
    now = time.time()
    for shard in store.shards.all:
        mine = [i for i in chosen if i.waiting.shard == shard]
        if not mine:
            continue
        if action in ("release", "retry_now"):
            delayed = [i for i in mine if i.waiting.place == "delayed"]
            moved = await store.queue.release(shard, [i.waiting.raw for i in delayed])
            released = [i for i, ok in zip(delayed, moved, strict=True) if ok]
            await store.complete_many(  # the events of the messages sent on, in one call
                [
                    Outcome(
                        "",
                        i.waiting.job.message_id,
                        "",
                        _event(i, EventType.RELEASED, now, action=action),
                    )
                    for i in released
                ]
            )
            changed += len(released)
            continue
        by_set: dict[str, list[Item]] = {}
        for item in mine:
            held_in = (
                shard.keys.delayed
                if item.waiting.place == "delayed"
                else shard.keys.parked(item.waiting.campaign)
            )
            by_set.setdefault(held_in, []).append(item)
        for held_in, items_here in by_set.items():
            jobs = [
                (i.waiting.job, i.waiting.raw, _event(i, EventType.CANCELLED, now), i.domain)
                for i in items_here
            ]
            changed += sum(await store.queue.cancel(shard, held_in, jobs))
    return {"action": action, "dry_run": False, "matched": len(chosen), "changed": changed}


def _event(item: Item, kind: EventType, now: float, **fields: Any) -> bytes:
    job = item.waiting.job
    return pack_event(
        kind,
        timestamp=now,
        message_id=job.message_id,
        email=job.email,
        contact_id=job.contact_id,
        category=None,
        metadata=job.metadata,
        state=item.state,
        **fields,
    )
