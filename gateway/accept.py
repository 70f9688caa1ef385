"""Turning a validated send request into queue entries, results and events.

The CPU-heavy part (JSON parsing, validation, rendering every recipient once to
catch undefined variables) runs in a thread so the event loop keeps answering
tracking and health requests; the Redis part is one atomic script call.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack

from core import ids
from core.addresses import domain_of
from core.errors import IdempotencyConflict, ValidationError
from core.events import EventType, pack_event
from core.store import Store
from gateway.schemas import SendRequest, parse_send_request
from mta.render import RenderError, TemplateCache, TemplateError

# Upstream tools send the same templates again and again: compile each once per process.
_TEMPLATES = TemplateCache()


@dataclass(frozen=True)
class Prepared:
    batch_id: str
    content: bytes
    entries: list[dict[str, Any]]
    response: str
    counts: dict[str, int]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# A \u escape of a UTF-16 surrogate; valid pairs decode to one character, lone ones do not.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def decode_json(raw: bytes) -> Any:
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ValidationError("the body is not UTF-8", code="invalid_json") from exc
    except (ValueError, RecursionError) as exc:
        raise ValidationError(f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValidationError(
                "the body has a lone UTF-16 surrogate escape (\\ud800-\\udfff)", code="invalid_json"
            ) from exc
    return body


def request_digest(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")


def _batch_content(req: SendRequest) -> bytes:
    content = {
        "f": [req.sender.email, req.sender.name],
        "r": [req.reply_to.email, req.reply_to.name] if req.reply_to else None,
        "s": req.subject,
        "h": req.html,
        "t": req.text,
        "cat": req.category,
        "st": req.stream,
        "hd": req.headers,
        "tg": req.tags,
        "md": req.metadata,
        "to": req.track_opens,
        "tc": req.track_clicks,
        "pool": req.ip_pool,
    }
    return msgpack.packb(content)  # type: ignore[no-any-return]


def prepare(body: Any, *, now: float) -> Prepared:
    """Validate, render every recipient once, and build the queue entries."""
    req = parse_send_request(body, now=now)
    try:
        templates = _TEMPLATES.get(req.subject, req.html, req.text)
    except TemplateError as exc:
        raise ValidationError(exc.detail, field=exc.field, code="invalid_template") from exc

    batch_id = ids.new_batch_id()
    due = req.send_at if req.send_at is not None and req.send_at > now + 1 else 0
    results: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    counts = {"queued": 0, "scheduled": 0, "rejected": 0}
    for r in req.recipients:
        reason = r.reject_reason
        if reason is None:
            try:
                templates.render(r.data)
            except RenderError as exc:
                reason = f"{exc.field}: {exc.detail}"
            except TemplateError as exc:
                raise ValidationError(exc.detail, field=exc.field, code="invalid_template") from exc
        if reason is not None:
            counts["rejected"] += 1
            results.append({"index": r.index, "email": r.email, "message_id": None,
                            "status": "rejected", "reason": reason})  # fmt: skip
            continue
        assert r.normalized is not None
        message_id = ids.message_id(batch_id, r.index)
        job: dict[str, Any] = {"m": message_id, "b": batch_id, "i": r.index, "e": r.normalized,
                               "t0": round(now, 3), "a": 0}  # fmt: skip
        for key, value in (("n", r.name), ("c", r.contact_id), ("z", r.timezone),
                           ("d", r.data), ("md", r.metadata)):  # fmt: skip
            if value:
                job[key] = value
        event = pack_event(
            EventType.QUEUED,
            timestamp=now,
            message_id=message_id,
            email=r.normalized,
            contact_id=r.contact_id,
            category=req.category,
            metadata={**req.metadata, **r.metadata},
            **({"send_at": _iso(due)} if due else {}),
        )
        entries.append(
            {
                "m": message_id,
                "q": round(due, 3),
                "j": msgpack.packb(job),
                "e": event,
                "d": domain_of(r.normalized),
            }
        )
        result: dict[str, Any] = {"index": r.index, "email": r.email, "message_id": message_id,
                  "status": "scheduled" if due else "queued"}  # fmt: skip
        if due:
            result["send_at"] = _iso(due)
        counts["scheduled" if due else "queued"] += 1
        results.append(result)

    response = json.dumps({"batch_id": batch_id, "results": results}, ensure_ascii=False)
    return Prepared(batch_id, _batch_content(req), entries, response, counts)


async def accept(
    store: Store, prepared: Prepared, digest: str, idempotency_key: str | None
) -> tuple[str, bool]:
    """Queue the batch; returns (response JSON, replayed)."""
    outcome = await store.accept(
        batch_id=prepared.batch_id,
        content=prepared.content,
        recipients=prepared.entries,
        response=prepared.response,
        idempotency_key=idempotency_key,
        digest=digest,
    )
    if outcome.replay and outcome.digest != digest:
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different body in the last 24 hours",
            field="Idempotency-Key",
        )
    return outcome.response, outcome.replay
