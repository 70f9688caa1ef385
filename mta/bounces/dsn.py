"""RFC 3464 delivery status notifications, and DSN fields pasted into a text body.

A DSN is a ``multipart/report; report-type=delivery-status`` with a human-readable part, a
``message/delivery-status`` part (one per-message field group, then one group per recipient:
``Final-Recipient``, ``Action``, ``Status``, ``Diagnostic-Code``...) and the original message
or its headers. Postfix, Sendmail, Exchange/Office 365, Gmail and most others send this; many
senders get the details slightly wrong, so the parser is lenient: the report part may be
labelled ``text/plain``, the report may sit in a ``multipart/mixed``, groups may lack blank
lines between them, and a missing diagnostic is looked for in the human-readable text.
"""

from __future__ import annotations

import re
from email.message import Message

from mta.bounces.model import Recipient, Report, make_recipient, report_kind
from mta.bounces.parts import (
    MAX_RECIPIENTS,
    address_from_field,
    addresses_in,
    body_text,
    field_groups,
    part_text,
    parts,
    smtp_code_in,
    smtp_command,
    split_original,
    transcript_context,
    unfold,
)
from mta.replies import BounceClass

__all__ = ["parse_dsn", "parse_embedded_dsn", "recipients_from_fields"]

_STATUS_TYPES = frozenset(
    {"message/delivery-status", "message/global-delivery-status", "text/delivery-status"}
)
_RECIPIENT_FIELDS = ("final-recipient", "original-recipient", "x-actual-recipient")
# The reporting MTA's own reading of the reply, as (class, the address is dead): PowerMTA's
# X-PowerMTA-BounceCategory field.
MTA_CATEGORIES: dict[str, tuple[BounceClass, bool]] = {
    "bad-mailbox": ("bad-mailbox", True),
    "bad-domain": ("bad-domain", True),
    "inactive-mailbox": ("bad-mailbox", False),
    "quota-issues": ("quota", False),
    "policy-related": ("policy", False),
    "relaying-issues": ("policy", False),
    "spam-related": ("spam", False),
    "virus-related": ("content", False),
    "content-related": ("content", False),
    "message-expired": ("routing", False),
    "no-answer-from-host": ("routing", False),
    "routing-errors": ("routing", False),
    "bad-connection": ("routing", False),
    "protocol-errors": ("other", False),
    "bad-configuration": ("other", False),
    "other": ("other", False),
}
_CATEGORY_FIELDS = ("x-powermta-bouncecategory",)
_DSN_HINT = re.compile(r"^(?:Final-Recipient|Original-Recipient)\s*:", re.IGNORECASE | re.MULTILINE)
_DIAG_TYPE = re.compile(r"^\s*(?:smtp|x-[\w-]+|dns|rfc\d+|unix|local)\s*;\s*", re.IGNORECASE)
_PROGRAM = re.compile(r"^\s*(?:x-unix|unix|x-local|local)\s*;", re.IGNORECASE)  # an exit status
_SMTP_TYPE = re.compile(r"^\s*smtp\s*;", re.IGNORECASE)  # a remote SMTP server's reply


