"""Intake: the one way a send request enters Sluice, whatever door it came through.

``POST /v1/messages``, SendGrid's ``POST /v3/mail/send`` and SMTP submission all hand
a ``/v1/messages`` body to ``Intake.submit``, which runs the same sequence:

1. the ``Idempotency-Key``, if any: a request seen before with the same body gets its
   first answer again (``Idempotent-Replayed``), with another body a 422;
2. ``prepare`` on the prepare thread (JSON already parsed there too): validation
   (``gateway.schemas``), every recipient rendered once on budgets
   (``mta/template_budget.py``) to find undefined variables and header injection, the
   typed queue entries (``core.jobs``) and the contact policy's input
   (``suppression.caps``, ``suppression.quiet_hours``);
3. ``Store.accept``: one atomic script applies suppression, frequency caps and quiet
   hours per recipient and queues the batch (``core/lua/accept.lua``); the 202 answer
   says each recipient's fate.

The CPU-heavy part runs on one thread so the event loop keeps answering tracking and
health requests. A recipient whose render blows its budget is rejected with the reason,
unless the template alone (with no data) blows it too, or all the recipients together take
longer than ``MAX_REQUEST_RENDER_SECONDS``: then the whole request is refused with 422
``template_too_expensive``, so one request holds the prepare thread for seconds at most.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from core import ids, suppressions
from core.addresses import domain_of
from core.clock import Clock
from core.errors import IdempotencyConflict, TemplateTooExpensive, ValidationError
from core.events import EventType, iso_time, pack_event
from core.jobs import AcceptEntry, BatchContent, Job, PolicyInput
from core.shards import Shards
from core.store import Accepted, OtherBatch, Store, Unfinished
from gateway.schemas import parse_send_request
from mta.render import (
    RenderError,
    RenderOverBudget,
    TemplateCache,
    TemplateError,
    TemplateOverBudget,
    Templates,
)
from mta.template_budget import MAX_REQUEST_RENDER_SECONDS
from suppression.caps import contact_key
from suppression.policy import Policy, load_policy
from suppression.quiet_hours import intervals_from, ramp_offset

T = TypeVar("T")

# Upstream tools send the same templates again and again: compile each once per process.
_TEMPLATES = TemplateCache()


@dataclass(frozen=True)
class Prepared:
    """A validated, rendered request, ready for ``Store.accept``."""

    batch_id: str
    content: BatchContent
    entries: list[AcceptEntry]
    policy: PolicyInput  # the cap rules that apply and the quiet windows of its time zones
    results: list[dict[str, Any]]  # the answer's results, for the 202 (made from them once)
    rejected: int

    def first_answer(self) -> str:
        """The answer before the contact policy (accepted recipients say "queued"), as JSON:
        what an ``Idempotency-Key`` replay starts from."""
        return json.dumps({"batch_id": self.batch_id, "results": self.results}, ensure_ascii=False)


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


def prepare(
    body: Any,
    *,
    now: float,
    policy: Policy | None = None,
    shards: Shards | None = None,
    batch_id: str | None = None,
) -> Prepared:
    """Validate, render every recipient once, and build the queue entries and policy input.
    ``shards``: the deployment's (a message id names its recipient's). ``batch_id``: the
    batch an earlier request with the same Idempotency-Key began (``Unfinished``), else new."""
    policy = policy or Policy()
    shards = shards or Shards(1)
    req = parse_send_request(body, now=now)
    content = req.content
    try:
        templates = _TEMPLATES.get(content.subject, content.html, content.text)
    except TemplateError as exc:
        raise _refusal(exc) from exc

    batch_id = batch_id or ids.new_batch_id()
    due = req.send_at if req.send_at is not None and req.send_at > now + 1 else 0
    marketing = not content.transactional
    rules = policy.rules_for(content.stream, content.category)
    quiet = policy.quiet_hours if marketing else None
    zones: dict[str, list[float]] = {}
    results: list[dict[str, Any]] = []
    entries: list[AcceptEntry] = []
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
        message_id = ids.message_id(batch_id, r.index, shards.of_address(canonical).index)
        job = Job(
            message_id=message_id,
            batch_id=batch_id,
            position=r.index,
            email=address,
            accepted_at=now,
            name=r.name,
            contact_id=r.contact_id,
            timezone=r.timezone,
            data=r.data,
            metadata=r.metadata,
        )
        zone_name = None
        where: dict[str, Any] = {}
        if quiet is not None:
            zone_name = r.timezone or quiet.default_timezone
            if zone_name not in zones:
                bounds = intervals_from(quiet, zone_name, max(now, due))
                zones[zone_name] = [x for pair in bounds for x in pair]
            where = {
                "timezone": zone_name,
                "timezone_source": "recipient" if r.timezone else "default",
            }
        event = pack_event(
            EventType.QUEUED,
            timestamp=now,
            message_id=message_id,
            email=address,
            contact_id=r.contact_id,
            category=content.category,
            campaign=content.campaign,
            metadata={**content.metadata, **r.metadata},
            **({"send_at": iso_time(due)} if due else {}),
            **where,
        )
        entries.append(
            AcceptEntry(
                message_id=message_id,
                due=due,
                job=job.pack(),
                event=event,
                domain=domain_of(address),
                suppression_field=canonical,
                category_field=suppressions.field(canonical, content.category)
                if content.category
                else None,
                transactional=not marketing,
                contact=contact_key(r.contact_id, address) if rules else None,
                timezone=zone_name,
                ramp_offset=ramp_offset(quiet, message_id) if quiet is not None else 0.0,
            )
        )
        results.append(
            {"index": r.index, "email": r.email, "message_id": message_id, "status": "queued"}
        )

    return Prepared(
        batch_id=batch_id,
        content=content,
        entries=entries,
        policy=PolicyInput(tuple(rules), zones),
        results=results,
        rejected=rejected,
    )


def suppressed_reason(reason: str, scope: str) -> str:
    """A suppressed recipient's reason as answers say it: ``unsubscribe (newsletter)``."""
    return reason if scope == "global" else f"{reason} ({scope})"


