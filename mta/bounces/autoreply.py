"""RFC 3834 automatic replies: out-of-office and vacation notices.

An auto-reply means the message *arrived*: it is never a failure. It is recognised by
``Auto-Submitted: auto-replied``, ``X-Autoreply``/``X-Autorespond``, ``Precedence: auto_reply``
or a subject such as "Out of Office", "Automatic reply:", "Auto reply:", "Abwesenheitsnotiz",
"Réponse automatique". Notifications from a mailer-daemon are never auto-replies (Exim marks
its bounces ``Auto-Submitted: auto-replied``); those are tried first by the bounce layouts.
"""

from __future__ import annotations

import re
from email.message import Message

from mta.bounces.model import Report, reached
from mta.bounces.parts import address_from_field, header

__all__ = ["is_daemon", "parse_autoreply"]

_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic|matische)?[ _-]?(?:reply|response|antwort|respuesta)\b|auto:"
    r"|out of (?:the )?office|autoreply|auto-reply|away from (?:my|the) (?:desk|office)"
    r"|abwesenheit|r[ée]ponse automatique|respuesta autom[aá]tica|risposta automatica"
    r"|vacation|on vacation|i am (?:currently )?out of|i'm out of|fuori ufficio|afwezig"
    r"|自動応答|自動返信|不在)",
    re.IGNORECASE,
)
_DAEMON = re.compile(
    r"mailer-?daemon|postmaster|mail delivery|mail-?daemon|mdaemon|\bbounce|delivery ?status",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (?:status|fail|notif|problem|error|report)|returned mail"
    r"|failure notice|mail delivery failed|non-?delivery|not delivered|could not be delivered",
    re.IGNORECASE,
)


def is_daemon(msg: Message) -> bool:
    """The message comes from a mail system, not a person."""
    return bool(_DAEMON.search(header(msg, "From"))) or (
        header(msg, "Return-Path") == "<>"
        and (bool(_BOUNCE_SUBJECT.search(header(msg, "Subject"))))
    )


def parse_autoreply(msg: Message) -> Report | None:
    """An RFC 3834 auto-reply (or a vacation notice that forgot the headers)."""
    if is_daemon(msg) or _BOUNCE_SUBJECT.search(header(msg, "Subject")):
        return None
    auto = header(msg, "Auto-Submitted").lower()
    signals = (
        auto.startswith("auto-replied")
        or bool(header(msg, "X-Autoreply") or header(msg, "X-Autorespond"))
        or header(msg, "Precedence").lower() == "auto_reply"
        or header(msg, "X-Auto-Response") != ""
        or bool(_SUBJECT.search(header(msg, "Subject")))
    )
    if not signals:
        return None
    author = address_from_field(header(msg, "From")) or address_from_field(header(msg, "Sender"))
    return Report(
        kind="autoreply",
        recipients=(reached(author),) if author else (),
        layout="rfc3834",
    )
