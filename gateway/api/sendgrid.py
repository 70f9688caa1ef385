"""``POST /v3/mail/send``: the SendGrid v3 body, mapped onto Sluice's own ``/v1/messages``.

Tools that speak SendGrid's API point at Sluice by changing the base URL. The body
is translated into a Sluice send request and goes through the same validation,
contact policy, queue, signing and tracking; errors come back as SendGrid shapes
them: ``400 {"errors": [{"message", "field", "help"}]}``.

Mapping: each personalization's ``to`` addresses become recipients, with the
personalization's ``dynamic_template_data`` as their template data (the content
is rendered per recipient: ``{{first_name}}`` works as in SendGrid's dynamic
templates), ``substitutions`` (literal keys replaced per recipient), ``custom_args``
and ``subject``; ``categories`` -> ``category`` (the first) and ``tags`` (all);
``custom_args`` -> ``metadata``; ``send_at`` -> ``send_at``; ``headers``;
``asm.group_id`` -> the unsubscribe category ``asm-<id>`` (a one-click unsubscribe
then leaves that group only); ``tracking_settings`` open and click tracking.
Not supported, answered with a 400 naming the field (see the README's table):
``template_id`` (stored templates), ``cc``, ``bcc``, ``attachments``, ``batch_id``,
``ip_pool_name``, ``mail_settings`` other than ``bypass_*`` and ``sandbox_mode``, per-
personalization ``from``, content types other than text/plain and text/html.
``mail_settings.sandbox_mode.enable`` captures the message in Sluice's sandbox
(``gateway/sandbox.py``) where SendGrid would validate and drop it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from core.errors import ClientError, TemplateTooExpensive, ValidationError
from gateway.api.common import INTAKE, SANDBOX_ONLY, json_response, read_body
from gateway.api.openapi_parts import AUTH
from gateway.intake import decode_json

# Caps checked before any per-recipient work: every recipient carries every substitution
# key, and every key is one pass over the content, so keys x recipients and keys x content
# are what a hostile body multiplies (1,000 personalizations x 8,000 keys took 722 MB).
MAX_RECIPIENTS = 1000
MAX_SUBSTITUTION_KEYS = 100  # distinct keys in one request (real templates use a few dozen)
MAX_SUBSTITUTION_BYTES = 10_000  # per personalization, keys and values: SendGrid's own limit

UNSUPPORTED = {
    "template_id": "stored templates: put the template in content (Jinja/handlebars {{var}} works)",
    "attachments": "attachments are not sent by Sluice",
    "batch_id": "batch cancellation is not supported",
    "ip_pool_name": "use Sluice's ip_pool through /v1/messages",
}
_PERSONALIZATION = {
    "to",
    "subject",
    "dynamic_template_data",
    "substitutions",
    "custom_args",
    "send_at",
    "headers",
    "cc",
    "bcc",
}
_TOP = {
    "personalizations",
    "from",
    "reply_to",
    "subject",
    "content",
    "categories",
    "custom_args",
    "send_at",
    "headers",
    "asm",
    "tracking_settings",
    "mail_settings",
    "reply_to_list",
    *UNSUPPORTED,
}


def _fail(field: str, message: str) -> ValidationError:
    return ValidationError(message, field=field, code="bad_request")


def _address(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("email"), str):
        raise _fail(field, f"{field} must be an object with an email")
    out = {"email": value["email"]}
    if value.get("name") is not None:
        out["name"] = value["name"]
    return out


def _substitute(text: str | None, keys: list[str]) -> str | None:
    """Literal substitution keys as template variables (values come per recipient)."""
    if text is None:
        return None
    for index, key in enumerate(keys):
        text = text.replace(key, f"{{{{ __sub{index} }}}}")
    return text


def _substitution_keys(personalizations: list[Any]) -> list[str]:
    """Every substitution key of the request, longest first, after the caps above."""
    recipients = 0
    keys: set[str] = set()
    for i, p in enumerate(personalizations):
        if not isinstance(p, dict):
            continue  # reported with its path below
        tos = p.get("to")
        recipients += len(tos) if isinstance(tos, list) else 0
        substitutions = p.get("substitutions") or {}
        if not isinstance(substitutions, dict):
            raise _fail(f"personalizations[{i}].substitutions", "substitutions must be an object")
        size = sum(len(str(k)) + len(str(v)) for k, v in substitutions.items())
        if size > MAX_SUBSTITUTION_BYTES:
            raise _fail(
                f"personalizations[{i}].substitutions",
                f"substitutions may not exceed {MAX_SUBSTITUTION_BYTES} bytes per personalization",
            )
        keys.update(str(k) for k in substitutions)
        if len(keys) > MAX_SUBSTITUTION_KEYS:
            raise _fail(
                "personalizations",
                f"at most {MAX_SUBSTITUTION_KEYS} distinct substitution keys in one request",
            )
    if recipients > MAX_RECIPIENTS:
        raise _fail("personalizations", f"at most {MAX_RECIPIENTS} recipients in all")
    return sorted(keys, key=len, reverse=True)


def to_sluice(body: Any) -> dict[str, Any]:
    """The Sluice ``/v1/messages`` body for a SendGrid v3 body, or ValidationError."""
    if not isinstance(body, dict):
        raise _fail("", "the body must be a JSON object")
    for name in body:
        if name in UNSUPPORTED:
            raise _fail(name, f"{name} is not supported by Sluice: {UNSUPPORTED[name]}")
        if name not in _TOP:
            raise _fail(name, f"{name} is not a field Sluice knows")
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        raise _fail("personalizations", "personalizations must be a non-empty array")
    if len(personalizations) > 1000:
        raise _fail("personalizations", "at most 1000 personalizations")
    content = body.get("content")
    if not isinstance(content, list) or not content:
        raise _fail("content", "content must be a non-empty array (template_id is not supported)")
    parts: dict[str, str] = {}
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("text/plain", "text/html") or not isinstance(part.get("value"), str):
            raise _fail(f"content[{i}]", "content types text/plain and text/html only")
        parts[kind] = part["value"]
    substitution_keys = _substitution_keys(personalizations)
    recipients = []
    subjects = set()
    for i, p in enumerate(personalizations):
        where = f"personalizations[{i}]"
        if not isinstance(p, dict):
            raise _fail(where, f"{where} must be an object")
        for name in p:
            if name in ("cc", "bcc"):
                raise _fail(
                    f"{where}.{name}", f"{name} is not supported: send each address as its own to"
                )
            if name not in _PERSONALIZATION:
                raise _fail(f"{where}.{name}", f"{name} is not supported in a personalization")
        if p.get("send_at") is not None or p.get("headers"):
            raise _fail(where, "send_at and headers are supported for the whole message only")
        tos = p.get("to")
        if not isinstance(tos, list) or not tos:
            raise _fail(f"{where}.to", "to must be a non-empty array")
        data = dict(p.get("dynamic_template_data") or {})
        substitutions = p.get("substitutions") or {}
        if not isinstance(data, dict) or not isinstance(substitutions, dict):
            raise _fail(where, "dynamic_template_data and substitutions must be objects")
        for index, key in enumerate(substitution_keys):
            data[f"__sub{index}"] = str(substitutions.get(key, key))
        subject = p.get("subject", body.get("subject"))
        if not isinstance(subject, str):
            raise _fail(f"{where}.subject", "a subject is required (here or at the top)")
        subjects.add(subject)
        data["__subject"] = subject
        for j, to in enumerate(tos):
            address = _address(to, f"{where}.to[{j}]")
            recipient: dict[str, Any] = {"email": address["email"], "data": data}
            if "name" in address:
                recipient["name"] = address["name"]
            if p.get("custom_args"):
                recipient["metadata"] = p["custom_args"]
            recipients.append(recipient)
    # one subject for everybody is used as it is; different ones go per recipient
    subject_template = subjects.pop() if len(subjects) == 1 else "{{ __subject }}"
    out: dict[str, Any] = {
        "from": _address(body.get("from"), "from"),
        "subject": _substitute(subject_template, substitution_keys),
        "stream": "marketing" if body.get("asm") or body.get("categories") else "transactional",
        "recipients": recipients,
    }
    if "text/html" in parts:
        out["html"] = _substitute(parts["text/html"], substitution_keys)
    if "text/plain" in parts:
        out["text"] = _substitute(parts["text/plain"], substitution_keys)
    if body.get("reply_to") is not None:
        out["reply_to"] = _address(body["reply_to"], "reply_to")
    categories = body.get("categories") or []
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise _fail("categories", "categories must be an array of strings")
    asm = body.get("asm")
    if asm is not None:
        if not isinstance(asm, dict) or not isinstance(asm.get("group_id"), int):
            raise _fail("asm.group_id", "asm.group_id must be a number")
        out["category"] = f"asm-{asm['group_id']}"
    elif categories:
        out["category"] = categories[0]
    if categories:
        out["tags"] = categories
    if body.get("custom_args"):
        out["metadata"] = body["custom_args"]
        if isinstance(body["custom_args"], dict) and "campaign" in body["custom_args"]:
            out["campaign"] = body["custom_args"]["campaign"]  # validated as a name
    if body.get("send_at") is not None:
        out["send_at"] = body["send_at"]
    if body.get("headers"):
        out["headers"] = body["headers"]
    tracking = body.get("tracking_settings") or {}
    if tracking:
        if not isinstance(tracking, dict):
            raise _fail("tracking_settings", "tracking_settings must be an object")
        out["tracking"] = {
            "opens": bool((tracking.get("open_tracking") or {}).get("enable", True)),
            "clicks": bool((tracking.get("click_tracking") or {}).get("enable", True)),
        }
    settings = body.get("mail_settings") or {}
    if (settings.get("sandbox_mode") or {}).get("enable"):
        out["sandbox"] = True  # SendGrid validates and drops; Sluice captures
    return out


def errors_body(exc: ClientError) -> dict[str, Any]:
    return {
        "errors": [
            {
                "message": exc.detail,
                "field": exc.field or None,
                "help": "see README: SendGrid compatibility",
            }
        ]
    }


async def sendgrid_send(request: web.Request) -> web.Response:
    """SendGrid's v3 mail send, translated (``to_sluice``); SendGrid-shaped errors, and one
    rejected recipient refuses the whole request as SendGrid would."""
    intake = request.app[INTAKE]
    try:
        raw = await read_body(request)
        translated = await intake.off_loop(lambda: to_sluice(decode_json(raw)))
        submitted = await intake.submit(
            translated, reject_if="any", sandbox=request.get(SANDBOX_ONLY, False)
        )
    except (ValidationError, TemplateTooExpensive) as exc:
        if exc.field == "recipients":  # the intake's name; SendGrid's is personalizations
            exc.field = "personalizations"
        return json_response(errors_body(exc), exc.status)
    return web.Response(status=202, headers={"X-Message-Id": submitted.batch_id})


ROUTES = [web.post("/v3/mail/send", sendgrid_send)]

PATHS: dict[str, Any] = {
    "/v3/mail/send": {
        "post": {
            "summary": "SendGrid v3 mail send, for tools that speak SendGrid (see the README's table)",
            "security": AUTH,
            "responses": {
                "202": {"description": "Accepted; X-Message-Id is the batch id"},
                "400": {"description": "SendGrid-shaped errors[]"},
                "401": {"description": "Missing or wrong API key"},
                "422": {
                    "description": "SendGrid-shaped errors[]: a template too expensive to render"
                },
            },
        }
    },
}
