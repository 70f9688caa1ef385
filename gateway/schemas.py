"""Validation of ``POST /v1/messages`` bodies.

Every field is hostile until checked here. A problem with the request as a whole
(wrong type, missing field, header injection, broken template) raises
``ValidationError`` with the JSON path of the field; a problem with one
recipient's address or data makes that recipient ``rejected`` and leaves the
others alone. The OpenAPI description of the same body is in ``gateway/openapi.py``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core import validate
from core.addresses import AddressError, normalize_address
from core.errors import ValidationError
from core.jobs import BatchContent, Mailbox

MAX_RECIPIENTS = 1000
MAX_SANDBOX_RECIPIENTS = 100
MAX_TEMPLATE_CHARS = 1024 * 1024
MAX_NAME_CHARS = 256
MAX_HEADERS = 50
MAX_HEADER_VALUE_CHARS = 998
MAX_TAGS = 20
MAX_METADATA_BYTES = 4096
MAX_DATA_BYTES = 64 * 1024
MAX_SEND_AHEAD_SECONDS = 30 * 86400
STREAMS = ("marketing", "transactional")

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every C0 control but TAB
# Headers Sluice writes itself; a caller setting them could forge or break the message.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Date",
        "Message-ID",
        "Reply-To",
        "Sender",
        "Return-Path",
        "Received",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "DKIM-Signature",
        "ARC-Seal",
        "ARC-Message-Signature",
        "ARC-Authentication-Results",
        "Authentication-Results",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "Feedback-ID",
        "X-Sluice-Message-ID",
    )
)


@dataclass
class RecipientIn:
    index: int
    email: str  # as given
    name: str | None
    contact_id: str | None
    timezone: str | None
    data: dict[str, Any]
    metadata: dict[str, Any]
    normalized: str | None = None  # set when the address is valid
    reject_reason: str | None = None


@dataclass
class SendRequest:
    """A validated ``/v1/messages`` body: what every recipient shares (``content``, stored
    once), when to send, and the recipients one by one."""

    content: BatchContent
    send_at: float | None
    recipients: list[RecipientIn] = field(default_factory=list)


def _fail(field: str, detail: str) -> ValidationError:
    return ValidationError(detail, field=field)


def _type_name(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _require_str(body: dict[str, Any], key: str, path: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise _fail(path, f"'{path}' is required")
        return None
    if not isinstance(value, str):
        raise _fail(path, f"'{path}' must be a string, not {_type_name(value)}")
    return value


def _plain_text(value: str, path: str, max_chars: int) -> str:
    """A value that goes into a header: no CR, LF, NUL or other control characters."""
    if _CONTROL.search(value):
        raise _fail(path, f"'{path}' contains CR, LF, NUL or another control character")
    if len(value) > max_chars:
        raise _fail(path, f"'{path}' is longer than {max_chars} characters")
    return value


def _address(value: object, path: str) -> Mailbox:
    if isinstance(value, str):
        value = {"email": value}
    if not isinstance(value, dict):
        raise _fail(path, f"'{path}' must be an object {{email, name?}} or a string")
    _no_unknown(value, {"email", "name"}, path)
    email = _require_str(value, "email", f"{path}.email", required=True)
    assert email is not None
    try:
        email = normalize_address(email)
    except AddressError as exc:
        raise _fail(f"{path}.email", f"'{path}.email' is not a valid address: {exc}") from exc
    name = _require_str(value, "name", f"{path}.name", required=False)
    if name is not None:
        name = _plain_text(name, f"{path}.name", MAX_NAME_CHARS).strip() or None
    return Mailbox(email, name)


def _no_unknown(body: dict[str, Any], allowed: set[str] | frozenset[str], path: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise _fail(where, f"unknown field '{where}'")


def _size_bound(value: dict[Any, Any]) -> int | None:
    """An upper bound on the JSON size of a flat object of strings and small numbers (a
    character takes at most 6 bytes escaped), or None for anything else. Checking a recipient's
    few fields this way costs a fraction of encoding them, which every recipient paid."""
    total = 2
    for key, item in value.items():
        if type(key) is not str:
            return None
        kind = type(item)
        if kind is str:
            total += 6 * (len(key) + len(item)) + 6
        elif item is None or kind is bool or kind is float:
            total += 6 * len(key) + 40
        elif kind is int and item.bit_length() < 64:
            total += 6 * len(key) + 30
        else:
            return None
    return total


def _json_object(value: object, path: str, max_bytes: int) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, f"'{path}' must be an object, not {_type_name(value)}")
    bound = _size_bound(value)
    if bound is not None and bound <= max_bytes:
        return value
    size = len(_COMPACT.encode(value).encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise _fail(path, f"'{path}' is {size} bytes; the limit is {max_bytes}")
    return value


def _metadata(value: object, path: str) -> dict[str, Any]:
    meta = _json_object(value, path, MAX_METADATA_BYTES)
    for key, item in meta.items():
        if item is not None and not isinstance(item, str | int | float | bool):
            raise _fail(f"{path}.{key}", f"'{path}.{key}' must be a string, number or boolean")
    return meta


def _timestamp(value: object, path: str, now: float) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail(path, f"'{path}' must be an ISO 8601 time with an offset or a Unix timestamp")
    try:
        if isinstance(value, str):
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                raise _fail(path, f"'{path}' needs a UTC offset (e.g. 2026-12-01T09:00:00Z)")
            stamp = moment.astimezone(UTC).timestamp()
        else:
            stamp = float(value)
    except (ValueError, OverflowError) as exc:
        raise _fail(path, f"'{path}' is not a valid time: {str(value)[:40]!r}") from exc
    if not math.isfinite(stamp) or stamp > now + MAX_SEND_AHEAD_SECONDS:
        raise _fail(path, f"'{path}' is more than {MAX_SEND_AHEAD_SECONDS // 86400} days ahead")
    return stamp


_TOP_LEVEL = frozenset(
    {
        "from",
        "reply_to",
        "subject",
        "html",
        "text",
        "category",
        "campaign",
        "stream",
        "headers",
        "tags",
        "metadata",
        "tracking",
        "send_at",
        "ip_pool",
        "recipients",
        "sandbox",
    }
)
_RECIPIENT = frozenset({"email", "name", "contact_id", "timezone", "data", "metadata"})


def parse_send_request(body: object, *, now: float) -> SendRequest:
    if not isinstance(body, dict):
        raise _fail("", f"the body must be a JSON object, not {_type_name(body)}")
    _no_unknown(body, _TOP_LEVEL, "")

    sender = _address(body.get("from"), "from") if body.get("from") is not None else None
    if sender is None:
        raise _fail("from", "'from' is required")
    reply_to = _address(body["reply_to"], "reply_to") if body.get("reply_to") is not None else None

    subject = _require_str(body, "subject", "subject", required=True)
    assert subject is not None
    if not subject.strip():
        raise _fail("subject", "'subject' is empty")
    _plain_text(subject, "subject", MAX_TEMPLATE_CHARS)
    html = _require_str(body, "html", "html", required=False)
    text = _require_str(body, "text", "text", required=False)
    if html is None and text is None:
        raise _fail("html", "give 'html', 'text' or both")
    for name, part in (("html", html), ("text", text)):
        if part is not None:
            if "\0" in part:
                raise _fail(name, f"'{name}' contains NUL")
            if len(part) > MAX_TEMPLATE_CHARS:
                raise _fail(name, f"'{name}' is longer than {MAX_TEMPLATE_CHARS} characters")

    category = _require_str(body, "category", "category", required=False)
    if category is not None:
        validate.category(category)
    campaign = _require_str(body, "campaign", "campaign", required=False)
    if campaign is not None:
        validate.campaign(campaign)
    stream = _require_str(body, "stream", "stream", required=True)
    if stream not in STREAMS:
        raise _fail("stream", f"'stream' must be one of {', '.join(STREAMS)}")
    assert stream is not None

    headers = _headers(body.get("headers"))
    tags = _tags(body.get("tags"))
    metadata = _metadata(body.get("metadata"), "metadata")
    opens, clicks = _tracking(body.get("tracking"))
    send_at = (
        _timestamp(body["send_at"], "send_at", now) if body.get("send_at") is not None else None
    )
    ip_pool = _require_str(body, "ip_pool", "ip_pool", required=False)
    if ip_pool is not None:
        validate.pool(ip_pool, "ip_pool")
    content = BatchContent(
        sender=sender,
        reply_to=reply_to,
        subject=subject,
        html=html,
        text=text,
        category=category,
        campaign=campaign,
        stream=stream,
        headers=headers,
        tags=tags,
        metadata=metadata,
        track_opens=opens,
        track_clicks=clicks,
        ip_pool=ip_pool,
    )
    sandbox = body.get("sandbox")
    if sandbox is not None and not isinstance(sandbox, bool):
        raise _fail("sandbox", "'sandbox' must be true or false")
    recipients = _recipients(body.get("recipients"))
    if sandbox and len(recipients) > MAX_SANDBOX_RECIPIENTS:
        raise _fail(
            "recipients",
            f"a sandbox request takes at most {MAX_SANDBOX_RECIPIENTS} recipients "
            "(it composes and signs every message before answering)",
        )
    return SendRequest(content, send_at, recipients)


def _headers(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail("headers", "'headers' must be an object of header name to value")
    if len(value) > MAX_HEADERS:
        raise _fail("headers", f"at most {MAX_HEADERS} custom headers")
    out: dict[str, str] = {}
    for name, item in value.items():
        path = f"headers.{name}"
        if not _HEADER_NAME.fullmatch(name):
            raise _fail(
                path, "header names are 1-76 printable ASCII characters without ':' or space"
            )
        if name.lower() in RESERVED_HEADERS:
            raise _fail(path, f"'{name}' is set by Sluice and cannot be given in 'headers'")
        if not isinstance(item, str):
            raise _fail(path, f"'{path}' must be a string")
        out[name] = _plain_text(item, path, MAX_HEADER_VALUE_CHARS)
    return out


def _tags(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise _fail("tags", "'tags' must be an array of strings")
    if len(value) > MAX_TAGS:
        raise _fail("tags", f"at most {MAX_TAGS} tags")
    return [validate.name(tag, f"tags[{i}]") for i, tag in enumerate(value)]


def _tracking(value: object) -> tuple[bool, bool]:
    if value is None:
        return True, True
    if not isinstance(value, dict):
        raise _fail("tracking", "'tracking' must be an object {opens, clicks}")
    _no_unknown(value, {"opens", "clicks"}, "tracking")
    flags = []
    for key in ("opens", "clicks"):
        item = value.get(key, True)
        if not isinstance(item, bool):
            raise _fail(f"tracking.{key}", f"'tracking.{key}' must be true or false")
        flags.append(item)
    return flags[0], flags[1]


def _recipients(value: object) -> list[RecipientIn]:
    if value is None:
        raise _fail("recipients", "'recipients' is required")
    if not isinstance(value, list):
        raise _fail("recipients", "'recipients' must be an array")
    if not value:
        raise _fail("recipients", "'recipients' is empty")
    if len(value) > MAX_RECIPIENTS:
        raise _fail(
            "recipients", f"at most {MAX_RECIPIENTS} recipients per request, got {len(value)}"
        )
    out: list[RecipientIn] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        path = f"recipients[{index}]"
        if not isinstance(item, dict):
            raise _fail(path, f"'{path}' must be an object")
        _no_unknown(item, _RECIPIENT, path)
        email = _require_str(item, "email", f"{path}.email", required=True)
        assert email is not None
        name = _require_str(item, "name", f"{path}.name", required=False)
        contact_id = _require_str(item, "contact_id", f"{path}.contact_id", required=False)
        timezone = _require_str(item, "timezone", f"{path}.timezone", required=False)
        recipient = RecipientIn(
            index=index,
            email=email,
            name=name,
            contact_id=contact_id,
            timezone=timezone,
            data=_json_object(item.get("data"), f"{path}.data", MAX_DATA_BYTES),
            metadata=_metadata(item.get("metadata"), f"{path}.metadata"),
        )
        recipient.reject_reason = _recipient_problem(recipient, seen)
        out.append(recipient)
    return out


def _recipient_problem(r: RecipientIn, seen: set[str]) -> str | None:
    """Why this recipient cannot be sent to, or None. Sets ``r.normalized``."""
    try:
        normalized = normalize_address(r.email)
    except AddressError as exc:
        return f"invalid address: {exc}"
    if r.name is not None:
        if _CONTROL.search(r.name) or len(r.name) > MAX_NAME_CHARS:
            return f"invalid name: control characters or over {MAX_NAME_CHARS} characters"
        r.name = r.name.strip() or None
    if r.contact_id is not None and (
        _CONTROL.search(r.contact_id) or not 0 < len(r.contact_id) <= 128
    ):
        return "invalid contact_id: 1-128 characters without control characters"
    if r.timezone is not None:
        try:
            ZoneInfo(r.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            return (
                f"unknown timezone {r.timezone[:64]!r} (use an IANA name such as Europe/Istanbul)"
            )
    key = normalized.lower()
    if key in seen:
        return "duplicate recipient in this request"
    seen.add(key)
    r.normalized = normalized
    return None
