"""Turning a validated send request into queue entries, results and events.

The CPU-heavy part (JSON parsing, validation, rendering every recipient once to
catch undefined variables) runs in a thread so the event loop keeps answering
tracking and health requests; the Redis part is one atomic script call.

Rendering runs on budgets (``mta/template_budget.py``): a recipient whose render
blows its budget is rejected with the reason, unless the template alone (with no
data) blows it too, or all the recipients together take longer than
``MAX_REQUEST_RENDER_SECONDS``: then the whole request is refused with 422
``template_too_expensive``, so one request holds the prepare thread for seconds at
most, never minutes.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgpack

from core import ids, keys, suppressions
from core.addresses import domain_of
from core.errors import IdempotencyConflict, TemplateTooExpensive, ValidationError
from core.events import EventType, iso_time, pack_event
from core.store import Store
from gateway.schemas import SendRequest, parse_send_request
from mta.render import (
    RenderError,
    RenderOverBudget,
    TemplateCache,
    TemplateError,
    TemplateOverBudget,
    Templates,
)
from mta.template_budget import MAX_REQUEST_RENDER_SECONDS
from suppression.policy import Policy
from suppression.quiet_hours import intervals_from, ramp_offset

# Upstream tools send the same templates again and again: compile each once per process.
_TEMPLATES = TemplateCache()


@dataclass(frozen=True)
class Prepared:
    batch_id: str
    content: bytes
    entries: list[dict[str, Any]]
    response: str  # the answer before the contact policy: accepted recipients "queued"
    policy: bytes  # msgpack for accept.lua: applicable cap rules and quiet windows
    rejected: int
    results: list[dict[str, Any]]  # ``response``'s results, for the answer (used once)


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


def contact_key(contact_id: str | None, address: str) -> str:
    """Whom frequency caps count for: the contact id, else the address."""
    return f"c:{contact_id}" if contact_id else f"a:{suppressions.canonical(address)}"


def _refusal(exc: TemplateError) -> ValidationError | TemplateTooExpensive:
    if isinstance(exc, TemplateOverBudget):
        return TemplateTooExpensive(exc.detail, field=exc.field)
    return ValidationError(exc.detail, field=exc.field, code="invalid_template")


def _render_once(templates: Templates, data: dict[str, Any], deadline: float) -> str | None:
    """Why this recipient is rejected, or None; raises when the whole request is refused."""
    try:
        templates.render(data, deadline=deadline)
    except RenderOverBudget as exc:
        alone = templates.expensive_without_data(exc.field)
        if alone is not None:
            raise TemplateTooExpensive(alone, field=exc.field) from exc
        return f"{exc.field}: {exc.detail} (with this recipient's data)"
    except RenderError as exc:
        return f"{exc.field}: {exc.detail}"
    except TemplateError as exc:
        raise _refusal(exc) from exc
    return None


def prepare(body: Any, *, now: float, policy: Policy | None = None) -> Prepared:
    """Validate, render every recipient once, and build the queue entries and policy input."""
    policy = policy or Policy()
    req = parse_send_request(body, now=now)
    try:
        templates = _TEMPLATES.get(req.subject, req.html, req.text)
    except TemplateError as exc:
        raise _refusal(exc) from exc

    batch_id = ids.new_batch_id()
    due = req.send_at if req.send_at is not None and req.send_at > now + 1 else 0
    marketing = req.stream == "marketing"
    rules = policy.rules_for(req.stream, req.category)
    quiet = policy.quiet_hours if marketing else None
    zones: dict[str, list[float]] = {}
    results: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    rejected = 0
    render_deadline = time.monotonic() + MAX_REQUEST_RENDER_SECONDS
    for r in req.recipients:
        reason = r.reject_reason
        if reason is None:
            reason = _render_once(templates, r.data, render_deadline)
        if reason is not None:
            rejected += 1
            results.append(
                {
                    "index": r.index,
                    "email": r.email,
                    "message_id": None,
                    "status": "rejected",
                    "reason": reason,
                }
            )
            continue
        address = r.normalized
        assert address is not None
        canonical = suppressions.canonical(address)
        message_id = ids.message_id(batch_id, r.index)
        job: dict[str, Any] = {
            "m": message_id,
            "b": batch_id,
            "i": r.index,
            "e": address,
            "t0": round(now, 3),
            "a": 0,
        }
        for key, value in (
            ("n", r.name),
            ("c", r.contact_id),
            ("z", r.timezone),
            ("d", r.data),
            ("md", r.metadata),
        ):
            if value:
                job[key] = value
        entry: dict[str, Any] = {
            "m": message_id,
            "q": round(due, 3),
            "j": msgpack.packb(job),
            "d": domain_of(address),
            "sb": suppressions.bucket_key(canonical),
            "sf": canonical,
        }
        if req.category:
            entry["sc"] = suppressions.field(canonical, req.category)
        if not marketing:
            entry["tx"] = 1
        if rules:
            entry["ci"] = contact_key(r.contact_id, address)
        where: dict[str, Any] = {}
        if quiet is not None:
            zone_name = r.timezone or quiet.default_timezone
            if zone_name not in zones:
                bounds = intervals_from(quiet, zone_name, max(now, due))
                zones[zone_name] = [x for pair in bounds for x in pair]
            entry["z"] = zone_name
            entry["o"] = ramp_offset(quiet, message_id)
            where = {
                "timezone": zone_name,
                "timezone_source": "recipient" if r.timezone else "default",
            }
        entry["e"] = pack_event(
            EventType.QUEUED,
            timestamp=now,
            message_id=message_id,
            email=address,
            contact_id=r.contact_id,
            category=req.category,
            metadata={**req.metadata, **r.metadata},
            **({"send_at": iso_time(due)} if due else {}),
            **where,
        )
        entries.append(entry)
        results.append(
            {"index": r.index, "email": r.email, "message_id": message_id, "status": "queued"}
        )

    response = json.dumps({"batch_id": batch_id, "results": results}, ensure_ascii=False)
    policy_input = {
        "rules": [
            {
                "k": rule.key,
                "c": rule.category,
                "l": rule.limit,
                "w": rule.window_seconds,
                "a": rule.action,
            }
            for rule in rules
        ],
        "cp": keys.CAP_PREFIX,
        "zones": zones,
    }
    return Prepared(
        batch_id,
        _batch_content(req),
        entries,
        response,
        msgpack.packb(policy_input),
        rejected,
        results,
    )


def final_response(
    response: str | dict[str, Any], outcomes: list[str]
) -> tuple[str, dict[str, int]]:
    """The 202 answer: ``response`` (JSON, or the answer itself, where accepted recipients say
    "queued", in the order of the script's outcomes) with each one's fate; and the counts per
    status."""
    answer = json.loads(response) if isinstance(response, str) else response
    results = answer["results"]
    accepted = [i for i, r in enumerate(results) if r["status"] != "rejected"]
    for position, outcome in zip(accepted, outcomes, strict=True):
        result = results[position]
        kind, rest = outcome[:1], outcome[1:]
        if kind == "s":
            result["status"] = "scheduled"
            result["send_at"] = iso_time(float(rest))
        elif kind == "x":
            reason, _, scope = rest.partition("|")
            result["status"] = "suppressed"
            result["reason"] = reason if scope == "global" else f"{reason} ({scope})"
        elif kind == "c":
            category, limit, window = rest.split("|")
            result["status"] = "capped"
            result["reason"] = (
                f"frequency cap: at most {limit} {'' if category == '*' else category + ' '}"
                f"messages per {window} seconds"
            )
    counts = Counter(r["status"] for r in results)
    return json.dumps(answer, ensure_ascii=False), dict(counts)


async def accept(
    store: Store,
    prepared: Prepared,
    digest: str,
    idempotency_key: str | None,
    *,
    now: float | None = None,
) -> tuple[str, bool, dict[str, int]]:
    """Queue the batch; returns (response JSON, replayed, counts per status)."""
    outcome = await store.accept(
        batch_id=prepared.batch_id,
        content=prepared.content,
        recipients=prepared.entries,
        response=prepared.response,
        idempotency_key=idempotency_key,
        digest=digest,
        policy=prepared.policy,
        now=now,
    )
    if outcome.replay and outcome.digest != digest:
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different body in the last 24 hours",
            field="Idempotency-Key",
        )
    # A new batch's answer is the one prepared (no need to parse what was just written).
    first = (
        outcome.response
        if outcome.replay
        else {"batch_id": prepared.batch_id, "results": prepared.results}
    )
    response, counts = final_response(first, outcome.outcomes)
    return response, outcome.replay, counts
