"""Inbound reports turned into facts: bounces (DSN), complaints (ARF) and auto-replies.

``parse_report(raw)`` tries each layout of ``LAYOUTS`` in order; the first that understands the
message wins. Standard formats come first (RFC 5965 ARF, RFC 3464 DSN), then the known
non-standard ones (Amazon SES JSON, qmail, Exim, old Gmail, DSN fields pasted in text,
Microsoft JMRP, Apple Mail unsubscribe), then RFC 3834 auto-replies, then a generic reading of
any notification from a mail system. A new layout is a function ``(Message) -> Report | None``
added to ``LAYOUTS`` at the right place. Garbage never raises: it gives ``kind="unknown"``.

Each recipient carries ``mta.replies.classify``'s verdict of its status and diagnostic, so
``report.recipients[0].verdict.hard`` says whether to suppress the address.

Parsing is CPU-bound: a few milliseconds for a real report, up to a few seconds for a hostile
multi-megabyte one (text is cut at ``parts.MAX_TEXT``, recipients at ``parts.MAX_RECIPIENTS``);
from asyncio code, call it in a thread.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from email.message import Message

from mta.bounces.arf import parse_apple_unsubscribe, parse_arf, parse_jmrp
from mta.bounces.autoreply import parse_autoreply
from mta.bounces.dsn import parse_dsn, parse_embedded_dsn
from mta.bounces.model import UNKNOWN, Kind, Recipient, Report
from mta.bounces.parts import load, message_id, original_headers
from mta.bounces.plaintext import parse_exim, parse_gmail_text, parse_qmail, parse_text
from mta.bounces.ses import parse_ses

__all__ = ["LAYOUTS", "Kind", "Layout", "Recipient", "Report", "parse_message", "parse_report"]

log = logging.getLogger(__name__)

Layout = Callable[[Message], Report | None]

LAYOUTS: list[tuple[str, Layout]] = [
    ("arf", parse_arf),
    ("rfc3464", parse_dsn),
    ("amazon-ses", parse_ses),
    ("jmrp", parse_jmrp),
    ("apple-unsubscribe", parse_apple_unsubscribe),
    ("qmail", parse_qmail),
    ("exim", parse_exim),
    ("gmail", parse_gmail_text),
    ("embedded-dsn", parse_embedded_dsn),
    ("rfc3834", parse_autoreply),
    ("text", parse_text),
]


def parse_message(msg: Message, raw: bytes | None = None) -> Report:
    """``parse_report`` for an already parsed message (``raw``: its bytes, when known)."""
    for name, layout in LAYOUTS:
        try:
            report = layout(msg)
        except Exception:  # a broken message must not stop the other layouts
            log.debug("bounce layout %s failed", name, exc_info=True)
            continue
        if report is None:
            continue
        try:
            headers = report.original_headers or original_headers(msg, raw)
        except Exception:
            headers = {}
        return dataclasses.replace(
            report,
            layout=report.layout or name,
            original_headers=headers,
            original_message_id=report.original_message_id or message_id(headers),
        )
    return UNKNOWN


def parse_report(raw: bytes) -> Report:
    """Parse one inbound message (bytes as received). Never raises."""
    try:
        msg = load(raw)
        return UNKNOWN if msg is None else parse_message(msg, raw)
    except Exception:
        log.debug("unparseable report", exc_info=True)
        return UNKNOWN
