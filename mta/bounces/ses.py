"""Amazon SES notifications delivered by e-mail (SNS): JSON, not MIME reports.

``{"notificationType": "Bounce"|"Complaint"|"Delivery", "bounce": {"bouncedRecipients":
[{"emailAddress", "action", "status", "diagnosticCode"}]}, "complaint": {...}, "mail":
{"messageId", "commonHeaders": {...}}}``, possibly wrapped in an SNS envelope whose
``Message`` is that JSON as a string, and with the body's lines folded.
"""

from __future__ import annotations

import json
import re
from email.message import Message
from typing import Any

from mta.bounces.model import Kind, Recipient, Report, make_recipient, reached
from mta.bounces.parts import address_from_field, body_text, smtp_code_in

__all__ = ["parse_ses"]

_HINT = re.compile(r'"notificationType"\s*:|\\"notificationType\\"\s*:')


def _load(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    if start < 0:
        return None
    text = text[start:].replace("\r", "")
    decoder = json.JSONDecoder(strict=False)
    for candidate in (text, re.sub(r"\n(?=\S)", "", text), re.sub(r"!?\n ?", "", text)):
        try:
            data, _ = decoder.raw_decode(candidate)
        except ValueError:
            continue
        if isinstance(data, dict):
            inner = data.get("Message")
            if isinstance(inner, str) and "notificationType" in inner:
                return _load(inner)
            return data
    return None


def _recipients(data: dict[str, Any]) -> tuple[Kind | None, list[Recipient]]:
    """The kind of notification and its recipients; ``None`` for an unknown notification."""
    kind = str(data.get("notificationType", "")).lower()
    if kind == "bounce":
        bounce = data.get("bounce") or {}
        found = []
        for item in bounce.get("bouncedRecipients") or []:
            email = address_from_field(str(item.get("emailAddress", "")))
            if email is None:
                continue
            diagnostic = re.sub(
                r"^\s*smtp;\s*", "", str(item.get("diagnosticCode", "")), flags=re.I
            )
            transient = str(bounce.get("bounceType", "")).lower() == "transient"
            found.append(
                make_recipient(
                    email,
                    action=str(item.get("action") or ("delayed" if transient else "failed")),
                    status=str(item.get("status") or ""),
                    smtp_code=smtp_code_in(diagnostic),
                    diagnostic=diagnostic,
                )
            )
        return "dsn", found
    if kind == "complaint":
        complaint = data.get("complaint") or {}
        emails = [
            address_from_field(str(item.get("emailAddress", "")))
            for item in complaint.get("complainedRecipients") or []
        ]
        return "arf", [reached(e) for e in emails if e]
    if kind == "delivery":
        delivery = data.get("delivery") or {}
        response = str(delivery.get("smtpResponse", ""))
        emails = [address_from_field(str(r)) for r in delivery.get("recipients") or []]
        return "delivered", [
            make_recipient(
                e, action="delivered", smtp_code=smtp_code_in(response), diagnostic=response
            )
            for e in emails
            if e
        ]
    return None, []


def parse_ses(msg: Message) -> Report | None:
    """An SES bounce, complaint or delivery notification."""
    text = body_text(msg)
    if not _HINT.search(text):
        return None
    data = _load(text)
    if data is None:
        return None
    kind, recipients = _recipients(data)
    if kind is None:
        return None
    mail = data.get("mail") or {}
    common = mail.get("commonHeaders") or {}
    headers = {
        name: ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        for name, value in (
            ("From", common.get("from")),
            ("To", common.get("to")),
            ("Subject", common.get("subject")),
            ("Message-ID", common.get("messageId")),
        )
        if value
    }
    complaint = data.get("complaint") or {}
    return Report(
        kind=kind,
        recipients=tuple(recipients),
        layout="amazon-ses",
        feedback_type=str(complaint.get("complaintFeedbackType") or "abuse")
        if kind == "arf"
        else None,
        arf_user_agent=complaint.get("userAgent") if kind == "arf" else None,
        original_headers=headers,
    )