def cap_rule_text(category: str, limit: object, window: object) -> str:
    """A frequency-cap rule in words: ``at most 3 promo messages per 86400 seconds``."""
    return (
        f"at most {limit} {'' if category == '*' else category + ' '}messages per {window} seconds"
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
            result["reason"] = suppressed_reason(reason, scope)
        elif kind == "c":
            category, limit, window = rest.split("|")
            result["status"] = "capped"
            result["reason"] = f"frequency cap: {cap_rule_text(category, limit, window)}"
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
        entries=prepared.entries,
        policy=prepared.policy,
        # the answer kept for a replay: only with a key (JSON of 1,000 results is ~1 ms)
        response=prepared.first_answer() if idempotency_key else "",
        idempotency_key=idempotency_key,
        digest=digest,
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


@dataclass(frozen=True)
class Submitted:
    batch_id: str
    response: str  # the 202 answer (JSON)
    replayed: bool  # the first answer to an earlier request with the same Idempotency-Key
    counts: dict[str, int]  # recipients per status


RejectIf = Literal["any", "all"]


class Capture(Protocol):
    """Where a sandbox request goes instead of the queue (``gateway.sandbox.Sandbox``)."""

    async def capture(
        self, prepared: Prepared, body: dict[str, Any], now: float
    ) -> dict[str, Any]: ...


class Intake:
    """``submit`` is the sequence every ingress runs; ``executor`` is the prepare thread;
    ``sandbox`` takes the sandbox's requests instead of the queue."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        sandbox: Capture,
        on_accepted: Callable[[Submitted, float], None] | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.executor = executor
        self.on_accepted = on_accepted  # (what was accepted, seconds it took): for metrics
        self.clock = clock  # the time of day of send_at, caps and quiet hours (core.clock)
        self.sandbox = sandbox

    async def off_loop(self, work: Callable[[], T]) -> T:
        """CPU work on the prepare thread, in arrival order."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    async def parse(self, raw: bytes) -> Any:
        """A JSON body, parsed on the prepare thread (16 MB of JSON takes a while)."""
        return await self.off_loop(lambda: decode_json(raw))

    async def submit(
        self,
        body: Any,
        *,
        idempotency_key: str | None = None,
        reject_if: RejectIf | None = None,
        sandbox: bool = False,
    ) -> Submitted:
        """Validate, render and queue a ``/v1/messages`` body. ``idempotency_key``: the
        header's value (hashed here). ``reject_if``: refuse the whole request (a
        ``ValidationError`` naming the first rejected recipient) when ``"any"`` or ``"all"``
        of its recipients are rejected, for doors that cannot answer per recipient.
        ``sandbox``: to the sandbox whatever the body says (the sandbox API key's requests);
        a body with ``"sandbox": true`` goes there too."""
        started = time.monotonic()
        if isinstance(body, dict) and (sandbox or body.get("sandbox") is True):
            return await self._sandbox({**body, "sandbox": True}, reject_if)
        key_digest = None
        digest = ""
        resumed = None  # the batch an earlier request with this key began over shards
        if idempotency_key is not None:
            key_digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
            digest = await self.off_loop(lambda: request_digest(body))
            earlier = await self.store.idempotent_response(key_digest)
            if earlier is not None and earlier.digest != digest:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used with a different body in the last 24 hours",
                    field="Idempotency-Key",
                )
            if isinstance(earlier, Accepted):
                response, counts = final_response(earlier.response, earlier.outcomes)
                batch_id = json.loads(earlier.response)["batch_id"]
                return Submitted(batch_id, response, True, counts)
            if isinstance(earlier, Unfinished):
                resumed = earlier.batch_id
        policy = load_policy(await self.store.policy())
        now = self.clock()
        prepared = await self._prepare(body, now, policy, resumed)
        _refuse(prepared, reject_if)
        try:
            response, replayed, counts = await accept(
                self.store, prepared, digest, key_digest, now=now
            )
        except OtherBatch as exc:  # the same request, begun at the same time over shards
            prepared = await self._prepare(body, now, policy, exc.batch_id)
            response, replayed, counts = await accept(
                self.store, prepared, digest, key_digest, now=now
            )
        submitted = Submitted(prepared.batch_id, response, replayed, counts)
        if not replayed and self.on_accepted is not None:
            self.on_accepted(submitted, time.monotonic() - started)
        return submitted

    async def _prepare(
        self, body: Any, now: float, policy: Policy, batch_id: str | None
    ) -> Prepared:
        """``prepare`` on the prepare thread, for this deployment's shards."""
        shards = self.store.shards
        return await self.off_loop(
            lambda: prepare(body, now=now, policy=policy, shards=shards, batch_id=batch_id)
        )

    async def _sandbox(self, body: dict[str, Any], reject_if: RejectIf | None) -> Submitted:
        """A sandbox request: prepared like any other, then captured instead of queued. An
        ``Idempotency-Key`` is not kept (sending it again captures it again: nobody is
        mailed twice)."""
        policy = load_policy(await self.store.policy())
        now = self.clock()
        prepared = await self._prepare(body, now, policy, ids.new_sandbox_batch_id())
        _refuse(prepared, reject_if)
        answer = await self.sandbox.capture(prepared, body, now)
        counts = dict(Counter(r["status"] for r in answer["results"]))
        response = json.dumps(answer, ensure_ascii=False)
        return Submitted(prepared.batch_id, response, False, counts)


def _refuse(prepared: Prepared, reject_if: RejectIf | None) -> None:
    """``reject_if``: the whole request refused for its rejected recipients (see ``submit``)."""
    refused = reject_if == "any" or (
        reject_if == "all" and prepared.rejected == len(prepared.results)
    )
    if refused and prepared.rejected:
        first = next(r for r in prepared.results if r["status"] == "rejected")
        raise ValidationError(f"{first['email']}: {first['reason']}", field="recipients")