def _records(groups: list[list[tuple[str, str]]]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Split field groups into the per-message fields and one dict per recipient."""
    per_message: dict[str, str] = {}
    records: list[dict[str, str]] = []
    for group in groups:
        current: dict[str, str] | None = None
        for name, value in group:
            if name in _RECIPIENT_FIELDS and (
                current is None or name in current or "action" in current or "status" in current
            ):
                current = {}
                records.append(current)
            if current is None:
                per_message.setdefault(name, value)
            elif name in current and name == "diagnostic-code":
                current[name] = f"{current[name]} {value}"
            else:
                current.setdefault(name, value)
    found = [r for r in records if any(f in r for f in _RECIPIENT_FIELDS)]
    return per_message, found[:MAX_RECIPIENTS]


def _diagnostic(value: str) -> str:
    return unfold(_DIAG_TYPE.sub("", value, count=1))


def _text_diagnostic(text: str, email: str) -> str:
    """The lines of the human-readable part about ``email`` (Postfix, Sendmail style)."""
    transcript = transcript_context(text, email)
    if transcript:
        return transcript
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if email.lower() not in line.lower():
            continue
        chunk = [line]
        indent = len(line) - len(line.lstrip())
        for following in lines[index + 1 : index + 8]:
            next_block = (  # the next recipient's "<address>:" line, not a folded one
                "@" in following
                and following.lstrip()[:1] == "<"
                and len(following) - len(following.lstrip()) <= indent
            )
            if not following.strip() or next_block:
                break
            chunk.append(following)
        found = unfold(" ".join(chunk))
        if smtp_code_in(found) or len(found) > len(email) + 12:
            return found
    return ""


def recipients_from_fields(text: str, human: str = "") -> tuple[dict[str, str], list[Recipient]]:
    """Recipients from DSN field groups in ``text``; ``human`` supplies missing diagnostics."""
    per_message, records = _records(field_groups(text))
    recipients: list[Recipient] = []
    seen: set[tuple[str, str]] = set()
    for record in records:
        final = address_from_field(
            record.get("final-recipient") or record.get("x-actual-recipient")
        )
        original = address_from_field(record.get("original-recipient"))
        email = final or original
        if email is None:
            continue
        diagnostic = _diagnostic(record.get("diagnostic-code", ""))
        context = _text_diagnostic(human, email) if human else ""
        if not context and human and original and original != email:
            context = _text_diagnostic(human, original)
        diagnostic = diagnostic or unfold(context)
        command = smtp_command(f"{diagnostic}\n{context}") or (
            smtp_command(human) if human and len(records) == 1 else None
        )
        action = record.get("action", "").strip().lower().split(" ")[0] or None
        key = (email.lower(), action or "")
        if key in seen:
            continue
        seen.add(key)
        remote = record.get("remote-mta", "")
        category = next((record[f] for f in _CATEGORY_FIELDS if f in record), "")
        recipients.append(
            make_recipient(
                email,
                action=action,
                status=record.get("status"),
                smtp_code=None
                if _PROGRAM.match(record.get("diagnostic-code", ""))
                else smtp_code_in(diagnostic),
                diagnostic=diagnostic,
                original_recipient=original,
                remote_mta=_DIAG_TYPE.sub("", remote).strip() or None,
                command=command,
                reported=MTA_CATEGORIES.get(category.strip().lower()),
                quoted=True if _SMTP_TYPE.match(record.get("diagnostic-code", "")) else None,
            )
        )
    return per_message, recipients


def parse_dsn(msg: Message) -> Report | None:
    """A standard (or nearly standard) RFC 3464 report, wherever its status part sits."""
    status_parts = [p for p in parts(msg) if p.get_content_type() in _STATUS_TYPES]
    if not status_parts:  # a bounce forwarded as an attachment
        status_parts = [
            p for p in parts(msg, into_attached=True) if p.get_content_type() in _STATUS_TYPES
        ]
    if not status_parts and msg.get_content_type() == "multipart/report":
        status_parts = [
            p
            for p in parts(msg)
            if p.get_content_maintype() == "text" and _DSN_HINT.search(part_text(p))
        ]
    if not status_parts:
        return None
    human = split_original(body_text(msg))[0]
    per_message: dict[str, str] = {}
    recipients: list[Recipient] = []
    for part in status_parts:
        fields, found = recipients_from_fields(part_text(part), human)
        per_message = per_message or fields
        recipients.extend(found)
    return _report("rfc3464", per_message, recipients)


def _report(layout: str, per_message: dict[str, str], recipients: list[Recipient]) -> Report | None:
    if not recipients:
        return None
    return Report(
        kind=report_kind(recipients),
        recipients=tuple(recipients),
        layout=layout,
        reporting_mta=_DIAG_TYPE.sub("", per_message.get("reporting-mta", "")).strip() or None,
        arrival_date=per_message.get("arrival-date"),
    )


def parse_embedded_dsn(msg: Message) -> Report | None:
    """DSN fields pasted into the text of a non-standard notification (Amazon WorkMail...)."""
    text = re.sub(r"^(?:> ?)+", "", split_original(body_text(msg))[0], flags=re.MULTILINE)
    if not _DSN_HINT.search(text):
        return None
    per_message, recipients = recipients_from_fields(text, text)
    if not addresses_in(text):
        return None
    return _report("embedded-dsn", per_message, recipients)
