"""RFC 5965 abuse reports (ARF) and the providers' non-standard complaints.

An ARF report is a ``multipart/report; report-type=feedback-report`` with a human-readable part,
a ``message/feedback-report`` part (``Feedback-Type``, ``User-Agent``, ``Version``,
``Original-Mail-From``, ``Original-Rcpt-To``, ``Arrival-Date``, ``Source-IP``...) and the
original message (``message/rfc822``) or its headers (``text/rfc822-headers``). Yahoo, AOL,
Comcast, Return Path, abusix and the DMARC failure reporters send it.

Also understood: Microsoft's older JMRP complaints (``staff@hotmail.com``, "complaint about
message from ...", the original attached with ``X-HmXmrOriginalRecipient``) and Apple Mail's
one-click unsubscribe messages (an opt-out).
"""

from __future__ import annotations

import re
from email.message import Message

from mta.bounces.model import Recipient, Report, reached
from mta.bounces.parts import (
    RFC822_TYPES,
    address_from_field,
    addresses_in,
    body_text,
    field_groups,
    header,
    part_text,
    parts,
)

__all__ = ["parse_apple_unsubscribe", "parse_arf", "parse_jmrp"]

_FEEDBACK_HINT = re.compile(r"^Feedback-Type\s*:", re.IGNORECASE | re.MULTILINE)


def _fields(text: str) -> tuple[dict[str, str], list[str]]:
    """The feedback-report fields (first value wins) and every Original-Rcpt-To."""
    fields: dict[str, str] = {}
    rcpts: list[str] = []
    for group in field_groups(text):
        for name, value in group:
            if name == "original-rcpt-to":
                address = address_from_field(value)
                if address is not None and address not in rcpts:
                    rcpts.append(address)
            fields.setdefault(name, value)
    return fields, rcpts


def _attached_recipients(msg: Message) -> list[str]:
    """Recipients named by the attached original (JMRP's X-HmXmrOriginalRecipient, To)."""
    for part in parts(msg):
        if part.get_content_type() not in RFC822_TYPES:
            continue
        payload = part.get_payload()
        if not (isinstance(payload, list) and payload and isinstance(payload[0], Message)):
            continue
        original = payload[0]
        for name in ("X-HmXmrOriginalRecipient", "To", "Delivered-To", "X-Original-To"):
            found = addresses_in(header(original, name))
            if found:
                return found
    return []


def _header_recipients(msg: Message, text: str) -> list[str]:
    """Recipients from quoted original headers (text/rfc822-headers, ``To:`` lines)."""
    for group in field_groups(text):
        for name, value in group:
            if name in ("x-hmxmroriginalrecipient", "to", "delivered-to", "x-original-to"):
                found = addresses_in(value)
                if found:
                    return found
    return _attached_recipients(msg)


def parse_arf(msg: Message) -> Report | None:
    """A standard ARF report: a message/feedback-report part (or its fields in text)."""
    report_parts = [p for p in parts(msg) if p.get_content_type() == "message/feedback-report"]
    if not report_parts and msg.get_param("report-type") == "feedback-report":
        report_parts = [
            p
            for p in parts(msg)
            if p.get_content_maintype() == "text" and _FEEDBACK_HINT.search(part_text(p))
        ]
    if not report_parts:
        return None
    fields, rcpts = _fields(part_text(report_parts[0]))
    if not rcpts and fields.get("removal-recipient"):
        removal = address_from_field(fields["removal-recipient"])
        rcpts = [removal] if removal else []
    if not rcpts:
        quoted = "\n\n".join(
            part_text(p)
            for p in parts(msg)
            if p.get_content_type() not in ("message/feedback-report",)
            and p.get_content_maintype() != "multipart"
            and ("rfc822" in p.get_content_type() or "header" in p.get_content_type())
        )
        rcpts = _header_recipients(msg, quoted)
    feedback = (fields.get("feedback-type") or "other").strip().lower().split()[0]
    recipients: tuple[Recipient, ...] = tuple(reached(a) for a in rcpts)
    return Report(
        kind="arf",
        recipients=recipients,
        layout="arf",
        feedback_type=feedback,
        arf_user_agent=fields.get("user-agent"),
        arf_version=fields.get("version"),
        source_ip=fields.get("source-ip"),
        original_mail_from=address_from_field(fields.get("original-mail-from")),
        arrival_date=fields.get("arrival-date") or fields.get("received-date"),
    )


_JMRP_SUBJECT = re.compile(r"complaint about message from", re.IGNORECASE)


def parse_jmrp(msg: Message) -> Report | None:
    """Microsoft's JMRP complaint: the original attached, no feedback-report part."""
    if not _JMRP_SUBJECT.search(header(msg, "Subject")):
        return None
    if not any(p.get_content_type() in RFC822_TYPES for p in parts(msg)):
        return None
    return Report(
        kind="arf",
        recipients=tuple(reached(a) for a in _attached_recipients(msg)),
        layout="jmrp",
        feedback_type="abuse",
        arf_user_agent=address_from_field(header(msg, "From")),
    )


_APPLE_UNSUBSCRIBE = re.compile(r"sent this e-?mail to unsubscribe", re.IGNORECASE)


def parse_apple_unsubscribe(msg: Message) -> Report | None:
    """Apple Mail's "unsubscribe" button: a mail to the List-Unsubscribe mailto: address."""
    if header(msg, "Subject").strip().lower() != "unsubscribe":
        return None
    if not _APPLE_UNSUBSCRIBE.search(body_text(msg)):
        return None
    sender = address_from_field(header(msg, "From"))
    return Report(
        kind="arf",
        recipients=(reached(sender),) if sender else (),
        layout="apple-unsubscribe",
        feedback_type="opt-out",
        arf_user_agent="Apple Mail",
    )
